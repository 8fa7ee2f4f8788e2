from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class FactorKind(models.TextChoices):
    TOTP = "totp", "Authenticator app"
    WEBAUTHN = "webauthn", "Security key or passkey"


class Factor(models.Model):
    """One second factor of one person.

    A TOTP seed is kept only sealed under the vendor root key, bound to this
    row; a WebAuthn credential is a public key, which is no secret.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="second_factors"
    )
    kind = models.CharField(max_length=16, choices=FactorKind.choices)
    name = models.CharField(max_length=100)
    # Enrolment ends when the person proves the factor works; until then it is
    # not a factor (and its seed may still be shown).
    confirmed = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # TOTP: the sealed seed, and the last time step accepted (a code is good once).
    sealed_secret = models.BinaryField(null=True, blank=True, editable=False)
    last_step = models.BigIntegerField(null=True, blank=True)
    # WebAuthn: the credential and its signature counter.
    credential_id = models.BinaryField(null=True, blank=True, editable=False)
    public_key = models.BinaryField(null=True, blank=True, editable=False)
    sign_count = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["created"]
        constraints = [
            models.UniqueConstraint(
                fields=["credential_id"],
                condition=models.Q(credential_id__isnull=False),
                name="factor_credential_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.name}"


class RecoveryCode(models.Model):
    """A one-time code for when the factors are lost; only its keyed hash is kept."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="recovery_codes"
    )
    digest = models.CharField(max_length=64)
    created = models.DateTimeField(auto_now_add=True)
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created", "id"]

    def __str__(self) -> str:
        return f"recovery code {'used' if self.used_at else 'unused'}"
