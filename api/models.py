"""API tokens, blind-index keys and lookup rows, idempotency keys."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q

from archive.models import Record
from keys.models import KekVersion
from tenants.models import Tenant


class Scope(models.TextChoices):
    RECORDS_READ = "records:read", "Read records"
    RECORDS_WRITE = "records:write", "Create and delete records"
    OBJECTS_READ = "objects:read", "Read objects"
    OBJECTS_WRITE = "objects:write", "Store and delete objects"


class ApiToken(models.Model):
    """A tenant-scoped bearer token: `kw_<prefix>_<secret>`.

    Only the prefix (public, shown in the console and used to find the row)
    and a SHA-256 of the secret are stored. The secret is 256 random bits, so
    a fast hash is the right choice: there is nothing to brute-force that a
    slow password hash would protect, and every API request pays for it.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    secret_sha256 = models.BinaryField(max_length=32, editable=False)
    scopes = models.JSONField(default=list)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name} (kw_{self.prefix}_…)"

    def __repr__(self) -> str:
        return f"<ApiToken {self.prefix} {self.scopes}>"

    def is_usable(self, now: datetime) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


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

    def __str__(self) -> str:
        return f"lookup {self.field} v{self.version} -> {self.record_id}"


class IdempotencyKey(models.Model):
    """The first outcome of a create sent with an `Idempotency-Key` header.

    The row is inserted in the same transaction as the create it guards: a
    concurrent retry waits on the unique (tenant, key) index and then reads
    the committed response; a failed create rolls its row back, so a retry
    runs again.
    """

    id = models.BigAutoField(primary_key=True)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False)
    key = models.CharField(max_length=255)
    request_sha256 = models.BinaryField(max_length=32)
    status = models.PositiveSmallIntegerField(null=True)
    response = models.JSONField(null=True)
    created = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "key"], name="idempotency_key_per_tenant")
        ]

    def __str__(self) -> str:
        return f"idempotency key {self.key!r}"
