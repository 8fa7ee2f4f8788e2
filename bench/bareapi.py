"""What a user would write instead of Keyward: the ingest benchmark's bare baseline.

One plain Django view on the same gunicorn and PostgreSQL: it checks the same
bearer token with one indexed lookup (the token's unique prefix, then its
hash compared in constant time) and stores the same record with one INSERT
statement (the record row, its fields as they came, and a lookup row per
indexed field under an unkeyed hash, written together by one statement with
data-modifying CTEs). No encryption, no idempotency, no tenant state, no
audit: the floor that `ingest_vs_bare` compares the product with. Served only
by `bench.bare_settings`, never by the product.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from functools import cache

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, URLResolver, path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from api.models import ApiToken
from api.tokens import _TOKEN, _hash
from keys.models import DataKey, DekState
from records.blindindex import INDEXED_FIELDS
from records.models import LookupRow

_INSERT = """
WITH record AS (
    INSERT INTO archive_record (uid, tenant_id, kind, external_id, created)
    VALUES (%(uid)s, %(tenant)s, %(kind)s, %(external_id)s, %(now)s)
    RETURNING id
), sealed AS (
    INSERT INTO archive_sealedfields (record_id, dek_id, pii)
    SELECT id, %(dek)s, %(fields)s FROM record
)
INSERT INTO {lookup} (tenant_id, field, version, digest, record_id)
SELECT %(tenant)s, f.name, 0, f.digest, record.id
FROM record, unnest(%(names)s::text[], %(digests)s::bytea[]) AS f(name, digest)
"""


@cache
def _dek_id(tenant_id: uuid.UUID) -> int:
    """A DEK id for the sealed-fields row's foreign key, read once per process."""
    return int(
        DataKey.objects.values_list("id", flat=True).get(tenant_id=tenant_id, state=DekState.ACTIVE)
    )


@cache
def _insert_sql() -> str:
    return _INSERT.format(lookup=LookupRow._meta.db_table)


@csrf_exempt
def bare_create(request: HttpRequest) -> HttpResponse:
    scheme, _, credentials = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    match = _TOKEN.match(credentials.strip()) if scheme.lower() == "bearer" else None
    if match is None:
        return JsonResponse({"error": "unauthorized"}, status=401)
    prefix, secret = match.groups()
    row = ApiToken.objects.filter(prefix=prefix).values_list("tenant_id", "secret_sha256").first()
    if row is None or not hmac.compare_digest(bytes(row[1]), _hash(secret)):
        return JsonResponse({"error": "unauthorized"}, status=401)
    tenant_id = row[0]
    data = json.loads(request.body)
    fields = data.get("fields", {})
    indexed = sorted(name for name in fields if name in INDEXED_FIELDS)
    uid = uuid.uuid4()
    with connection.cursor() as cursor:
        cursor.execute(
            _insert_sql(),
            {
                "uid": uid,
                "tenant": tenant_id,
                "kind": data["kind"],
                "external_id": data["external_id"],
                "now": timezone.now(),
                "dek": _dek_id(tenant_id),
                "fields": json.dumps(fields).encode(),
                "names": indexed,
                "digests": [
                    hashlib.sha256(f"{name}\x00{fields[name]}".encode()).digest()
                    for name in indexed
                ],
            },
        )
    return JsonResponse({"id": str(uid), "kind": data["kind"]}, status=201)


urlpatterns: list[URLPattern | URLResolver] = [path("api/v1/records", bare_create)]
