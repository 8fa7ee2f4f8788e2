"""API tokens, blind-index keys and lookup rows, idempotency keys."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.db import models

from tenants.models import Tenant


class Scope(models.TextChoices):
    RECORDS_READ = "records:read", "Read records"
    RECORDS_WRITE = "records:write", "Create and delete records"
    OBJECTS_READ = "objects:read", "Read objects"
    OBJECTS_WRITE = "objects:write", "Store and delete objects"
    AUDIT_READ = "audit:read", "Read the audit trail"


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
