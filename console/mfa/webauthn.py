"""Security keys and passkeys (WebAuthn), verified with py_webauthn.

The browser gets options made here (a fresh challenge kept in the session) and
sends back what the authenticator signed; only a credential's id, public key
and signature counter are kept.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.cache import cache
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from console.mfa.models import Factor, FactorKind
from console.mfa.services import (
    FactorRefused,
    Refusal,
    attempts_key,
    audit_event,
    check_not_locked,
    issue_recovery_codes,
    recovery_codes_left,
    refuse,
)

_REGISTRATION_KEY = "keyward_webauthn_registration"
_AUTHENTICATION_KEY = "keyward_webauthn_authentication"


def rp_id(request: HttpRequest) -> str:
    """The relying party: the setting, or the page's host (browsers refuse an
    IP address as RP id: reach the console by name, `localhost` included)."""
    return settings.KEYWARD_WEBAUTHN_RP_ID or request.get_host().rsplit(":", 1)[0].strip("[]")


def _origin(request: HttpRequest) -> str:
    return f"{request.scheme}://{request.get_host()}"


def _credentials(user: AbstractBaseUser) -> list[Factor]:
    return list(Factor.objects.filter(user_id=user.pk, confirmed=True, kind=FactorKind.WEBAUTHN))


def has_security_key(user: AbstractBaseUser) -> bool:
    return Factor.objects.filter(user_id=user.pk, confirmed=True, kind=FactorKind.WEBAUTHN).exists()


def registration_options(request: HttpRequest, user: AbstractBaseUser) -> dict[str, Any]:
    options = generate_registration_options(
        rp_id=rp_id(request),
        rp_name=settings.KEYWARD_WEBAUTHN_RP_NAME,
        user_name=user.get_username(),
        user_id=str(user.pk).encode(),
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
        exclude_credentials=[
            PublicKeyCredentialDescriptor(id=bytes(f.credential_id or b""))
            for f in _credentials(user)
        ],
    )
    request.session[_REGISTRATION_KEY] = options.challenge.hex()
    return _as_json_object(options_to_json(options))


def authentication_options(request: HttpRequest, user: AbstractBaseUser) -> dict[str, Any]:
    options = generate_authentication_options(
        rp_id=rp_id(request),
        allow_credentials=[
            PublicKeyCredentialDescriptor(id=bytes(f.credential_id or b""))
            for f in _credentials(user)
        ],
        user_verification=UserVerificationRequirement.PREFERRED,
    )
    request.session[_AUTHENTICATION_KEY] = options.challenge.hex()
    return _as_json_object(options_to_json(options))


def _as_json_object(text: str) -> dict[str, Any]:
    # For the page's json_script element, which encodes it once.
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


def _challenge(request: HttpRequest, key: str) -> bytes | None:
    # A challenge answers once: taken out of the session whatever the outcome.
    stored = request.session.pop(key, None)
    return bytes.fromhex(stored) if isinstance(stored, str) else None


def webauthn_register(
    *, request: HttpRequest, user: AbstractBaseUser, credential: str, name: str
) -> tuple[Factor, list[str]]:
    """Register the security key the browser just created; recovery codes if
    the person had none (shown once)."""
    check_not_locked(user, request)
    challenge = _challenge(request, _REGISTRATION_KEY)
    if challenge is None:
        raise FactorRefused("This set-up has expired. Try again.")
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id(request),
            expected_origin=_origin(request),
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        raise refuse(
            user,
            Refusal(
                action="mfa.enrol",
                reason=f"security key not registered: {str(exc)[:200]}",
                message="The security key's answer could not be verified. Try again.",
                details={"kind": FactorKind.WEBAUTHN},
            ),
            request,
        ) from None
    return _save_credential(request, user, verified, name)


@transaction.atomic
def _save_credential(
    request: HttpRequest, user: AbstractBaseUser, verified: Any, name: str
) -> tuple[Factor, list[str]]:
    if Factor.objects.filter(credential_id=verified.credential_id).exists():
        raise FactorRefused("This security key is registered already.")
    factor = Factor.objects.create(
        user_id=user.pk,
        kind=FactorKind.WEBAUTHN,
        name=(name.strip() or "Security key")[:100],
        confirmed=True,
        credential_id=verified.credential_id,
        public_key=verified.credential_public_key,
        sign_count=verified.sign_count,
        last_used_at=timezone.now(),
    )
    cache.delete(attempts_key(user))
    audit_event(
        user,
        "mfa.enrol",
        details={"kind": FactorKind.WEBAUTHN, "factor": str(factor.pk)},
        request=request,
    )
    codes = [] if recovery_codes_left(user) else issue_recovery_codes(user)
    return factor, codes


def webauthn_verify(
    *, request: HttpRequest, user: AbstractBaseUser, assertion: str, purpose: str
) -> None:
    """Accept the person's security key's signature of the challenge in the session."""
    check_not_locked(user, request)
    challenge = _challenge(request, _AUTHENTICATION_KEY)
    outcome = _verify(request, user, assertion, challenge, purpose)
    if outcome is not None:
        raise refuse(user, outcome, request)


@transaction.atomic
def _verify(
    request: HttpRequest,
    user: AbstractBaseUser,
    assertion: str,
    challenge: bytes | None,
    purpose: str,
) -> Refusal | None:
    details = {"kind": FactorKind.WEBAUTHN, "for": purpose}
    try:
        raw_id = base64url_to_bytes(str(json.loads(assertion)["rawId"]))
    except (ValueError, KeyError, TypeError):
        raw_id = b""
    factor = (
        Factor.objects.select_for_update()
        .filter(user_id=user.pk, confirmed=True, kind=FactorKind.WEBAUTHN, credential_id=raw_id)
        .first()
        if raw_id
        else None
    )
    if factor is None:
        return Refusal(
            action="auth.second_factor",
            reason="security key not registered to this person",
            message="This security key is not registered to your account.",
            details=details,
        )
    if challenge is None:
        return Refusal(
            action="auth.second_factor",
            reason="security key answer without a challenge",
            message="This request has expired. Try your security key again.",
            details=details,
        )
    try:
        verified = verify_authentication_response(
            credential=assertion,
            expected_challenge=challenge,
            expected_rp_id=rp_id(request),
            expected_origin=_origin(request),
            credential_public_key=bytes(factor.public_key or b""),
            credential_current_sign_count=factor.sign_count,
        )
    except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
        return Refusal(
            action="auth.second_factor",
            reason=f"security key answer not valid: {str(exc)[:200]}",
            message="The security key's answer could not be verified. Try again.",
            details=details,
        )
    factor.sign_count = verified.new_sign_count
    factor.last_used_at = timezone.now()
    factor.save(update_fields=["sign_count", "last_used_at"])
    cache.delete(attempts_key(user))
    audit_event(user, "auth.second_factor", details=details, request=request)
    return None
