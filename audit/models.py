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
