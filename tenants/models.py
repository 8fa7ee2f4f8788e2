from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class ServiceState(models.TextChoices):
    """The tenant's service state; tenants/states.py says how it may change."""

    VENDOR_MANAGED = "vendor_managed", "Vendor-managed key"
    MIGRATING = "migrating", "Moving to your key"
    BYOK_ACTIVE = "byok_active", "Protected by your key"
    ROTATION_PENDING = "rotation_pending", "Paused: key rotation to confirm"
    REWRAPPING = "rewrapping", "Rewrapping data keys"
    REVOKED = "revoked", "Revoked"
    MIGRATING_BACK = "migrating_back", "Moving back to the vendor-managed key"
    DESTROYED = "destroyed", "Destroyed"
    DEGRADED = "degraded", "Degraded: key store unreachable"


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    KEY_ADMIN = "key_admin", "Key administrator"
    AUDITOR = "auditor", "Auditor"
    VIEWER = "viewer", "Viewer"


DEK_TTL_MIN = 10
DEK_TTL_MAX = 24 * 3600
DEK_ROTATION_DAYS_MIN = 1
DEK_ROTATION_DAYS_MAX = 365


class Tenant(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=63, unique=True)
    state = models.CharField(
        max_length=32, choices=ServiceState.choices, default=ServiceState.VENDOR_MANAGED
    )
    state_changed_at = models.DateTimeField(auto_now_add=True)
    created = models.DateTimeField(auto_now_add=True)
    # Bumped to make every process drop this tenant's cached data keys (revoke, restore).
    key_epoch = models.BigIntegerField(default=0)
    # How long an unwrapped data key may stay in memory: the revocation bound.
    dek_cache_ttl = models.PositiveIntegerField(
        default=300,
        validators=[MinValueValidator(DEK_TTL_MIN), MaxValueValidator(DEK_TTL_MAX)],
    )
    dek_rotation_days = models.PositiveIntegerField(
        default=7,
        validators=[
            MinValueValidator(DEK_ROTATION_DAYS_MIN),
            MaxValueValidator(DEK_ROTATION_DAYS_MAX),
        ],
    )
    # Crypto-shredding scheduled by an owner: the keys are destroyed after this
    # moment unless cancelled first.
    destroy_after = models.DateTimeField(null=True, blank=True)
    # Sudo mode for key actions asks for the second factor as well as the password.
    require_second_factor = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def key_state_readable(self) -> bool:
        return self.state not in (ServiceState.REVOKED, ServiceState.DESTROYED)

    @property
    def is_paused(self) -> bool:
        return self.state in PAUSED_STATES


PAUSED_STATES = frozenset(
    {
        ServiceState.MIGRATING,
        ServiceState.ROTATION_PENDING,
        ServiceState.REWRAPPING,
        ServiceState.MIGRATING_BACK,
    }
)
# The tenant's data moves to or from its key: keys first, then its objects.
MIGRATING_STATES = frozenset({ServiceState.MIGRATING, ServiceState.MIGRATING_BACK})


class Membership(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "tenant"], name="one_membership_per_tenant")
        ]
        ordering = ["tenant__name", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.tenant} as {self.role}"


class Invitation(models.Model):
    """An emailed, single-use link that makes the person a member with a role.

    Only a hash of the link's token is stored: the token itself lives in the
    email and nowhere else, so a copy of the database opens no account.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField(max_length=254)
    role = models.CharField(max_length=16, choices=Role.choices)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Who invited as the audit trail names them (a person, support, or the command line).
    invited_by_display = models.CharField(max_length=254, blank=True)
    token_sha256 = models.CharField(max_length=64, unique=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["tenant", "email"])]

    def __str__(self) -> str:
        return f"{self.email} to {self.tenant} as {self.role}"

    def refusal(self, now: datetime) -> str | None:
        """Why the link no longer works ("used", "revoked", "expired"), or None if it does."""
        if self.used_at is not None:
            return "used"
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        return None
