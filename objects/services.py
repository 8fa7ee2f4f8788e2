"""Storing, reading and deleting a tenant's encrypted objects.

An object is streamed through crypto.segments under the tenant's current
DEK into its current location, and its row (where it is, which DEK, the
plaintext SHA-256) is written once the storage holds the whole ciphertext.

Writes hold a shared lock on the tenant's row from their state check to
their row's commit (PostgreSQL `FOR SHARE`): a move of the tenant's objects
locks the row to change its state and take its manifest, so it waits for
writes in flight and no write lands after the manifest was taken. Writes
are not audited one by one (data-plane traffic, like records).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from crypto.envelope import KeyRevoked
from crypto.segments import (
    Digest,
    ObjectFormatError,
    ObjectUnauthentic,
    aligned_reads,
    decrypt_stream,
    encrypt_stream,
)
from objects.keyring import current_object_key, dek_material
from objects.locations import current_location, ensured, storage_for
from objects.models import (
    OPEN_MIGRATION_STATES,
    VERSION_NAME_BYTES,
    Location,
    MigrationItem,
    ObjectMigration,
    OrphanVersion,
    StoredObject,
    blob_name,
    split_blob,
)
from objects.storage import (
    InvalidKey,
    ObjectMissing,
    ReadSizes,
    Storage,
    StorageError,
    validate_key,
)
from tenants.models import MIGRATING_STATES, PAUSED_STATES, ServiceState, Tenant
from tenants.states import ServicePaused

logger = logging.getLogger(__name__)

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_CONTENT_TYPE = re.compile(r"[\x20-\x7e]{1,255}")
_BINDING_PREFIX = b"keyward object v1\x00"
# Every read of a stored object asks for pieces that end where its segments'
# records end (objects are written with the default segment size).
OBJECT_READS = ReadSizes(*aligned_reads())
_BINDING_PREFIX_V2 = b"keyward object v2\x00"


class ObjectTooLarge(Exception):
    """The object is over KEYWARD_OBJECT_MAX_BYTES; nothing was stored."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"an object is at most {limit} bytes")
        self.limit = limit


class ObjectNotFound(Exception):
    """No object under that key for this tenant (another tenant's is not found either)."""


class ObjectMismatch(Exception):
    """The stored ciphertext is not the one the object's row describes."""


def object_binding(tenant_id: str, key: str, version: str = "") -> bytes:
    """What an object's segments are bound to: a blob copied to another key, version
    or tenant fails (an older version put back in place of the current one too)."""
    tenant = tenant_id.encode()
    if not version:  # written before versions
        return _BINDING_PREFIX + len(tenant).to_bytes(2, "big") + tenant + key.encode("utf-8")
    name = key.encode("utf-8")
    return (
        _BINDING_PREFIX_V2
        + len(tenant).to_bytes(2, "big")
        + tenant
        + len(name).to_bytes(2, "big")
        + name
        + version.encode()
    )


def max_object_bytes() -> int:
    return int(settings.KEYWARD_OBJECT_MAX_BYTES)


def _locked_state(tenant: Tenant) -> str:
    """The tenant's state, with its row share-locked until the transaction ends."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT state FROM tenants_tenant WHERE id = %s FOR SHARE", [tenant.pk])
            row = cursor.fetchone()
        if row is None:
            raise Tenant.DoesNotExist(str(tenant.pk))
        return str(row[0])
    # SQLite (embedded) serialises writers on the database file instead.
    return str(Tenant.objects.values_list("state", flat=True).get(pk=tenant.pk))


def _check_writable(state: str) -> None:
    if state in (ServiceState.REVOKED, ServiceState.DESTROYED):
        raise KeyRevoked(f"the tenant's key is {state}: its data cannot be written")
    if state in PAUSED_STATES:
        raise ServicePaused(
            f"The tenant's service is paused ({ServiceState(state).label}); retry later."
        )


def _limited(chunks: Iterable[bytes], digest: Digest, limit: int) -> Iterator[bytes]:
    for chunk in chunks:
        if not chunk:
            continue
        if digest.size + len(chunk) > limit:
            raise ObjectTooLarge(limit)
        digest.update(chunk)
        yield chunk


def _hold_key(tenant_id: str, key: str) -> None:
    """Serialise writes of one object key until commit (PostgreSQL; SQLite serialises
    all writers): without it, two uploads of the same key could leave the row
    describing one and the storage holding the other."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"{tenant_id}:{key}"]
            )


def _hold_dek(dek_id: int) -> None:
    """Keep the DEK from being retired while an upload under it is under way (the
    retirement locks the row, so it waits, then sees this object's row)."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT state FROM keys_datakey WHERE id = %s FOR SHARE", [dek_id])
        row = cursor.fetchone()
    if row is None or row[0] in ("retired", "destroyed"):
        raise KeyRevoked("the tenant's data key was destroyed: nothing can be written")


def _fits_every_location(tenant: Tenant, key: str) -> None:
    """An object key, with its version, must fit wherever the tenant's objects may
    move, or a later move could never place it. The shared location is the
    strictest (its tenant prefix takes part of S3's 1024 bytes; dedicated
    locations have none)."""
    try:
        storage_for(tenant, Location.SHARED).check_key(blob_name(key, "0" * 16))
    except InvalidKey:
        limit = storage_for(tenant, Location.SHARED).max_key_bytes - VERSION_NAME_BYTES
        raise InvalidKey(f"a key here is at most {limit} bytes of UTF-8") from None


def object_put(
    *,
    tenant: Tenant,
    key: str,
    chunks: Iterable[bytes],
    content_type: str = DEFAULT_CONTENT_TYPE,
) -> StoredObject:
    """Store (or replace) the object `key`, streaming `chunks` through encryption.

    Raises InvalidKey / ValueError for a bad key or content type, ObjectTooLarge
    (nothing stored, the previous version untouched), ServicePaused while the
    tenant is paused or its objects move, KeyRevoked, and the key stores' errors.
    """
    validate_key(key)
    if not _CONTENT_TYPE.fullmatch(content_type):
        raise ValueError("a content type is 1 to 255 printable ASCII characters")
    limit = max_object_bytes()
    tenant_id = str(tenant.pk)
    version = secrets.token_hex(8)
    with transaction.atomic():
        _check_writable(_locked_state(tenant))
        _hold_key(tenant_id, key)
        location = current_location(tenant)
        storage = ensured(tenant, location)
        _fits_every_location(tenant, key)
        previous = StoredObject.objects.filter(tenant=tenant, key=key).first()
        dek = current_object_key(tenant_id)
        _hold_dek(dek.dek_id)
        digest = Digest()
        # A new name for every write: until the row below commits, it names the
        # previous version, which stays whole whatever happens to this write.
        stored = storage.put(
            blob_name(key, version),
            encrypt_stream(
                _limited(chunks, digest, limit),
                dek=dek.material,
                dek_id=dek.dek_id,
                binding=object_binding(tenant_id, key, version),
            ),
        )
        obj, _created = StoredObject.objects.update_or_create(
            tenant=tenant,
            key=key,
            defaults={
                "location": location,
                "size": digest.size,
                "ciphertext_size": stored.size,
                "sha256": digest.hexdigest(),
                "version": version,
                "dek_id": dek.dek_id,
                "content_type": content_type,
            },
        )
        if previous is not None:
            old = storage_for(tenant, previous.location)
            transaction.on_commit(lambda: _delete_replaced(old, previous.blob))
    return obj


def _delete_replaced(storage: Storage, name: str) -> None:
    """Delete a replaced version once its successor's row is committed.

    Best effort: a version left behind (a crash, an unreachable store) is a
    blob no row names, which reads and moves ignore.
    """
    try:
        storage.delete(name)
    except StorageError as exc:
        logger.warning("a replaced object version was left in storage: %s", exc)


def object_head(*, tenant: Tenant, key: str) -> StoredObject:
    try:
        validate_key(key)
    except InvalidKey:
        # No object is stored under a key that breaks the rules, and PostgreSQL
        # refuses a NUL in a query: answered as not found, before any query.
        raise ObjectNotFound(key) from None
    obj = StoredObject.objects.filter(tenant=tenant, key=key).first()
    if obj is None:
        raise ObjectNotFound(key)
    return obj


def _row_key(tenant_id: str, obj: StoredObject) -> Callable[[int], bytes]:
    """The DEK bytes for a stored copy, which must name the DEK its row names.

    Reached before returning, so a revoked or unreachable key raises here."""
    material = dek_material(tenant_id, obj.dek_id)

    def key_for(dek_id: int) -> bytes:
        if dek_id != obj.dek_id:
            raise ObjectMismatch("the stored object names another data key than its row")
        return material

    return key_for


def object_open(*, tenant: Tenant, key: str) -> tuple[StoredObject, Iterator[bytes]]:
    """The object's row and its plaintext, streamed and authenticated segment by segment.

    The DEK and the stored bytes are reached before returning, so a revoked key,
    an unreachable key store or a missing blob raise here, not mid-stream. A
    ciphertext that fails to authenticate raises ObjectUnauthentic while
    streaming: the caller must abort the response, not end it cleanly.
    """
    obj = object_head(tenant=tenant, key=key)
    tenant_id = str(tenant.pk)
    key_for = _row_key(tenant_id, obj)
    pieces = storage_for(tenant, obj.location).get(obj.blob, sizes=OBJECT_READS)
    binding = object_binding(tenant_id, key, obj.version)
    return obj, decrypt_stream(pieces, key_for=key_for, binding=binding)


def object_delete(*, tenant: Tenant, key: str) -> None:
    """Delete the object: its bytes first, then its row (a retry finishes either way)."""
    validate_key(key)
    with transaction.atomic():
        _check_writable(_locked_state(tenant))
        obj = StoredObject.objects.select_for_update().filter(tenant=tenant, key=key).first()
        if obj is None:
            raise ObjectNotFound(key)
        storage_for(tenant, obj.location).delete(obj.blob)
        obj.delete()


def object_reencrypt(*, tenant: Tenant, key: str, version: str) -> bool:
    """Rewrite version `version` of object `key` under the tenant's current DEK.

    Like a write with the same bytes: the plaintext is decrypted, checked
    against the row's size and SHA-256, encrypted into a new version, and the
    row switched to it in one transaction (the ETag and Last-Modified stay:
    the content did not change). Returns False, changing nothing, when there
    is nothing to do: the object is gone, was written again since (another
    version), or already is under the current DEK. Raises ServicePaused /
    KeyRevoked as writes do, ObjectUnauthentic or ObjectMismatch for a stored
    copy that is not what its row says (the new version is then deleted).
    """
    tenant_id = str(tenant.pk)
    with transaction.atomic():
        _check_writable(_locked_state(tenant))
        _hold_key(tenant_id, key)
        obj = StoredObject.objects.filter(tenant=tenant, key=key, version=version).first()
        dek = current_object_key(tenant_id)
        if obj is None or obj.dek_id == dek.dek_id:
            return False
        _hold_dek(dek.dek_id)
        storage = storage_for(tenant, obj.location)
        plain = decrypt_stream(
            storage.get(obj.blob, sizes=OBJECT_READS),
            key_for=_row_key(tenant_id, obj),
            binding=object_binding(tenant_id, key, version),
        )
        digest, new_version = Digest(), secrets.token_hex(8)
        name = blob_name(key, new_version)
        try:
            stored = storage.put(
                name,
                encrypt_stream(
                    _limited(plain, digest, obj.size),
                    dek=dek.material,
                    dek_id=dek.dek_id,
                    binding=object_binding(tenant_id, key, new_version),
                ),
            )
        except ObjectTooLarge:  # more bytes than its row says (nothing was stored)
            raise ObjectMismatch(
                f"the stored copy of {key!r} is not the content its row describes"
            ) from None
        if digest.size != obj.size or (obj.sha256 and digest.hexdigest() != obj.sha256):
            _delete_replaced(storage, name)
            raise ObjectMismatch(f"the stored copy of {key!r} is not the content its row describes")
        StoredObject.objects.filter(pk=obj.pk).update(
            version=new_version, dek_id=dek.dek_id, ciphertext_size=stored.size
        )
        transaction.on_commit(lambda: _delete_replaced(storage, obj.blob))
    return True


def objects_reencrypt_pass(tenant: Tenant) -> tuple[int, list[str]]:
    """Rewrite every object of the tenant that is under an older DEK (`object_reencrypt`).

    Page by page in key order, one transaction per object: a crash loses at
    most the object in flight (its row still names the old version, whole),
    and a rerun skips what is done. An object whose stored copy does not
    decrypt or does not match its row is left as it is, logged and listed in
    the result (its DEK then stays); the key store and the storage being
    unavailable, or the service pausing, stop the pass (raised).
    Returns (objects rewritten, keys left behind).
    """
    current = current_object_key(str(tenant.pk)).dek_id
    rewritten, failed = 0, list[str]()
    after = ""
    while True:
        page = list(
            StoredObject.objects.filter(tenant=tenant, key__gt=after)
            .exclude(dek_id=current)
            .order_by("key")
            .values_list("key", "version")[:500]
        )
        if not page:
            return rewritten, failed
        for key, version in page:
            try:
                rewritten += object_reencrypt(tenant=tenant, key=key, version=version)
            except (ObjectUnauthentic, ObjectFormatError, ObjectMismatch, ObjectMissing) as exc:
                logger.warning("object %r of %s was not re-encrypted: %s", key, tenant.pk, exc)
                failed.append(key)
        after = page[-1][0]


def objects_load(
    tenant: Tenant, blobs: Iterable[tuple[str, bytes]], *, versioned: bool = True
) -> list[StoredObject]:
    """Store many objects in the shared location at once, rows in one bulk insert.

    For loading data (benchmarks, tests), not for serving writes: it skips the
    per-write guards (state, key lock), so the tenant must not be moving and
    the keys must be new. `versioned=False` writes the layout of objects
    stored before versions existed (blob under the bare key).
    """
    tenant_id = str(tenant.pk)
    dek = current_object_key(tenant_id)
    shared = ensured(tenant, Location.SHARED)
    rows = []
    for key, data in blobs:
        validate_key(key)
        version = secrets.token_hex(8) if versioned else ""
        stored = shared.put(
            blob_name(key, version),
            encrypt_stream(
                [data],
                dek=dek.material,
                dek_id=dek.dek_id,
                binding=object_binding(tenant_id, key, version),
            ),
        )
        rows.append(
            StoredObject(
                tenant=tenant,
                key=key,
                location=Location.SHARED,
                size=len(data),
                ciphertext_size=stored.size,
                sha256=hashlib.sha256(data).hexdigest(),
                version=version,
                dek_id=dek.dek_id,
            )
        )
    return StoredObject.objects.bulk_create(rows)


def object_checksums_shred(tenant: Tenant) -> int:
    """Crypto-shredding: forget the plaintext checksums of the tenant's objects.

    A SHA-256 of the plaintext confirms a guessed document even when the
    ciphertext can no longer be read, so it goes with the keys (rows and
    manifests; the sizes stay). Registered with keys.services' shredders; runs
    in the destruction's transaction. Destroys no key: returns 0.
    """
    StoredObject.objects.filter(tenant=tenant).update(sha256="")
    MigrationItem.objects.filter(migration__tenant=tenant).update(sha256="")
    return 0


def _moving(tenant: Tenant, state: str) -> bool:
    """While the tenant's objects move, the target holds copies that no row names
    yet: a sweep leaves such a tenant alone."""
    return (
        state in MIGRATING_STATES
        or ObjectMigration.objects.filter(tenant=tenant, state__in=OPEN_MIGRATION_STATES).exists()
    )


def _sweep_locations(tenant: Tenant) -> list[str]:
    """The shared location, and the dedicated one once the tenant has used it."""
    used = (
        StoredObject.objects.filter(tenant=tenant, location=Location.DEDICATED).exists()
        or ObjectMigration.objects.filter(tenant=tenant).exists()
    )
    return [Location.SHARED, Location.DEDICATED] if used else [Location.SHARED]


def objects_sweep_orphans(tenant: Tenant) -> tuple[int, int]:
    """Delete the tenant's stored versions that no row names: (noted, deleted).

    Such versions are left by a write killed between storing its version and
    committing its row, by a replaced version whose delete failed, and by a
    move whose last deletes did not happen. A version first found unnamed is
    only noted (OrphanVersion); a later sweep deletes it once it has stayed
    unnamed for KEYWARD_OBJECT_ORPHAN_GRACE_SECONDS, after checking its row
    again under the object key's write lock. Nothing is swept while the
    tenant's objects move (the target's copies are named only at the switch).
    """
    if _moving(tenant, Tenant.objects.values_list("state", flat=True).get(pk=tenant.pk)):
        return 0, 0
    tenant_id = str(tenant.pk)
    now = timezone.now()
    due_before = now - timedelta(seconds=settings.KEYWARD_OBJECT_ORPHAN_GRACE_SECONDS)
    noted = deleted = 0
    for location in _sweep_locations(tenant):
        storage = storage_for(tenant, location)
        try:
            listed = [o.key for o in storage.list("")]
        except ObjectMissing:
            continue  # the folder or bucket was never made: nothing to sweep
        except StorageError as exc:  # one unreachable location does not stop the other
            logger.warning("object sweep skipped the %s location: %s", location, exc)
            continue
        named = {
            blob_name(key, version)
            for key, version in StoredObject.objects.filter(
                tenant=tenant, location=location
            ).values_list("key", "version")
        }
        orphans = [name for name in listed if name not in named]
        notes = OrphanVersion.objects.filter(tenant=tenant, location=location)
        seen = dict(notes.values_list("name", "first_seen"))
        # Notes of versions since named again or gone are void.
        unnamed = set(orphans)
        void = [name for name in seen if name not in unnamed]
        for start in range(0, len(void), 500):
            notes.filter(name__in=void[start : start + 500]).delete()
        fresh = [
            OrphanVersion(tenant=tenant, location=location, name=name, first_seen=now)
            for name in orphans
            if name not in seen
        ]
        OrphanVersion.objects.bulk_create(fresh, ignore_conflicts=True)
        noted += len(fresh)
        for name in orphans:
            if name in seen and seen[name] <= due_before:
                deleted += _delete_orphan(tenant, tenant_id, storage, location, name)
    if deleted:
        logger.info("deleted %d stored object versions that no row named", deleted)
    return noted, deleted


def _delete_orphan(
    tenant: Tenant, tenant_id: str, storage: Storage, location: str, name: str
) -> int:
    key, version = split_blob(name)
    with transaction.atomic():
        # The tenant's row share-locked and the key's write lock held: no move
        # starts and no write of this key commits until the decision is made.
        if _moving(tenant, _locked_state(tenant)):
            return 0
        _hold_key(tenant_id, key)
        named = StoredObject.objects.filter(
            tenant=tenant, key=key, version=version, location=location
        ).exists()
        OrphanVersion.objects.filter(tenant=tenant, location=location, name=name).delete()
        if named:
            return 0
        storage.delete(name)
    return 1
