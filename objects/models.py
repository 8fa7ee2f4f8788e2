"""Encrypted objects (blobs) and the moves of a tenant's objects between storage locations."""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from keys.models import DataKey
from objects.storage import InvalidKey, validate_key
from tenants.models import Tenant


class Location(models.TextChoices):
    SHARED = "shared", "Shared storage"
    DEDICATED = "dedicated", "Dedicated storage"


def validate_object_key(value: str) -> None:
    try:
        validate_key(value)
    except InvalidKey as exc:
        raise ValidationError(str(exc)) from None


# A blob's storage name: the object's key and the version its row names.
# Every write makes a new version under a name of its own, so a write that
# dies before its row commits leaves the previous version whole.
_VERSION_MARK = "~v"
VERSION_NAME_BYTES = len(_VERSION_MARK) + 16  # "~v" and 16 hex digits


def blob_name(key: str, version: str) -> str:
    """Where version `version` of object `key` is stored ("" = written before versions)."""
    return f"{key}{_VERSION_MARK}{version}" if version else key


def split_blob(name: str) -> tuple[str, str]:
    """The object key and version a storage name may belong to ("" when unversioned)."""
    key, mark, version = name.rpartition(_VERSION_MARK)
    if mark and len(version) == 16 and all(c in "0123456789abcdef" for c in version):
        return key, version
    return name, ""


def key_of_blob(name: str) -> str:
    """The object key a storage name may belong to (the name itself when unversioned)."""
    return split_blob(name)[0]


class StoredObject(models.Model):
    """One blob of a tenant: where its ciphertext lives and what it decrypts to.

    The ciphertext itself (crypto/segments.py format) is in the storage
    location named here, under `blob` (the key and the version); it names its
    DEK in its header too.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="stored_objects")
    key = models.CharField(max_length=1024, validators=[validate_object_key])
    location = models.CharField(max_length=16, choices=Location.choices)
    size = models.BigIntegerField()
    ciphertext_size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)  # hex SHA-256 of the plaintext
    # 16 hex digits, new with every write ("" for objects written before versions).
    version = models.CharField(max_length=16, blank=True, default="")
    dek = models.ForeignKey(DataKey, on_delete=models.PROTECT, related_name="stored_objects")
    content_type = models.CharField(max_length=255, default="application/octet-stream")
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "key"], name="one_object_per_tenant_key")
        ]
        ordering = ["key"]

    def __str__(self) -> str:
        return f"{self.key} ({self.size} bytes, {self.location})"

    @property
    def etag(self) -> str:
        return f'"{self.sha256}"'

    @property
    def blob(self) -> str:
        return blob_name(self.key, self.version)


class ObjectUsageCount(models.Model):
    """How many objects, and how many plaintext bytes, a tenant keeps in one location
    under one DEK: a counter kept by the database, never counted on a page view.

    Triggers on `StoredObject` (migration 0005) keep it in the transaction of
    the write: a put (new or replaced: the size changes), a delete, a
    re-encryption (the DEK changes) and a move (the location and the DEK
    change) all change the counts in the statement that changes the row. A
    trigger rather than service code so that no path that writes objects
    (services, moves, a crypto-shred, a COPY) can leave the counts behind.

    As with records (records.models.DekRecordCount), a key's counts are spread
    over a few slots picked by the writing backend so that concurrent puts do
    not queue on one row; a count is the sum over the slots. Tenant and DEK
    are named without foreign keys: a constraint would lock both again on
    every write.
    """

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(
        Tenant, on_delete=models.DO_NOTHING, related_name="+", db_constraint=False
    )
    location = models.CharField(max_length=16, choices=Location.choices)
    dek = models.ForeignKey(
        DataKey,
        on_delete=models.DO_NOTHING,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    slot = models.SmallIntegerField()
    count = models.BigIntegerField(default=0)
    bytes = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "location", "dek", "slot"], name="object_usage_count_slot"
            )
        ]

    def __str__(self) -> str:
        return f"{self.count} objects in {self.location} under DEK {self.dek_id} ({self.slot})"


class OrphanVersion(models.Model):
    """A stored version that no row named when a sweep listed its location.

    The sweep that finds it only notes it; a later one deletes it if it is
    still unnamed after KEYWARD_OBJECT_ORPHAN_GRACE_SECONDS. A listing has no
    dates, and a version being written is stored a moment before its row
    commits: the grace keeps such a version from ever being taken for an orphan.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    location = models.CharField(max_length=16, choices=Location.choices)
    name = models.CharField(max_length=1100)  # the storage name: key and version
    first_seen = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "location", "name"], name="one_orphan_note_per_blob"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.location}, unnamed since {self.first_seen:%Y-%m-%d %H:%M})"


class Direction(models.TextChoices):
    TO_DEDICATED = "to_dedicated", "To dedicated storage"
    TO_SHARED = "to_shared", "Back to shared storage"


class MigrationState(models.TextChoices):
    MANIFEST = "manifest", "Taking the manifest"
    COPYING = "copying", "Copying"
    VERIFYING = "verifying", "Verifying"
    SWITCHING = "switching", "Switching"
    DELETING = "deleting", "Deleting the old copies"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    STOPPED = "stopped", "Stopped"


OPEN_MIGRATION_STATES = (
    MigrationState.MANIFEST,
    MigrationState.COPYING,
    MigrationState.VERIFYING,
    MigrationState.SWITCHING,
    MigrationState.DELETING,
    MigrationState.STOPPED,
)
FINISHED_MIGRATION_STATES = (MigrationState.DONE, MigrationState.FAILED)


class ObjectMigration(models.Model):
    """Moving every object of a tenant to another location, re-encrypted under `target_dek`.

    The manifest (MigrationItem rows, taken at the start) and each item's state
    are the checkpoint: a run killed at any point continues from them.
    `checkpoint` is the id of the last item whose current step is done, so a
    resumed run starts after it without scanning the ones before.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="object_migrations")
    direction = models.CharField(max_length=16, choices=Direction.choices)
    state = models.CharField(
        max_length=16, choices=MigrationState.choices, default=MigrationState.MANIFEST
    )
    source_location = models.CharField(max_length=16, choices=Location.choices)
    target_location = models.CharField(max_length=16, choices=Location.choices)
    target_dek = models.ForeignKey(DataKey, on_delete=models.PROTECT, related_name="+")
    total = models.BigIntegerField(default=0)
    copied = models.BigIntegerField(default=0)
    verified = models.BigIntegerField(default=0)
    deleted = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    bytes_copied = models.BigIntegerField(default=0)
    checkpoint = models.BigIntegerField(default=0)
    started = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    finished = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant"],
                condition=Q(state__in=[s.value for s in OPEN_MIGRATION_STATES]),
                name="one_open_object_migration_per_tenant",
            )
        ]
        ordering = ["-started"]

    def __str__(self) -> str:
        return f"{self.get_direction_display()} of {self.tenant_id}: {self.state}"

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_MIGRATION_STATES

    @property
    def percent(self) -> int:
        """Overall progress: copying is most of the work, then verifying, then deleting."""
        if self.state == MigrationState.DONE:
            return 100
        if not self.total:
            return 0
        done = 0.7 * self.copied + 0.2 * self.verified + 0.1 * self.deleted
        return min(99, int(100 * done / self.total))


class ItemState(models.TextChoices):
    PENDING = "pending", "Pending"
    COPIED = "copied", "Copied"
    VERIFIED = "verified", "Verified"
    DELETED = "deleted", "Source deleted"


class MigrationItem(models.Model):
    """One object of the manifest, as it was when the migration began."""

    id = models.BigAutoField(primary_key=True)
    migration = models.ForeignKey(ObjectMigration, on_delete=models.CASCADE, related_name="items")
    object = models.ForeignKey(
        StoredObject, on_delete=models.SET_NULL, null=True, related_name="migration_items"
    )
    key = models.CharField(max_length=1024)
    version = models.CharField(max_length=16, blank=True, default="")  # the object's
    sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField()
    source_location = models.CharField(max_length=16, choices=Location.choices)
    state = models.CharField(max_length=16, choices=ItemState.choices, default=ItemState.PENDING)
    # The hex salt in the header of the copy this migration wrote and checked
    # (empty until copied): verification accepts that exact write only.
    target_salt = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["migration", "key"], name="one_item_per_migration_key")
        ]
        indexes = [models.Index(fields=["migration", "state", "id"])]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.key}: {self.state}"
