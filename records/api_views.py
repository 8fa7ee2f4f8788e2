"""The records API: create, read, list, look up by a field's value, delete."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from uuid import UUID

import psycopg
from django.conf import settings
from django.core import signing
from django.core.exceptions import RequestDataTooBig, ValidationError
from django.db import IntegrityError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase

from api.auth import api_endpoint, no_content
from api.errors import ApiError
from api.idempotency import (
    KeyClaim,
    KeyClaimed,
    check_key,
    key_claim,
    request_fingerprint,
    run_once,
)
from api.models import ApiToken
from api.tokens import token_actor
from keys.runtime import envelope
from records.blindindex import INDEXED_FIELDS
from records.fields import FIELDS_BY_KIND, PII_FIELD, NewRecord
from records.indexkeys import index_key_known, records_lookup
from records.models import Record
from records.pii import decode_fields
from records.selectors import record_for_tenant, records_page
from records.services import record_delete, records_create
from tenants.models import Tenant

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
CURSOR_SALT = "api.records.cursor"
CREATE_KEYS = frozenset({"kind", "external_id", "fields"})


# -- request parsing -----------------------------------------------------------


def json_object(request: HttpRequest) -> dict[str, Any]:
    """The body as a JSON object, within KEYWARD_API_MAX_BODY_BYTES (413 beyond it)."""
    limit = settings.KEYWARD_API_MAX_BODY_BYTES
    too_large = ApiError(413, "too_large", f"The body is over {limit} bytes.")
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise too_large
    try:
        body = request.body
    except RequestDataTooBig:
        raise too_large from None
    if len(body) > limit:
        raise too_large
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_json", "The body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "The body must be a JSON object.")
    return data


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_field", message, field=field)


def _storable(value: str) -> bool:
    """Whether a string can be stored and encrypted as UTF-8 text.

    JSON lets a client send what PostgreSQL's text cannot hold (NUL, `\\u0000`)
    and what UTF-8 cannot encode (an unpaired surrogate, `\\ud800`): both are
    refused here as the field's error, before anything is written.
    """
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_NOT_TEXT = "must be text: no NUL character (\\u0000) and no unpaired surrogate."


def parse_new_record(data: dict[str, Any]) -> NewRecord:
    for name in sorted(set(data) - CREATE_KEYS):
        raise _invalid(name, f"Unknown member {name!r}; send kind, external_id and fields.")
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in FIELDS_BY_KIND:
        raise ApiError(
            400,
            "unknown_kind",
            f"Unknown kind {kind!r}; use one of {', '.join(sorted(FIELDS_BY_KIND))}.",
            field="kind",
        )
    external_id = data.get("external_id")
    if not isinstance(external_id, str) or not 1 <= len(external_id) <= 255:
        raise _invalid("external_id", "Give an external_id string of 1 to 255 characters.")
    if not _storable(external_id):
        raise _invalid("external_id", f"external_id {_NOT_TEXT}")
    fields = data.get("fields", {})
    if not isinstance(fields, dict):
        raise _invalid("fields", "fields must be an object of field names to strings.")
    allowed = FIELDS_BY_KIND[kind]
    for name in sorted(fields):
        if name not in allowed:
            raise _invalid(f"fields.{name}", f"Unknown field {name!r} for kind {kind}.")
        if not isinstance(fields[name], str):
            raise _invalid(f"fields.{name}", f"Field {name!r} must be a string.")
        if not _storable(fields[name]):
            raise _invalid(f"fields.{name}", f"Field {name!r} {_NOT_TEXT}")
    return NewRecord(kind=kind, external_id=external_id, fields=dict(fields))


# -- responses ---------------------------------------------------------------


def _timestamp(record: Record) -> str:
    return record.created.isoformat().replace("+00:00", "Z")


def record_json(record: Record, fields: dict[str, str]) -> dict[str, Any]:
    return {
        "id": str(record.uid),
        "kind": record.kind,
        "external_id": record.external_id,
        "fields": fields,
        "created": _timestamp(record),
    }


def _fields_of(tenant: Tenant, records: list[Record]) -> list[dict[str, str]]:
    if not records:
        return []
    blobs = [bytes(r.sealed.pii) for r in records]
    plain = envelope().decrypt_many(
        str(tenant.pk),
        [(r.kind, PII_FIELD, str(r.uid), blob) for r, blob in zip(records, blobs, strict=True)],
    )
    return [decode_fields(p) for p in plain]


def _tenant(request: HttpRequest) -> Tenant:
    tenant: Tenant = request.tenant  # type: ignore[attr-defined]
    return tenant


def _token(request: HttpRequest) -> ApiToken:
    token: ApiToken = request.api_token  # type: ignore[attr-defined]
    return token


# -- views -------------------------------------------------------------------


# How the views store new records: `records_create` in production. A view is
# made for a given one (`record_create_view`), so that a benchmark can serve
# the same endpoint with another store without any switch in this module.
CreateRecords = Callable[..., list[Record]]


def _create(
    tenant: Tenant,
    item: NewRecord,
    made: list[Record],
    create: CreateRecords,
    *,
    claim: KeyClaim | None = None,
    in_key_transaction: bool = False,
) -> tuple[int, dict[str, Any]]:
    # No look first: the unique (tenant, kind, external_id) index answers a
    # duplicate. In the Idempotency-Key's transaction no savepoint either: every
    # error below leaves that transaction, which is rolled back whole.
    try:
        (created,) = create(
            tenant=tenant, items=[item], savepoint=not in_key_transaction, claim=claim
        )
    except (IntegrityError, psycopg.errors.UniqueViolation):
        raise _conflict() from None
    except ValidationError as exc:  # records_create's own checks, after ours
        raise _invalid("fields", "; ".join(exc.messages)) from None
    made.append(created)
    return 201, _created_json(created)


def _created_json(record: Record | NewRecord) -> dict[str, Any]:
    """What an Idempotency-Key keeps: the record's identity, never its fields."""
    return {"id": str(record.uid), "kind": record.kind, "external_id": record.external_id}


MAX_BATCH = 500


def _parse_batch(data: dict[str, Any]) -> list[NewRecord]:
    """`{"records": [...]}`: 1 to MAX_BATCH new records, each checked like a single create;
    an error names the offending one (`records[3].fields.email`)."""
    for name in sorted(set(data) - {"records"}):
        raise _invalid(name, f"Unknown member {name!r}; send records.")
    records = data.get("records")
    if not isinstance(records, list) or not 1 <= len(records) <= MAX_BATCH:
        raise _invalid("records", f"records must be a list of 1 to {MAX_BATCH} new records.")
    items: list[NewRecord] = []
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(records):
        where = f"records[{index}]"
        if not isinstance(entry, dict):
            raise _invalid(where, f"{where} must be an object with kind, external_id and fields.")
        try:
            item = parse_new_record(entry)
        except ApiError as exc:
            exc.field = f"{where}.{exc.field}" if exc.field else where
            exc.message = f"{where}: {exc.message}"
            raise
        if (item.kind, item.external_id) in seen:
            raise _invalid(f"{where}.external_id", f"{where}: this external_id is sent twice.")
        seen.add((item.kind, item.external_id))
        items.append(item)
    return items


def _create_batch(
    tenant: Tenant, items: list[NewRecord], made: list[Record], create: CreateRecords
) -> tuple[int, dict[str, Any]]:
    existing = _existing(tenant, items)
    if existing:
        raise ApiError(
            409,
            "conflict",
            f"{len(existing)} record(s) of this kind and external_id exist already, e.g. "
            f"{existing[0]!r}; nothing was stored.",
        )
    try:
        created = create(tenant=tenant, items=items)
    except (IntegrityError, psycopg.errors.UniqueViolation):
        raise _conflict() from None
    except ValidationError as exc:
        raise _invalid("records", "; ".join(exc.messages)) from None
    made.extend(created)
    # What an Idempotency-Key keeps: the records' ids, never their fields.
    return 201, {"ids": [str(r.uid) for r in created]}


def _existing(tenant: Tenant, items: list[NewRecord]) -> list[str]:
    by_kind: dict[str, list[str]] = {}
    for item in items:
        by_kind.setdefault(item.kind, []).append(item.external_id)
    found: list[str] = []
    for kind, external_ids in by_kind.items():
        found += Record.objects.filter(
            tenant=tenant, kind=kind, external_id__in=external_ids
        ).values_list("external_id", flat=True)
    return sorted(found)


def record_create_batch_view(create: CreateRecords) -> Callable[..., HttpResponseBase]:
    @api_endpoint("records:write", methods=("POST",))
    def record_create_batch(request: HttpRequest) -> HttpResponse:
        """Create up to MAX_BATCH records at once, all or none (one transaction, one COPY)."""
        return _record_create_batch(request, create)

    return record_create_batch


def _record_create_batch(request: HttpRequest, create: CreateRecords) -> HttpResponse:
    tenant = _tenant(request)
    data = json_object(request)
    items = _parse_batch(data)
    if any(set(item.fields) & INDEXED_FIELDS for item in items):
        index_key_known(tenant=tenant)
    key = request.headers.get("Idempotency-Key")
    made: list[Record] = []
    if key is None:
        status, created = _create_batch(tenant, items, made, create)
    else:
        status, created, _ = run_once(
            tenant=tenant,
            key=check_key(key),
            fingerprint=request_fingerprint("POST", "/records/batch", data),
            create=lambda: _create_batch(tenant, items, made, create),
        )
    replayed = not made
    if made:
        records, fields = made, [i.fields for i in items]
    else:  # a replay: the first result is rebuilt from the stored records, decrypted
        order = {uid: n for n, uid in enumerate(created["ids"])}
        records = sorted(
            Record.objects.select_related("sealed").filter(tenant=tenant, uid__in=created["ids"]),
            key=lambda r: order[str(r.uid)],
        )
        if len(records) != len(order):
            raise ApiError(404, "not_found", "Records this request created were deleted since.")
        fields = _fields_of(tenant, records)
    response = JsonResponse(
        {"records": [record_json(r, f) for r, f in zip(records, fields, strict=True)]},
        status=status,
    )
    if replayed:
        response["Idempotent-Replayed"] = "true"
    return response


def _conflict() -> ApiError:
    return ApiError(409, "conflict", "A record of this kind with this external_id exists.")


def record_create_view(create: CreateRecords) -> Callable[..., HttpResponseBase]:
    @api_endpoint("records:write", methods=("POST",))
    def record_create(request: HttpRequest) -> HttpResponse:
        return _record_create(request, create)

    return record_create


def _record_create(request: HttpRequest, create: CreateRecords) -> HttpResponse:
    tenant = _tenant(request)
    data = json_object(request)
    item = parse_new_record(data)
    if set(item.fields) & INDEXED_FIELDS:
        index_key_known(tenant=tenant)  # outside the create's transaction: made once per tenant
    key = request.headers.get("Idempotency-Key")
    made: list[Record] = []
    if key is None:
        status, created = _create(tenant, item, made, create)
    else:
        key = check_key(key)
        fingerprint = request_fingerprint("POST", "/records", data)
        named = replace(item, uid=uuid.uuid4())
        planned = (201, _created_json(named))
        try:
            # The usual case, a key not seen before: its row and the record in
            # one statement.
            claim = key_claim(tenant=tenant, key=key, fingerprint=fingerprint, outcome=planned)
            status, created = _create(tenant, named, made, create, claim=claim)
        except KeyClaimed:  # a retry: replayed, refused, or run again if expired
            status, created, _ = run_once(
                tenant=tenant,
                key=key,
                fingerprint=fingerprint,
                create=lambda: _create(tenant, named, made, create, in_key_transaction=True),
                planned=planned,
            )
    replayed = not made
    if made:
        body = record_json(made[0], item.fields)
    else:  # a replay: the first result is rebuilt from the stored record, decrypted
        record = (
            Record.objects.select_related("sealed").filter(tenant=tenant, uid=created["id"]).first()
        )
        if record is None:
            raise ApiError(404, "not_found", "The record this request created was deleted since.")
        body = record_json(record, _fields_of(tenant, [record])[0])
    response = JsonResponse(body, status=status)
    response["Location"] = f"{request.path.rstrip('/')}/{body['id']}"
    if replayed:
        response["Idempotent-Replayed"] = "true"
    return response


record_create = record_create_view(records_create)
record_create_batch = record_create_batch_view(records_create)


def _limit(request: HttpRequest) -> int:
    raw = request.GET.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    # isdigit() alone admits "²" and other digits int() refuses.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise _invalid("limit", f"limit must be an integer from 1 to {MAX_LIMIT}.")
    return int(raw)


def _after(request: HttpRequest) -> int:
    cursor = request.GET.get("cursor")
    if not cursor:
        return 0
    try:
        after = signing.loads(cursor, salt=CURSOR_SALT)
    except signing.BadSignature:
        raise ApiError(
            400, "invalid_cursor", "Pass back a next_cursor this API gave.", field="cursor"
        ) from None
    if not isinstance(after, int):
        raise ApiError(400, "invalid_cursor", "Pass back a next_cursor this API gave.")
    return after


@api_endpoint("records:read", methods=("GET",))
def record_list(request: HttpRequest) -> HttpResponse:
    """Records oldest first, `limit` at a time; with field and value, exact lookup."""
    tenant = _tenant(request)
    limit, after = _limit(request), _after(request)
    kind = request.GET.get("kind") or None
    if kind is not None and kind not in FIELDS_BY_KIND:
        raise ApiError(400, "unknown_kind", f"Unknown kind {kind!r}.", field="kind")
    field, value = request.GET.get("field"), request.GET.get("value")
    if field is not None or value is not None:
        if field not in INDEXED_FIELDS:
            raise _invalid("field", f"Look up by one of: {', '.join(sorted(INDEXED_FIELDS))}.")
        if not value:
            raise _invalid("value", "Give the value to look up.")
        matches = records_lookup(tenant=tenant, field=field, value=value).filter(pk__gt=after)
        if kind:
            matches = matches.filter(kind=kind)
        page = list(matches.select_related("sealed").order_by("pk")[:limit])
    else:
        page = records_page(tenant, kind=kind, after=after, limit=limit)
    data = [record_json(r, f) for r, f in zip(page, _fields_of(tenant, page), strict=True)]
    next_cursor = signing.dumps(page[-1].pk, salt=CURSOR_SALT) if len(page) == limit else None
    return JsonResponse({"data": data, "next_cursor": next_cursor})


def _record_or_404(tenant: Tenant, uid: UUID) -> Record:
    found = record_for_tenant(tenant, str(uid))
    if found is None:
        raise ApiError(404, "not_found", "No such record.")
    return found


@api_endpoint("records:read", methods=("GET",))
def record_detail(request: HttpRequest, uid: UUID) -> HttpResponse:
    tenant = _tenant(request)
    found = _record_or_404(tenant, uid)
    return JsonResponse(record_json(found, _fields_of(tenant, [found])[0]))


@api_endpoint("records:write", methods=("DELETE",))
def record_remove(request: HttpRequest, uid: UUID) -> HttpResponse:
    tenant = _tenant(request)
    found = _record_or_404(tenant, uid)
    record_delete(tenant=tenant, record=found, actor=token_actor(_token(request)), request=request)
    return no_content()
