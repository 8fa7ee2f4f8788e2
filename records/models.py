from __future__ import annotations

import uuid

from django.db import models
from django.db.models import F, Q

from keys.models import DataKey, KekVersion
from tenants.models import Tenant


class RecordKind(models.TextChoices):
    DEVICE = "device", "Device"
    USER = "user", "User"


class Record(models.Model):
    """A device or user of a tenant. Its personal fields live sealed in `SealedFields`."""

    id = models.BigAutoField(primary_key=True)
    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey(
        Tenant, on_delete=models.PROTECT, related_name="records", db_index=False
    )
    kind = models.CharField(max_length=16, choices=RecordKind.choices)
    external_id = models.CharField(max_length=255)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "kind", "external_id"], name="record_external_id_per_tenant"
            )
        ]
        # A tenant's records in id order: how re-encryption and lookup rebuilds
        # walk one tenant's data without reading the other tenants' rows.
        indexes = [models.Index(fields=["tenant", "id"], name="record_tenant_id")]

    def __str__(self) -> str:
        return f"{self.kind} {self.external_id}"


class SealedFields(models.Model):
    """All personal fields of one record, sealed as one value under one DEK.

    One value rather than a column or a table per field: a read decrypts once,
    and re-encryption does one decrypt and one encrypt per record. A narrow
    table of its own rather than columns of `Record`: re-encryption rewrites
    these rows only, which is what makes it fast. The ciphertext is bound to
    the tenant, the record's kind, "pii" and the record's `uid`.

    Its only index is the primary key, and on PostgreSQL its pages are filled
    to half (fillfactor 50, migration 0006): re-encryption changes `dek` and
    `pii` and no indexed column, so PostgreSQL rewrites each row on its own page
    without touching an index (a HOT update). With an index on `dek` every
    rewrite also inserted into both indexes: 7.6 to 10 µs of the database's
    CPU per row, against 4.7, and four WAL records per row against one.
    Re-encryption finds a tenant's rows through `Record`'s (tenant, id) index;
    "records per DEK" is kept by triggers in `DekRecordCount`.
    """

    record = models.OneToOneField(
        Record, on_delete=models.CASCADE, primary_key=True, related_name="sealed"
    )
    # No per-row foreign key: triggers check the DEK once per statement
    # (migration 0002), which halves the cost of re-encrypting a row.
    dek = models.ForeignKey(
        DataKey,
        on_delete=models.PROTECT,
        related_name="sealed_fields",
        db_index=False,
        db_constraint=False,
    )
    pii = models.BinaryField(editable=False)

    def __str__(self) -> str:
        return f"sealed fields of record {self.record_id}"


class IndexKeyState(models.TextChoices):
    BUILDING = "building", "Rebuilding lookups"
    ACTIVE = "active", "Active"
    RETIRED = "retired", "Retired"


class IndexKey(models.Model):
    """A tenant's blind-index key, stored only wrapped by the tenant's KEK.

    Wrapped like a DEK, but under the context purpose "blind-index", so a
    wrapped index key can never be unwrapped as a DEK (nor a DEK as an index
    key). Lookups use the ACTIVE version; a BUILDING version is written to
    alongside it until its rebuild finishes.
    """

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="index_keys")
    version = models.PositiveIntegerField()
    wrapped = models.BinaryField(editable=False)
    kek_version = models.ForeignKey(KekVersion, on_delete=models.PROTECT, related_name="+")
    state = models.CharField(
        max_length=16, choices=IndexKeyState.choices, default=IndexKeyState.ACTIVE
    )
    created = models.DateTimeField(auto_now_add=True)
    # Rebuild checkpoint: every record with an id up to this one is indexed.
    rebuilt_through = models.BigIntegerField(default=0)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "version"], name="index_key_version_per_tenant"
            ),
            models.UniqueConstraint(
                fields=["tenant"], condition=Q(state="active"), name="one_active_index_key"
            ),
            models.UniqueConstraint(
                fields=["tenant"], condition=Q(state="building"), name="one_building_index_key"
            ),
        ]
        db_table = "api_indexkey"
        ordering = ["-version"]

    def __str__(self) -> str:
        return f"index key v{self.version} of {self.tenant_id} ({self.state})"


class LookupRow(models.Model):
    """One blind-index entry: HMAC-SHA-256(index key, field, normalised value) -> record.

    No plaintext, and no digest that compares across tenants, fields or key
    versions. Indexed on (tenant, field, version, digest): the version is in
    the index because during a rebuild two versions coexist.
    """

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    field = models.CharField(max_length=32)
    version = models.PositiveIntegerField()
    digest = models.BinaryField(max_length=32)
    record = models.ForeignKey(
        Record, on_delete=models.CASCADE, related_name="lookup_rows", db_index=False
    )

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "field", "version", "digest"], name="lookup_digest"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["record", "field", "version"], name="lookup_once_per_version"
            )
        ]
        db_table = "api_lookuprow"

    def __str__(self) -> str:
        return f"lookup {self.field} v{self.version} -> {self.record_id}"


class JobState(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


OPEN_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)


class ReencryptionJob(models.Model):
    """Re-encrypting a tenant's records from older DEKs to the current one.

    `last_record_id` is the checkpoint: a job killed at any point resumes after it.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="reencryption_jobs")
    target_dek = models.ForeignKey(DataKey, on_delete=models.PROTECT, related_name="+")
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.QUEUED)
    total = models.BigIntegerField(default=0)
    done = models.BigIntegerField(default=0)
    last_record_id = models.BigIntegerField(default=0)
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant"],
                condition=Q(state__in=["queued", "running"]),
                name="one_open_reencryption_per_tenant",
            )
        ]
        db_table = "keys_reencryptionjob"
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"re-encryption of {self.tenant_id}: {self.done}/{self.total} ({self.state})"

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_JOB_STATES

    @property
    def percent(self) -> int:
        return 100 if self.total == 0 else min(100, int(self.done * 100 / self.total))


class DekRecordCount(models.Model):
    """How many records one DEK seals: a counter kept by the database, never counted on a
    page view.

    Triggers on `SealedFields` (migration 0004) keep it, in the transaction
    of the write: creates (one by one, batched or by COPY), deletes (a record's
    own, a cascade, a crypto-shred) and re-encryption (an UPDATE of the DEK)
    all change the count in the statement that changes the rows, whichever
    code path runs it. Triggers rather than service code because the rows
    change in many places (services, bulk COPY, re-encryption's UPDATE ...
    FROM, cascades) and one missed path would make every later count wrong
    with nothing to notice it; a trigger cannot be forgotten by a new path.

    Each DEK's count is spread over a few slots (the writing backend's
    process id picks one): concurrent writers under the same active DEK then
    rarely update the same row, so the counter does not serialise ingest.
    The count of a DEK is the sum of its slots. On PostgreSQL one trigger runs
    per statement and adds the statement's net change per DEK, so a batch of
    a thousand rows costs one counter update, not a thousand.

    The DEK is named without a foreign key: a row is written on every insert
    and a constraint would lock the DEK again; a destroyed DEK's rows are
    left at zero and a reader joins the DEK anyway.
    """

    id = models.BigAutoField(primary_key=True)
    dek = models.ForeignKey(
        DataKey,
        on_delete=models.DO_NOTHING,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    slot = models.SmallIntegerField()
    records = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["dek", "slot"], name="dek_record_count_slot")
        ]

    def __str__(self) -> str:
        return f"{self.records} records under DEK {self.dek_id} (slot {self.slot})"


class ReencryptionPart(models.Model):
    """One record-id range of a re-encryption job, run by one worker at a time.

    It covers the sealed rows with `after_id < record_id <= until_id`; the
    parts of a job cover its range once, without overlap. `last_record_id` is
    the part's own checkpoint, `done` the rows it rewrote.
    """

    job = models.ForeignKey(ReencryptionJob, on_delete=models.CASCADE, related_name="parts")
    number = models.PositiveIntegerField()
    after_id = models.BigIntegerField()
    until_id = models.BigIntegerField()
    last_record_id = models.BigIntegerField()
    done = models.BigIntegerField(default=0)
    finished = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "number"], name="one_part_number_per_job"),
            models.CheckConstraint(
                condition=Q(after_id__lt=F("until_id")), name="part_range_not_empty"
            ),
        ]
        ordering = ["job", "number"]

    def __str__(self) -> str:
        return f"part {self.number} ({self.after_id}, {self.until_id}] of {self.job_id}"
