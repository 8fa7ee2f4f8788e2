from __future__ import annotations

import uuid

from django.db import models

from keys.models import DataKey
from tenants.models import Tenant


class RecordKind(models.TextChoices):
    DEVICE = "device", "Device"
    USER = "user", "User"


class Record(models.Model):
    """A device or user of a tenant; its personal fields are stored encrypted.

    One bytea column holds all personal fields, sealed together (rather than a
    column or a table per field): a read decrypts one value, and re-encryption
    does one decrypt and one encrypt per record and rewrites one column, in
    batches. The DEK of the row (`dek`) is indexed with the tenant, so
    "records per DEK" is an index-only count and re-encryption finds its rows
    by (tenant, dek). The ciphertext is bound to tenant, kind, "pii" and `uid`.
    """

    id = models.BigAutoField(primary_key=True)
    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # No index of their own: (tenant, kind, external_id) and (tenant, dek, id) cover them,
    # and every index costs a write when re-encryption moves a row to a new DEK.
    tenant = models.ForeignKey(
        Tenant, on_delete=models.PROTECT, related_name="records", db_index=False
    )
    kind = models.CharField(max_length=16, choices=RecordKind.choices)
    external_id = models.CharField(max_length=255)
    dek = models.ForeignKey(
        DataKey, on_delete=models.PROTECT, related_name="records", db_index=False
    )
    created = models.DateTimeField(auto_now_add=True)
    # Every personal field of the record, sealed as one value (see archive.pii).
    pii = models.BinaryField(editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "kind", "external_id"], name="record_external_id_per_tenant"
            )
        ]
        indexes = [models.Index(fields=["tenant", "dek", "id"], name="record_tenant_dek_id")]

    def __str__(self) -> str:
        return f"{self.kind} {self.external_id}"
