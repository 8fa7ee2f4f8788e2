"""Enrol, use and remove second factors; every change and every failure audited.

A person's sign-in events go to each tenant they belong to (vendor staff to
the vendor chain), like the other sign-in events (tenants/signals.py).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import pyotp
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone

from audit.models import Outcome
from audit.services import Actor, record_for_tenants
from console.mfa.models import Factor, FactorKind, RecoveryCode
from keys.rootkey import local_provider
from keys.vault import packed, reseal, seal, unpacked, unseal
from tenants.models import Tenant

TOTP_PURPOSE = "second_factor.totp"
RECOVERY_CODES = 10
# 16 base32 characters: 80 bits, out of reach of guessing a stored digest back.
RECOVERY_CODE_CHARS = 16
_BASE32 = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no I, O, 0, 1: read aloud, typed from paper
TOTP_DIGITS = 6
TOTP_PERIOD = 30


class FactorRefused(Exception):
    """A code or assertion that was not accepted; the message is for the person."""


@dataclass(frozen=True)
class Refusal:
    """A refusal found inside a transaction, recorded after it (a raised
    exception would roll the failure's audit event back with everything else)."""

    action: str
    reason: str
    message: str
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class TotpEnrolment:
    factor: Factor
    secret: str  # base32, shown once, while the factor is not confirmed
    uri: str


def tenants_of(user: AbstractBaseUser) -> list[Tenant | None]:
    found: list[Tenant | None] = list(Tenant.objects.filter(memberships__user_id=user.pk))
    return found or [None]


def actor_of(user: AbstractBaseUser) -> Actor:
    return Actor.for_user(user, support=bool(getattr(user, "is_staff", False)))


def audit_event(
    user: AbstractBaseUser,
    action: str,
    *,
    outcome: str = Outcome.SUCCESS,
    reason: str = "",
    target: str = "",
    details: dict[str, Any] | None = None,
    request: HttpRequest | None = None,
    actor: Actor | None = None,
) -> None:
    record_for_tenants(
        tenants_of(user),
        actor=actor or actor_of(user),
        action=action,
        outcome=outcome,
        reason=reason,
        target=target or user.get_username(),
        details=details,
        request=request,
    )


# --- Reads --------------------------------------------------------------------


def factors_of(user: AbstractBaseUser) -> list[Factor]:
    return list(Factor.objects.filter(user_id=user.pk, confirmed=True))


def has_factor(user: Any) -> bool:
    if not getattr(user, "is_authenticated", False):
        return False
    return Factor.objects.filter(user_id=user.pk, confirmed=True).exists()


def must_have_factor(user: Any) -> bool:
    """Vendor staff and superusers sign in with a second factor, always."""
    return bool(getattr(user, "is_staff", False) or getattr(user, "is_superuser", False))


def recovery_codes_left(user: AbstractBaseUser) -> int:
    return RecoveryCode.objects.filter(user_id=user.pk, used_at=None).count()


# --- Attempts -------------------------------------------------------------------


def attempts_key(user: AbstractBaseUser) -> str:
    return f"keyward:second-factor-failures:{user.pk}"


def _cooloff_seconds() -> int:
    return int(settings.AXES_COOLOFF_TIME.total_seconds())


def attempts_locked(user: AbstractBaseUser) -> bool:
    return int(cache.get(attempts_key(user), 0)) >= settings.AXES_FAILURE_LIMIT


def _count_failure(user: AbstractBaseUser) -> None:
    key = attempts_key(user)
    if cache.add(key, 1, timeout=_cooloff_seconds()):
        return
    try:
        cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=_cooloff_seconds())


def refuse(user: AbstractBaseUser, refusal: Refusal, request: HttpRequest | None) -> FactorRefused:
    _count_failure(user)
    audit_event(
        user,
        refusal.action,
        outcome=Outcome.FAILURE,
        reason=refusal.reason,
        details=refusal.details,
        request=request,
    )
    return FactorRefused(refusal.message)


def check_not_locked(user: AbstractBaseUser, request: HttpRequest | None) -> None:
    if attempts_locked(user):
        minutes = max(1, _cooloff_seconds() // 60)
        audit_event(
            user,
            "auth.second_factor",
            outcome=Outcome.DENIED,
            reason="too many wrong second-factor codes; locked for a while",
            request=request,
        )
        raise FactorRefused(f"Too many wrong codes. Wait {minutes} minutes before you try again.")


# --- TOTP -----------------------------------------------------------------------


def _seed(factor: Factor) -> str:
    stored = bytes(factor.sealed_secret or b"")
    return unseal(purpose=TOTP_PURPOSE, owner=str(factor.pk), sealed=unpacked(stored)).decode()


@transaction.atomic
def totp_begin(*, user: AbstractBaseUser) -> TotpEnrolment:
    """A new, unconfirmed TOTP factor; any earlier unconfirmed one is dropped."""
    Factor.objects.filter(user_id=user.pk, confirmed=False).delete()
    factor = Factor(user_id=user.pk, kind=FactorKind.TOTP, name="Authenticator app")
    secret = pyotp.random_base32(length=32)
    factor.sealed_secret = packed(
        seal(purpose=TOTP_PURPOSE, owner=str(factor.pk), value=secret.encode())
    )
    factor.save()
    return TotpEnrolment(factor=factor, secret=secret, uri=totp_uri(user, secret))


def totp_uri(user: AbstractBaseUser, secret: str) -> str:
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD).provisioning_uri(
        name=user.get_username(), issuer_name=settings.KEYWARD_TOTP_ISSUER
    )


def totp_pending(user: AbstractBaseUser, factor_id: str) -> TotpEnrolment | None:
    """The unconfirmed enrolment the page showed, to show it again after a wrong code."""
    factor = Factor.objects.filter(
        pk=factor_id, user_id=user.pk, confirmed=False, kind=FactorKind.TOTP
    ).first()
    if factor is None:
        return None
    secret = _seed(factor)
    return TotpEnrolment(factor=factor, secret=secret, uri=totp_uri(user, secret))


def _matching_step(secret: str, code: str) -> int | None:
    """The time step (of now, one before or one after) whose code `code` is."""
    code = "".join(code.split())
    if len(code) != TOTP_DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD)
    now = int(time.time()) // TOTP_PERIOD
    found = None
    for step in (now - 1, now, now + 1):
        # Every candidate is compared, so the time taken says nothing of which matched.
        if hmac.compare_digest(totp.at(step * TOTP_PERIOD), code):
            found = step
    return found


def totp_confirm(
    *, user: AbstractBaseUser, factor_id: str, code: str, request: HttpRequest | None = None
) -> tuple[Factor, list[str]]:
    """Make the pending factor a factor once a code from it is right.

    Returns the factor and, when the person had no recovery codes left, a new
    set (shown once).
    """
    check_not_locked(user, request)
    outcome = _totp_confirm(user, factor_id, code, request)
    if isinstance(outcome, Refusal):
        raise refuse(user, outcome, request)
    return outcome


@transaction.atomic
def _totp_confirm(
    user: AbstractBaseUser, factor_id: str, code: str, request: HttpRequest | None
) -> tuple[Factor, list[str]] | Refusal:
    factor = (
        Factor.objects.select_for_update()
        .filter(pk=factor_id, user_id=user.pk, confirmed=False, kind=FactorKind.TOTP)
        .first()
    )
    if factor is None:
        raise FactorRefused("This set-up has expired. Start again with the new code below.")
    step = _matching_step(_seed(factor), code)
    if step is None:
        return Refusal(
            action="mfa.enrol",
            reason="wrong authenticator code while setting up",
            message="That code is not right. Check the time on your device and try again.",
            details={"kind": FactorKind.TOTP},
        )
    factor.confirmed = True
    factor.last_step = step
    factor.last_used_at = timezone.now()
    factor.save(update_fields=["confirmed", "last_step", "last_used_at"])
    cache.delete(attempts_key(user))
    audit_event(
        user,
        "mfa.enrol",
        details={"kind": FactorKind.TOTP, "factor": str(factor.pk)},
        request=request,
    )
    codes = [] if recovery_codes_left(user) else issue_recovery_codes(user)
    return factor, codes


def totp_seeds_reseal() -> int:
    """Seal every TOTP seed under an older root key version again, under the
    current one (the root key rotation's rewrap), one row at a time."""
    prefix = local_provider().current_version().encode() + b"\0"
    moved = 0
    for factor_id in Factor.objects.exclude(sealed_secret=None).values_list("pk", flat=True):
        with transaction.atomic():
            factor = Factor.objects.select_for_update().filter(pk=factor_id).first()
            stored = bytes(factor.sealed_secret or b"") if factor else b""
            if factor is None or not stored or stored.startswith(prefix):
                continue
            sealed = reseal(purpose=TOTP_PURPOSE, owner=str(factor.pk), sealed=unpacked(stored))
            if sealed is not None:
                factor.sealed_secret = packed(sealed)
                factor.save(update_fields=["sealed_secret"])
                moved += 1
    return moved


def totp_seeds_under(label: str) -> int:
    prefix = label.encode() + b"\0"
    return sum(
        1
        for stored in Factor.objects.exclude(sealed_secret=None).values_list(
            "sealed_secret", flat=True
        )
        if stored is not None and bytes(stored).startswith(prefix)
    )


# --- Recovery codes ---------------------------------------------------------------


def _normalized(code: str) -> str:
    return "".join(ch for ch in code.upper() if ch.isalnum())


def _digest(user_pk: Any, code: str) -> str:
    # Keyed (a database copy alone does not allow testing guesses) and bound to
    # the person (a digest copied to another person's row does not match).
    key = hashlib.sha256(f"keyward:recovery-code:{settings.SECRET_KEY}".encode()).digest()
    message = f"{user_pk}:{_normalized(code)}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def issue_recovery_codes(user: AbstractBaseUser) -> list[str]:
    RecoveryCode.objects.filter(user_id=user.pk).delete()
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(_BASE32) for _ in range(RECOVERY_CODE_CHARS))
        codes.append("-".join(raw[i : i + 4] for i in range(0, RECOVERY_CODE_CHARS, 4)))
    RecoveryCode.objects.bulk_create(
        RecoveryCode(user_id=user.pk, digest=_digest(user.pk, code)) for code in codes
    )
    return codes


@transaction.atomic
def recovery_codes_regenerate(
    *, user: AbstractBaseUser, request: HttpRequest | None = None
) -> list[str]:
    """A new set of codes, shown once; the old ones stop working."""
    codes = issue_recovery_codes(user)
    audit_event(user, "mfa.recovery_codes", details={"count": len(codes)}, request=request)
    return codes


# --- Verification ---------------------------------------------------------------


def second_factor_verify(
    *, user: AbstractBaseUser, code: str, request: HttpRequest | None = None, purpose: str
) -> str:
    """Accept a TOTP code or a recovery code; returns which it was ("totp" or
    "recovery code"). `purpose` says what for ("sign-in", "sudo"), for the trail.
    Raises FactorRefused with the reason for the person otherwise."""
    check_not_locked(user, request)
    cleaned = _normalized(code)
    if not cleaned:
        raise FactorRefused("Enter the code from your authenticator app or a recovery code.")
    if cleaned.isdigit() and len(cleaned) == TOTP_DIGITS:
        outcome = _verify_totp(user, cleaned, request=request, purpose=purpose)
    else:
        outcome = _verify_recovery_code(user, cleaned, request=request, purpose=purpose)
    if isinstance(outcome, Refusal):
        raise refuse(user, outcome, request)
    return outcome


@transaction.atomic
def _verify_totp(
    user: AbstractBaseUser, code: str, *, request: HttpRequest | None, purpose: str
) -> str | Refusal:
    factors = list(
        Factor.objects.select_for_update().filter(
            user_id=user.pk, confirmed=True, kind=FactorKind.TOTP
        )
    )
    for factor in factors:
        step = _matching_step(_seed(factor), code)
        if step is None:
            continue
        if factor.last_step is not None and step <= factor.last_step:
            return Refusal(
                action="auth.second_factor",
                reason="authenticator code used again",
                message="That code was used already. Wait for the next code and enter it.",
                details={"kind": FactorKind.TOTP, "for": purpose},
            )
        factor.last_step = step
        factor.last_used_at = timezone.now()
        factor.save(update_fields=["last_step", "last_used_at"])
        cache.delete(attempts_key(user))
        audit_event(
            user,
            "auth.second_factor",
            details={"kind": FactorKind.TOTP, "for": purpose},
            request=request,
        )
        return "totp"
    return Refusal(
        action="auth.second_factor",
        reason="wrong authenticator code",
        message="That code is not right. Check the time on your device and try again.",
        details={"kind": FactorKind.TOTP, "for": purpose},
    )


@transaction.atomic
def _verify_recovery_code(
    user: AbstractBaseUser, code: str, *, request: HttpRequest | None, purpose: str
) -> str | Refusal:
    digest = _digest(user.pk, code)
    found = None
    for candidate in RecoveryCode.objects.select_for_update().filter(user_id=user.pk):
        if hmac.compare_digest(candidate.digest, digest):
            found = candidate
    if found is None or found.used_at is not None:
        used = found is not None
        return Refusal(
            action="auth.recovery_code",
            reason="recovery code used already" if used else "wrong recovery code",
            message=(
                "That recovery code was used already; each works once."
                if used
                else "That code is not right."
            ),
            details={"for": purpose},
        )
    found.used_at = timezone.now()
    found.save(update_fields=["used_at"])
    cache.delete(attempts_key(user))
    audit_event(
        user,
        "auth.recovery_code",
        details={"for": purpose, "left": recovery_codes_left(user)},
        request=request,
    )
    return "recovery code"


# --- Removal ----------------------------------------------------------------------


@transaction.atomic
def factor_remove(
    *, user: AbstractBaseUser, factor_id: str, request: HttpRequest | None = None
) -> Factor:
    factor = (
        Factor.objects.select_for_update()
        .filter(pk=factor_id, user_id=user.pk, confirmed=True)
        .first()
    )
    if factor is None:
        raise FactorRefused("That second factor is not yours or was removed already.")
    if (
        must_have_factor(user)
        and Factor.objects.filter(user_id=user.pk, confirmed=True).count() == 1
    ):
        raise FactorRefused(
            "Vendor staff must keep a second factor: add another one before removing this."
        )
    factor.delete()
    if not Factor.objects.filter(user_id=user.pk, confirmed=True).exists():
        RecoveryCode.objects.filter(user_id=user.pk).delete()
    audit_event(
        user,
        "mfa.remove",
        details={"kind": factor.kind, "factor": str(factor_id), "name": factor.name},
        request=request,
    )
    return factor


@transaction.atomic
def factors_reset(*, user: AbstractBaseUser, actor: Actor, reason: str) -> int:
    """Remove every factor and recovery code of a person who lost them (an operator's
    command); they enrol again at their next sign-in."""
    removed = Factor.objects.filter(user_id=user.pk, confirmed=True).count()
    Factor.objects.filter(user_id=user.pk).delete()
    RecoveryCode.objects.filter(user_id=user.pk).delete()
    audit_event(user, "mfa.reset", reason=reason, details={"factors": removed}, actor=actor)
    return removed
