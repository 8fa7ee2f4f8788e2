"""Per-tenant blind-index keys: made, wrapped, cached, rotated and rebuilt.

An index key is 32 random bytes wrapped by the tenant's key source exactly
like a DEK, but under `index_context` (purpose "blind-index"), so neither
kind of wrapped key unwraps as the other. Unwrapped index keys live only in
this process's memory, for the tenant's DEK cache TTL, and are dropped when
the tenant's key epoch moves or its key is revoked (the envelope's state
check), so revoking the customer key stops lookups as it stops decryption.

Every record created through `records.services.records_create` is indexed by
`index_new_records` (registered as a records hook in `ApiConfig.ready`), under
the active version and, during a rotation, the version being built as well.
Records that arrive by any other path are indexed by the next rebuild.

Index keys follow the tenant's key moves like its DEKs: Enable, removal and
a confirmed rotation rewrap them under the new key (`index_keys_move`,
registered with keys.services in `ApiConfig.ready`), so after Enable only the
customer's key opens them.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from audit.services import Actor, record
from crypto.envelope import ACTIVE, KeyRevoked
from keys.consumers import WrappedKey
from keys.errors import KeyActionRefused
from keys.models import KeySource
from keys.providers.base import KeyProvider, move_wrapped
from keys.registry import provider_for
from keys.runtime import envelope
from keys.selectors.sources import active_source
from keys.services.deks import kek_version_get_or_create
from records.blindindex import INDEXED_FIELDS, digest, digests
from records.bulk import copy_rows, is_postgres
from records.fields import PII_FIELD, NewRecord
from records.models import IndexKey, IndexKeyState, LookupRow, Record, SealedFields
from records.pii import decode_fields
from tenants.models import ServiceState, Tenant
from tenants.states import ServicePaused

PURPOSE = "blind-index"
# Enqueued by name: the task module imports this one, not the reverse.
REBUILD_BLIND_INDEX = "records.rebuild_blind_index"


def index_context(tenant_id: str, version: int) -> dict[str, str]:
    """What a wrapped index key is bound to (a DEK's purpose is "dek")."""
    return {"keyward:tenant": tenant_id, "keyward:purpose": PURPOSE, "keyward:index": str(version)}


# -- the process cache -----------------------------------------------------


@dataclass
class _Cached:
    material: bytes
    expires: float
    epoch: int

    def __repr__(self) -> str:
        return f"<index key, expires {self.expires:.0f}>"


_cache: dict[int, _Cached] = {}
_cache_lock = threading.Lock()


def _unwrap(key: IndexKey) -> bytes:
    kek = key.kek_version
    return provider_for(kek.source).unwrap(
        bytes(key.wrapped), index_context(str(key.tenant_id), key.version), kek.provider_version
    )


def key_material(key: IndexKey) -> bytes:
    """The unwrapped index key, from memory when fresh (same TTL and epoch rule as DEKs)."""
    state = envelope().state(str(key.tenant_id))
    if state.status != ACTIVE:
        with _cache_lock:
            _cache.pop(key.pk, None)
        raise KeyRevoked(f"the tenant's key is {state.status}: lookups are unavailable")
    now = time.monotonic()
    cached = _cache.get(key.pk)
    if cached is not None and cached.epoch == state.epoch and now < cached.expires:
        return cached.material
    loaded = IndexKey.objects.select_related("kek_version__source", "tenant").get(pk=key.pk)
    material = _unwrap(loaded)
    with _cache_lock:
        _cache[key.pk] = _Cached(material, now + loaded.tenant.dek_cache_ttl, state.epoch)
    return material


def forget_cached_keys() -> None:
    with _cache_lock:
        _cache.clear()


# -- services ----------------------------------------------------------------


def _new_index_key(*, tenant: Tenant, version: int, state: str) -> IndexKey:
    """Make and wrap an index key; the plaintext lives only in this frame."""
    material = secrets.token_bytes(32)
    source = active_source(tenant)
    wrapped = provider_for(source).wrap(material, index_context(str(tenant.pk), version))
    del material
    return IndexKey.objects.create(
        tenant=tenant,
        version=version,
        wrapped=wrapped.blob,
        kek_version=kek_version_get_or_create(source, wrapped.version),
        state=state,
    )


def index_key_ensure(*, tenant: Tenant) -> IndexKey:
    """The tenant's active index key, made on first use (the tenant row serialises makers)."""
    found = IndexKey.objects.filter(tenant=tenant, state=IndexKeyState.ACTIVE).first()
    if found is not None:
        return found
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        found = IndexKey.objects.filter(tenant=tenant, state=IndexKeyState.ACTIVE).first()
        if found is not None:
            return found
        if locked.is_paused:
            # A key made now would be wrapped by the source a key move is leaving.
            raise ServicePaused(
                f"The tenant's service is paused ({locked.get_state_display()}); retry later."
            )
        return _new_index_key(tenant=tenant, version=1, state=IndexKeyState.ACTIVE)


_known: set[object] = set()  # tenants this process has seen an active index key of


def index_key_known(*, tenant: Tenant) -> None:
    """`index_key_ensure` once per tenant and process: the pre-step of a write.

    Only an optimisation of where the key is made (outside the write's
    transaction): the write itself looks its keys up in its transaction and
    makes one there if none is active (`index_new_records`), so a tenant
    remembered here that lost its key since is still indexed.
    """
    if tenant.pk in _known:
        return
    index_key_ensure(tenant=tenant)
    if len(_known) >= 100_000:
        _known.clear()
    _known.add(tenant.pk)


@transaction.atomic
def index_key_rotate(
    *, tenant: Tenant, actor: Actor, request: HttpRequest | None = None
) -> IndexKey:
    """Start a new index key version; `records.rebuild_blind_index` fills it and switches over."""
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    if locked.is_paused or locked.state in (ServiceState.REVOKED, ServiceState.DESTROYED):
        raise KeyActionRefused(
            f"The lookup key cannot be rotated while the tenant is {locked.get_state_display()}."
        )
    building = IndexKey.objects.filter(tenant=locked, state=IndexKeyState.BUILDING).first()
    if building is not None:
        return building
    current = IndexKey.objects.filter(tenant=locked, state=IndexKeyState.ACTIVE).first()
    last = IndexKey.objects.filter(tenant=locked).order_by("-version").first()
    key = _new_index_key(
        tenant=locked,
        version=(last.version if last else 0) + 1,
        state=IndexKeyState.BUILDING if current is not None else IndexKeyState.ACTIVE,
    )
    record(
        tenant=locked,
        actor=actor,
        action="blind_index.rotate",
        target=f"lookup key v{key.version}",
        details={"from_version": current.version if current else None, "to_version": key.version},
        request=request,
    )
    if key.state == IndexKeyState.BUILDING:
        key_id = key.pk
        transaction.on_commit(lambda: current_app.send_task(REBUILD_BLIND_INDEX, args=[key_id]))
    return key


# (tenant id, field, key version, digest, record id): a lookup row's values.
# Plain tuples: a model instance per row costs more than computing its HMAC.
LookupValues = tuple[Any, str, int, bytes, int]
_LOOKUP_COLUMNS = ("tenant_id", "field", "version", "digest", "record_id")


def _rows_for(
    key: IndexKey, material: bytes, records: Sequence[tuple[Any, dict[str, str]]]
) -> list[LookupValues]:
    return [
        (key.tenant_id, name, key.version, d, rid)
        for rid, fields in records
        for name, d in digests(material, fields)
    ]


def _lookup_rows(values: Sequence[LookupValues]) -> list[LookupRow]:
    return [LookupRow(**dict(zip(_LOOKUP_COLUMNS, row, strict=True))) for row in values]


def index_new_records(tenant: Tenant, rows: Sequence[Record], items: Sequence[NewRecord]) -> None:
    """records_create hook: lookup rows for new records, from the plaintext at hand."""
    if not any(set(i.fields) & INDEXED_FIELDS for i in items):
        return
    pairs = [(row.pk, item.fields) for row, item in zip(rows, items, strict=True)]
    lookup_rows_insert(new_lookup_rows(tenant, pairs))


_writing: dict[object, list[IndexKey]] = {}  # tenant pk -> the keys its writes index with


def lookup_rows_to_check(
    tenant: Tenant, fields: dict[str, str], *, fresh: bool = False
) -> tuple[list[int], list[LookupValues]]:
    """(key versions, lookup rows) of one new record under the keys this process
    last saw its tenant's writes index with, or read now if `fresh`.

    Remembered without a time limit because the write checks them: it states
    the versions it used (`records.bulk.insert_one_record`), and a database
    whose active and building versions differ writes nothing, so the caller
    asks again with `fresh`. That check and the write are one statement, so
    this is as current as reading the keys in the write's transaction.
    """
    keys = None if fresh else _writing.get(tenant.pk)
    if keys is None:
        keys = list(
            IndexKey.objects.filter(
                tenant=tenant, state__in=[IndexKeyState.ACTIVE, IndexKeyState.BUILDING]
            ).order_by("version")
        ) or [index_key_ensure(tenant=tenant)]
        if len(_writing) >= 100_000:
            _writing.clear()
        _writing[tenant.pk] = keys
    rows: list[LookupValues] = []
    for key in keys:
        rows += _rows_for(key, key_material(key), [(None, fields)])
    return [key.version for key in keys], rows


WRITING_STATES = (IndexKeyState.ACTIVE.value, IndexKeyState.BUILDING.value)


def new_lookup_rows(
    tenant: Tenant, records: Sequence[tuple[Any, dict[str, str]]]
) -> list[LookupValues]:
    """The lookup rows of new records ((record id, fields) pairs) under every key a
    write must index with (the active one, and one being built), read in the
    caller's transaction; makes the first key if the tenant has none."""
    keys = list(
        IndexKey.objects.filter(
            tenant=tenant, state__in=[IndexKeyState.ACTIVE, IndexKeyState.BUILDING]
        )
    ) or [index_key_ensure(tenant=tenant)]
    lookup: list[LookupValues] = []
    for key in keys:
        lookup += _rows_for(key, key_material(key), records)
    return lookup


def lookup_rows_insert(rows: list[LookupValues]) -> None:
    """New lookup rows: COPY on PostgreSQL (Django's bulk_create binds every
    value into the SQL text, which costs more than the HMACs), else bulk_create."""
    if is_postgres():
        copy_rows(
            LookupRow._meta.db_table,
            _LOOKUP_COLUMNS,
            ["uuid", "text", "int4", "bytea", "int8"],
            rows,
        )
    else:
        LookupRow.objects.bulk_create(_lookup_rows(rows))


def index_rebuild(*, index_key_id: int) -> IndexKey:
    """Fill a BUILDING version with lookup rows for every record, then switch to it.

    1. In batches of KEYWARD_API_INDEX_REBUILD_BATCH records by id, past the
       checkpoint: decrypt the sealed fields, compute the digests, insert the
       rows (ignoring rows already there) and move the checkpoint, in one
       transaction. A task killed anywhere resumes from the checkpoint.
    2. With no record left past the checkpoint: retire the active version and
       make this one active, in one transaction with the key row locked.
    3. Delete the retired versions' lookup rows, in batches.
    Records created meanwhile are indexed under both versions by the hook.
    """
    key = IndexKey.objects.select_related("tenant").get(pk=index_key_id)
    batch = settings.KEYWARD_API_INDEX_REBUILD_BATCH
    while key.state == IndexKeyState.BUILDING:
        with transaction.atomic():
            key = IndexKey.objects.select_for_update().select_related("tenant").get(pk=key.pk)
            if key.state != IndexKeyState.BUILDING:
                break
            done = _rebuild_batch(key, batch)
            if done:
                _switch_to(key)
    _delete_retired_rows(key.tenant, batch)
    return IndexKey.objects.get(pk=key.pk)


def _rebuild_batch(key: IndexKey, batch: int) -> bool:
    """Index the next batch; True when there was nothing left to index."""
    sealed = list(
        SealedFields.objects.filter(
            record__tenant_id=key.tenant_id, record_id__gt=key.rebuilt_through
        )
        .select_related("record")
        .order_by("record_id")[:batch]
    )
    if not sealed:
        return True
    tenant_id = str(key.tenant_id)
    plain = envelope().decrypt_many(
        tenant_id,
        [(s.record.kind, PII_FIELD, str(s.record.uid), bytes(s.pii)) for s in sealed],
    )
    material = key_material(key)
    rows = _rows_for(
        key,
        material,
        [(s.record_id, decode_fields(p)) for s, p in zip(sealed, plain, strict=True)],
    )
    LookupRow.objects.bulk_create(_lookup_rows(rows), ignore_conflicts=True)
    key.rebuilt_through = sealed[-1].record_id
    key.save(update_fields=["rebuilt_through"])
    return False


def _switch_to(key: IndexKey) -> None:
    now = timezone.now()
    previous = IndexKey.objects.filter(tenant_id=key.tenant_id, state=IndexKeyState.ACTIVE)
    old = [k.version for k in previous]
    # A retired lookup key has nothing left to do: its wrapped bytes go, as a
    # retired DEK's do, so nothing old stays under a KEK or root key version.
    previous.update(state=IndexKeyState.RETIRED, retired_at=now, wrapped=b"")
    key.state = IndexKeyState.ACTIVE
    key.save(update_fields=["state"])
    record(
        tenant=key.tenant,
        actor=Actor.system("lookup key rotation"),
        action="blind_index.rebuilt",
        target=f"lookup key v{key.version}",
        details={"retired_versions": old, "records_through": key.rebuilt_through},
    )


def _delete_retired_rows(tenant: Tenant, batch: int) -> None:
    retired = list(
        IndexKey.objects.filter(tenant=tenant, state=IndexKeyState.RETIRED).values_list(
            "version", flat=True
        )
    )
    if not retired:
        return
    while True:
        ids = list(
            LookupRow.objects.filter(tenant=tenant, version__in=retired).values_list(
                "pk", flat=True
            )[: batch * 5]
        )
        if not ids:
            return
        LookupRow.objects.filter(pk__in=ids).delete()


# -- reads -----------------------------------------------------------------


def records_lookup(*, tenant: Tenant, field: str, value: str) -> QuerySet[Record]:
    """Records whose `field` equals `value` after normalisation, through the active version."""
    key = IndexKey.objects.filter(tenant=tenant, state=IndexKeyState.ACTIVE).first()
    if key is None:
        return Record.objects.none()
    version, wanted = key.version, digest(key_material(key), field, value)
    matching = LookupRow.objects.filter(
        tenant=tenant, field=field, version=version, digest=wanted
    ).values("record_id")
    return Record.objects.filter(tenant=tenant, pk__in=matching)


def index_keys_move(
    tenant: Tenant,
    target: KeySource,
    wrapper: KeyProvider,
    while_state: str,
    version: str | None,
) -> bool:
    """Rewrap the tenant's index keys under `target` with its key moves (Enable,
    removal, a confirmed rotation): registered with keys.services, called before
    each move switches. One key per transaction, no lock across key-store calls;
    False when the tenant left `while_state`."""
    keys = (
        IndexKey.objects.filter(tenant=tenant)
        .exclude(state=IndexKeyState.RETIRED)
        .select_related("kek_version__source")
        .order_by("version")
    )
    for key in list(keys):
        kek = key.kek_version
        if kek.source_id == target.pk and version in (None, kek.provider_version):
            continue
        if Tenant.objects.get(pk=tenant.pk).state != while_state:
            return False
        before = bytes(key.wrapped)
        context = index_context(str(tenant.pk), key.version)
        wrapped = move_wrapped(
            before,
            context,
            kek.provider_version,
            source=provider_for(kek.source),
            into=wrapper,
        )
        with transaction.atomic():
            if Tenant.objects.select_for_update().get(pk=tenant.pk).state != while_state:
                return False
            row = IndexKey.objects.select_for_update().get(pk=key.pk)
            if bytes(row.wrapped) == before:
                row.wrapped = wrapped.blob
                row.kek_version = kek_version_get_or_create(target, wrapped.version)
                row.save(update_fields=["wrapped", "kek_version"])
    return True


def index_keys_wrapped(tenant: Tenant) -> list[WrappedKey]:
    """The tenant's index keys that still hold a wrapped key, for keys' in-place rewraps."""
    keys = (
        IndexKey.objects.filter(tenant=tenant)
        .exclude(wrapped=b"")
        .select_related("kek_version__source")
        .order_by("version")
    )
    return [
        WrappedKey(
            id=key.pk,
            tenant_id=str(tenant.pk),
            kek_version=key.kek_version,
            blob=bytes(key.wrapped),
            context=index_context(str(tenant.pk), key.version),
        )
        for key in keys
    ]


def index_key_replace(key_id: int, before: bytes, after: bytes) -> bool:
    """Store `after` for the index key if it still holds `before` (caller's transaction)."""
    row = IndexKey.objects.select_for_update().get(pk=key_id)
    if bytes(row.wrapped) != before:
        return False
    row.wrapped = after
    row.save(update_fields=["wrapped"])
    with _cache_lock:
        _cache.pop(key_id, None)
    return True


def index_keys_shred(tenant: Tenant) -> int:
    """Crypto-shredding: the tenant's index keys' wrapped bytes and its lookup rows go
    (registered with keys.services; runs in the destruction's transaction)."""
    LookupRow.objects.filter(tenant=tenant).delete()
    shredded = IndexKey.objects.filter(tenant=tenant).update(
        wrapped=b"", state=IndexKeyState.RETIRED, retired_at=timezone.now()
    )
    forget_cached_keys()
    return shredded
