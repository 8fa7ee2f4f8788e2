from __future__ import annotations

import hashlib
import json
import uuid

from django.db import models
from django.db.models import Q

from tenants.models import Tenant


class SourceKind(models.TextChoices):
    LOCAL = "local", "Vendor-managed key"
    AWS_KMS = "aws_kms", "AWS KMS key"
    AZURE_KEYVAULT = "azure_keyvault", "Azure Key Vault key"
    KMIP = "kmip", "KMIP server key"
    UPLOADED = "uploaded", "Uploaded key"


class SourceState(models.TextChoices):
    DRAFT = "draft", "Registered, not tested"
    TESTED = "tested", "Tested"
    ACTIVE = "active", "In use"
    RETIRED = "retired", "No longer used"
    REVOKED = "revoked", "Revoked"


class KeySource(models.Model):
    """A tenant's key encryption key registration: which key wraps its data keys."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="key_sources")
    kind = models.CharField(max_length=32, choices=SourceKind.choices)
    # Non-secret settings, validated per kind by the provider's form.
    config = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=16, choices=SourceState.choices, default=SourceState.DRAFT)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)
    # The last "Save and Test": named results, and a digest of the configuration
    # they were run with. Enable needs a passing test of exactly the saved settings.
    test_results = models.JSONField(default=list, blank=True)
    tested_at = models.DateTimeField(null=True, blank=True)
    tested_config_digest = models.CharField(max_length=64, blank=True)
    # The customer's credentials for their key store (client secret, private key,
    # passphrase, password...), as JSON sealed under the vendor root key
    # (keys/credentials.py); never shown back. `config["credentials_ref"]` names
    # the sealed value, so entering them again changes the digest and needs a new test.
    sealed_credentials = models.BinaryField(null=True, blank=True, editable=False)
    sealed_credentials_root = models.CharField(max_length=64, blank=True, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant"], condition=Q(state="active"), name="one_active_source_per_tenant"
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of {self.tenant}"

    def config_digest(self) -> str:
        canonical = json.dumps(self.config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(f"{self.kind}\n{canonical}".encode()).hexdigest()

    @property
    def test_passed(self) -> bool:
        """A passing test of the configuration as saved now."""
        return (
            bool(self.test_results)
            and all(r.get("passed") or not r.get("required", True) for r in self.test_results)
            and self.tested_config_digest == self.config_digest()
        )


class KekState(models.TextChoices):
    PENDING = "pending", "Pending"
    ACTIVE = "active", "Active"
    RETIRED = "retired", "Retired"
    REVOKED = "revoked", "Revoked"


class KekVersion(models.Model):
    """One version of a key source's KEK (a root key version, a KMS key rotation...)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    source = models.ForeignKey(KeySource, on_delete=models.PROTECT, related_name="versions")
    provider_version = models.CharField(max_length=512)
    state = models.CharField(max_length=16, choices=KekState.choices, default=KekState.PENDING)
    created = models.DateTimeField(auto_now_add=True)
    validated_at = models.DateTimeField(null=True, blank=True)

    # Uploaded keys only: the customer's key material, wrapped under the vendor
    # root key (never in the clear), its key check value and optional expiry.
    # Emptied when Keyward's copy is destroyed (revoke).
    material = models.BinaryField(null=True, blank=True, editable=False)
    check_value = models.CharField(max_length=16, blank=True)
    material_expires_at = models.DateTimeField(null=True, blank=True)
    # AWS KMS: the newest key-material rotation seen when this version was last
    # validated; a newer one found by the health check is a rotation to confirm.
    material_marker = models.CharField(max_length=64, blank=True)
    # Days-before-expiry warnings already sent (30, 7, 1), so each goes out once.
    expiry_warnings_sent = models.JSONField(default=list, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["source", "provider_version"], name="one_row_per_provider_version"
            )
        ]
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.provider_version} ({self.state})"

    def __repr__(self) -> str:
        return f"<KekVersion {self.provider_version} {self.state}>"


class DekState(models.TextChoices):
    ACTIVE = "active", "Active"
    RETIRING = "retiring", "Decrypt only"
    RETIRED = "retired", "Retired"
    DESTROYED = "destroyed", "Destroyed"


class DataKey(models.Model):
    """A tenant's data key, stored only wrapped by a KEK version.

    The integer id is what ciphertexts name (8 bytes in every value's header).
    """

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="data_keys")
    version = models.PositiveIntegerField()
    wrapped = models.BinaryField(editable=False)
    kek_version = models.ForeignKey(KekVersion, on_delete=models.PROTECT, related_name="data_keys")
    state = models.CharField(max_length=16, choices=DekState.choices, default=DekState.ACTIVE)
    created = models.DateTimeField(auto_now_add=True)
    retired_at = models.DateTimeField(null=True, blank=True)
    # Encryptions reported by processes (flushed in batches) and reserved by them
    # (the bound the rotation limit is enforced on).
    encryption_count = models.BigIntegerField(default=0)
    encryptions_reserved = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "version"], name="dek_version_per_tenant"),
            models.UniqueConstraint(
                fields=["tenant"], condition=Q(state="active"), name="one_active_dek_per_tenant"
            ),
        ]
        ordering = ["-version"]

    def __str__(self) -> str:
        return f"DEK v{self.version} of {self.tenant_id} ({self.state})"

    def __repr__(self) -> str:
        return f"<DataKey id={self.pk} v{self.version} {self.state}>"


class ImportState(models.TextChoices):
    OPEN = "open", "Waiting for the upload"
    USED = "used", "Used"
    EXPIRED = "expired", "Expired"


class KeyImport(models.Model):
    """One set of import parameters: an RSA-4096 wrapping key pair and its token.

    The private half is stored only wrapped under the vendor root key, and is
    destroyed once the upload used it or the import expired. The token is
    single use: an import that is not `open` accepts nothing.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="key_imports")
    public_der = models.BinaryField(editable=False)
    fingerprint = models.CharField(max_length=64)
    private_wrapped = models.BinaryField(editable=False)
    private_kek_version = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=ImportState.choices, default=ImportState.OPEN)
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    # When the vendor's key store is AWS KMS: the EXTERNAL-origin key the material
    # goes into, and AWS's own import token (not secret; single use at AWS too).
    aws_key_arn = models.CharField(max_length=512, blank=True)
    aws_import_token = models.BinaryField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"import {self.pk} ({self.state})"

    def __repr__(self) -> str:
        return f"<KeyImport {self.pk} {self.state}>"


class HealthResult(models.TextChoices):
    OK = "ok", "Key usable"
    DEGRADED = "degraded", "Key store unreachable"
    REVOKED = "revoked", "Access denied or key disabled"
    ROTATION_PENDING = "rotation_pending", "New key version found"
    ERROR = "error", "Check failed"


class KeyHealthCheck(models.Model):
    """What the health check found on a tenant's key, one row per unchanged finding.

    A check that finds what the previous one found only moves `last_at` and
    counts the run, so a key checked every minute keeps the history of its
    changes (with the key store's messages) rather than one row per minute.
    """

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="health_checks")
    source = models.ForeignKey(
        KeySource, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    result = models.CharField(max_length=16, choices=HealthResult.choices)
    message = models.TextField(blank=True)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()
    runs = models.PositiveIntegerField(default=1)

    class Meta:
        indexes = [models.Index(fields=["tenant", "-last_at"], name="health_tenant_last")]
        ordering = ["-last_at"]

    def __str__(self) -> str:
        return f"{self.result} for {self.tenant_id} at {self.last_at:%Y-%m-%d %H:%M}"

    @property
    def failed(self) -> bool:
        return self.result != HealthResult.OK


class KeyUsageHour(models.Model):
    """Key-store calls (kind: the operation) and DEK cache use (kind "cache") of a
    tenant in one hour, written in batches by keys.usage."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    hour = models.DateTimeField()
    kind = models.CharField(max_length=32)
    outcome = models.CharField(max_length=16)
    count = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "hour", "kind", "outcome"], name="key_usage_per_hour"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.outcome} at {self.hour:%Y-%m-%d %H}h: {self.count}"

    def __repr__(self) -> str:
        return f"<KeyUsageHour {self.hour:%Y-%m-%d %H}h {self.kind} {self.outcome}={self.count}>"


class DataKeyVolume(models.Model):
    """How much data depended on a data key on a day (the latest sample of that day)."""

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    data_key = models.ForeignKey(DataKey, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    records = models.BigIntegerField(default=0)
    stored_objects = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["data_key", "day"], name="data_key_volume_per_day")
        ]
        indexes = [models.Index(fields=["tenant", "day"], name="data_key_volume_tenant_day")]

    def __str__(self) -> str:
        return f"data key {self.data_key_id} on {self.day}"

    def __repr__(self) -> str:
        return (
            f"<DataKeyVolume dek={self.data_key_id} {self.day} "
            f"r={self.records} o={self.stored_objects}>"
        )


class TenantStateDay(models.Model):
    """How many tenants were in a state on a day (the latest sample of that day)."""

    id = models.BigAutoField(primary_key=True)
    day = models.DateField()
    state = models.CharField(max_length=32)
    tenants = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", "state"], name="tenant_state_per_day")
        ]

    def __str__(self) -> str:
        return f"{self.tenants} {self.state} on {self.day}"

    def __repr__(self) -> str:
        return f"<TenantStateDay {self.day} {self.state}={self.tenants}>"
