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


class SupportAccess(models.TextChoices):
    ON_APPROVAL = "on_approval", "When approved"
    NEVER = "never", "Never"


# The longest window an owner may allow for one grant.
SUPPORT_ACCESS_MAX_HOURS = 72


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
    # The licensed bring-your-own-key module: without it the tenant stays on the
    # vendor-managed key. Support turns it on or off (tenants/services.py).
    byok_addon = models.BooleanField("BYOK add-on", default=False)
    # Vendor support's access to the tenant's data (the lockbox), as the owners set it.
    support_access = models.CharField(
        max_length=16, choices=SupportAccess.choices, default=SupportAccess.ON_APPROVAL
    )
    support_approvals = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(2)]
    )
    support_max_hours = models.PositiveSmallIntegerField(
        default=8,
        validators=[MinValueValidator(1), MaxValueValidator(SUPPORT_ACCESS_MAX_HOURS)],
    )
    # Sudo mode for key actions asks for the second factor as well as the password.
    require_second_factor = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]
        # The support console's keyset pages by name and by state time: an index
        # scan that stops after 50 rows instead of sorting every tenant.
        indexes = [
            models.Index(fields=["name", "id"], name="tenant_name_id"),
            models.Index(fields=["state_changed_at", "id"], name="tenant_since_id"),
        ]

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
    # Besides the owners, who may approve vendor support's access requests.
    approves_support_access = models.BooleanField(default=False)

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


class AccessReason(models.TextChoices):
    CUSTOMER_CASE = "customer_case", "A case the customer opened"
    INCIDENT = "incident", "An incident"
    LEGAL = "legal", "A legal request"


class AccessScope(models.TextChoices):
    RECORDS_READ = "records:read", "Read records"
    OBJECTS_READ = "objects:read", "Download objects"


class AccessState(models.TextChoices):
    PENDING = "pending", "Waiting for approval"
    APPROVED = "approved", "Approved"
    DENIED = "denied", "Denied"
    EXPIRED = "expired", "Not answered in time"
    ENDED = "ended", "Ended"
    FINISHED = "finished", "Window over"


class AccessRequest(models.Model):
    """A support engineer's request to read one tenant's data; approved, it is a grant
    that lasts `hours` from its approval (the lockbox)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="access_requests")
    requester = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    requester_display = models.CharField(max_length=254)
    reason = models.CharField(max_length=16, choices=AccessReason.choices)
    case_reference = models.CharField(max_length=100)
    justification = models.TextField(max_length=2000)
    scopes = models.JSONField(default=list)
    hours = models.PositiveSmallIntegerField()
    state = models.CharField(
        max_length=16, choices=AccessState.choices, default=AccessState.PENDING
    )
    created = models.DateTimeField(auto_now_add=True)
    answer_by = models.DateTimeField()  # unanswered by then, the request expires
    approved_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_by_display = models.CharField(max_length=254, blank=True)

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["tenant", "state"], name="access_request_state")]

    def __str__(self) -> str:
        return f"{self.requester_display} to {self.tenant} ({self.state})"

    def is_active(self, now: datetime) -> bool:
        """Open for reads now: approved, and its window not over."""
        return (
            self.state == AccessState.APPROVED and self.ends_at is not None and now < self.ends_at
        )


class AccessDecision(models.Model):
    """One approver's answer to an access request, with their comment."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    request = models.ForeignKey(AccessRequest, on_delete=models.CASCADE, related_name="decisions")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    user_display = models.CharField(max_length=254)
    approved = models.BooleanField()
    comment = models.TextField(max_length=1000, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created"]
        constraints = [
            models.UniqueConstraint(fields=["request", "user"], name="one_decision_per_approver")
        ]

    def __str__(self) -> str:
        return f"{self.user_display} {'approved' if self.approved else 'denied'}"
