from __future__ import annotations

import uuid

from django.db import models

# The vendor's own chain (events with no tenant) uses this fixed key.
VENDOR_CHAIN = "vendor"


class Outcome(models.TextChoices):
    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"
    DENIED = "denied", "Denied"


class ActorKind(models.TextChoices):
    USER = "user", "User"
    SUPPORT = "support", "Vendor support"
    SYSTEM = "system", "System"
    API = "api", "API token"
    ANONYMOUS = "anonymous", "Anonymous"


class AuditChain(models.Model):
    """The head of one hash chain: locked by every writer to serialise appends."""

    key = models.CharField(max_length=64, primary_key=True)
    last_seq = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default="0" * 64)
    # Event times never go backwards along a chain (even if a server's clock
    # does), so a date range maps onto a range of sequence numbers.
    last_time = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.key} @ {self.last_seq}"


class AuditEvent(models.Model):
    """One append-only, hash-chained audit event.

    `hash` is SHA-256 over the canonical form of the event (see
    `audit.chain.canonical`) followed by `prev_hash`; a database trigger
    refuses UPDATE and DELETE.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    chain = models.CharField(max_length=64)
    seq = models.BigIntegerField()
    tenant = models.ForeignKey(
        "tenants.Tenant",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="audit_events",
    )
    time = models.DateTimeField()
    actor_kind = models.CharField(max_length=16, choices=ActorKind.choices)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_display = models.CharField(max_length=254, blank=True)
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=254, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    reason = models.TextField(blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["chain", "seq"], name="audit_chain_seq")]
        indexes = [
            models.Index(fields=["chain", "action", "-seq"], name="audit_action_seq"),
            models.Index(fields=["chain", "actor_display", "-seq"], name="audit_actor_seq"),
            models.Index(fields=["chain", "outcome", "-seq"], name="audit_outcome_seq"),
            models.Index(fields=["chain", "time"], name="audit_chain_time"),
        ]
        ordering = ["chain", "-seq"]

    def __str__(self) -> str:
        return f"{self.chain}#{self.seq} {self.action} {self.outcome}"


class StreamKind(models.TextChoices):
    SYSLOG = "syslog", "Syslog over TLS"
    WEBHOOK = "webhook", "HTTPS webhook"


class StreamState(models.TextChoices):
    ACTIVE = "active", "Active"
    PAUSED = "paused", "Paused"


class StreamDestination(models.Model):
    """Where a tenant's audit events are sent (its SIEM), and how far they got.

    `cursor` is the sequence number of the last event the destination accepted:
    delivery always resumes after it, so events go out in order and, when a
    delivery is cut before the cursor moves, at least once.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.OneToOneField(
        "tenants.Tenant", on_delete=models.PROTECT, related_name="audit_stream"
    )
    kind = models.CharField(max_length=16, choices=StreamKind.choices)
    # Syslog: host and port. Webhook: the https:// URL (host and port kept too,
    # for the address checks every delivery repeats).
    host = models.CharField(max_length=253)
    port = models.PositiveIntegerField()
    url = models.CharField(max_length=2048, blank=True)
    # The customer's CA certificates (PEM) for the destination's certificate;
    # empty: the operator's bundle or the system's trust store.
    ca_pem = models.TextField(blank=True)
    # The webhook's HMAC secret, sealed under the vendor root key (never shown again).
    sealed_secret = models.BinaryField(null=True, blank=True, editable=False)
    secret_ref = models.CharField(max_length=16, blank=True)
    state = models.CharField(max_length=16, choices=StreamState.choices, default=StreamState.ACTIVE)
    cursor = models.BigIntegerField(default=0)
    failures = models.PositiveIntegerField(default=0)
    failing_since = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_delivered_at = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    changed_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.get_kind_display()} to {self.address} ({self.state})"

    @property
    def address(self) -> str:
        if self.kind == StreamKind.WEBHOOK:
            return self.url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def is_paused(self) -> bool:
        return self.state == StreamState.PAUSED
