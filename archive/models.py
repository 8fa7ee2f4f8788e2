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

    One bytea column per personal field, rather than a table per field: a read
    decrypts one row, and re-encryption rewrites one row per record in one
    batched UPDATE. Every field of a row is under the same DEK (`dek`), so
    "records per DEK" is an index-only count and re-encryption finds its rows
    by (tenant, dek). Each ciphertext is bound to tenant, kind, field and `uid`.
    """

    id = models.BigAutoField(primary_key=True)
    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="records")
    kind = models.CharField(max_length=16, choices=RecordKind.choices)
    external_id = models.CharField(max_length=255)
    dek = models.ForeignKey(DataKey, on_delete=models.PROTECT, related_name="records")
    created = models.DateTimeField(auto_now_add=True)
    sid = models.BinaryField(null=True, editable=False)
    name = models.BinaryField(null=True, editable=False)
    distinguished_name = models.BinaryField(null=True, editable=False)
    bios_serial = models.BinaryField(null=True, editable=False)
    chassis_serial = models.BinaryField(null=True, editable=False)
    machine_serial = models.BinaryField(null=True, editable=False)
    hardware_product_id = models.BinaryField(null=True, editable=False)
    public_ip = models.BinaryField(null=True, editable=False)
    local_admins = models.BinaryField(null=True, editable=False)
    entra_name = models.BinaryField(null=True, editable=False)
    email = models.BinaryField(null=True, editable=False)
    full_name = models.BinaryField(null=True, editable=False)
    cloud_sid = models.BinaryField(null=True, editable=False)
    user_principal_name = models.BinaryField(null=True, editable=False)
    onprem_sid = models.BinaryField(null=True, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "kind", "external_id"], name="record_external_id_per_tenant"
            )
        ]
        indexes = [models.Index(fields=["tenant", "dek", "id"], name="record_tenant_dek_id")]

    def __str__(self) -> str:
        return f"{self.kind} {self.external_id}"
