from __future__ import annotations

import uuid

from django.db import models

from keys.models import DataKey
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

    def __str__(self) -> str:
        return f"{self.kind} {self.external_id}"


class SealedFields(models.Model):
    """All personal fields of one record, sealed as one value under one DEK.

    One value rather than a column or a table per field: a read decrypts once,
    and re-encryption does one decrypt and one encrypt per record. A narrow
    table of its own rather than columns of `Record`: re-encryption rewrites
    these rows only (two indexes to maintain, not four), which is what makes
    it fast. (dek, record) is indexed, so "records per DEK" is an index-only
    count and re-encryption finds its rows by DEK. The ciphertext is bound to
    the tenant, the record's kind, "pii" and the record's `uid`.
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

    class Meta:
        indexes = [models.Index(fields=["dek", "record"], name="sealed_dek_record")]

    def __str__(self) -> str:
        return f"sealed fields of record {self.record_id}"
