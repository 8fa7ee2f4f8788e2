"""API token services: create (the secret is returned once), revoke, authenticate."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone

from api.models import ApiToken, Scope
from audit.models import ActorKind
from audit.services import Actor, record
from tenants.models import Tenant

TOKEN_PREFIX = "kw"  # noqa: S105 (the public marker of a Keyward token)
_TOKEN = re.compile(r"^kw_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")
LAST_USED_RESOLUTION = timedelta(minutes=1)
# Compared against when the prefix is unknown, so that both paths hash and compare.
_DUMMY_HASH = hashlib.sha256(b"keyward: no such token").digest()


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    text: str  # `kw_<prefix>_<secret>`: shown once, never stored

    def __repr__(self) -> str:
        return f"IssuedToken({self.token!r}, <secret>)"


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def token_actor(token: ApiToken) -> Actor:
    return Actor(ActorKind.API, str(token.pk), f"API token {token.name} (kw_{token.prefix})")


def _validate(name: str, scopes: list[str], expires_at: datetime | None) -> None:
    errors: dict[str, Any] = {}
    if not name.strip() or len(name) > 100:
        errors["name"] = "Give the token a name of 1 to 100 characters."
    unknown = sorted(set(scopes) - set(Scope.values))
    if unknown or not scopes:
        errors["scopes"] = "Choose at least one scope." if not unknown else f"Unknown: {unknown}"
    if expires_at is not None and expires_at <= timezone.now():
        errors["expires_at"] = "The expiry must be in the future."
    if errors:
        raise ValidationError(errors)


@transaction.atomic
def api_token_create(
    *,
    tenant: Tenant,
    actor: Actor,
    name: str,
    scopes: list[str],
    expires_at: datetime | None = None,
    created_by: Any = None,
    request: HttpRequest | None = None,
) -> IssuedToken:
    _validate(name, scopes, expires_at)
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)  # 256 bits, 43 characters
    token = ApiToken.objects.create(
        tenant=tenant,
        name=name.strip(),
        prefix=prefix,
        secret_sha256=_hash(secret),
        scopes=sorted(set(scopes)),
        expires_at=expires_at,
        created_by=created_by,
    )
    record(
        tenant=tenant,
        actor=actor,
        action="api_token.create",
        target=f"{token.name} (kw_{prefix})",
        details={
            "token": str(token.pk),
            "scopes": token.scopes,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
        request=request,
    )
    return IssuedToken(token, f"{TOKEN_PREFIX}_{prefix}_{secret}")


@transaction.atomic
def api_token_revoke(
    *, tenant: Tenant, token: ApiToken, actor: Actor, request: HttpRequest | None = None
) -> ApiToken:
    locked = ApiToken.objects.select_for_update().get(pk=token.pk, tenant=tenant)
    if locked.revoked_at is not None:
        return locked
    locked.revoked_at = timezone.now()
    locked.save(update_fields=["revoked_at"])
    record(
        tenant=tenant,
        actor=actor,
        action="api_token.revoke",
        target=f"{locked.name} (kw_{locked.prefix})",
        details={"token": str(locked.pk)},
        request=request,
    )
    return locked


def api_token_authenticate(text: str) -> ApiToken | None:
    """The usable token `text` names, or None (for every reason alike)."""
    match = _TOKEN.match(text)
    if match is None:
        return None
    prefix, secret = match.groups()
    # The prefix is unique: no ORDER BY (first() would add one, for nothing).
    found = list(ApiToken.objects.select_related("tenant").filter(prefix=prefix)[:1])
    token = found[0] if found else None
    stored = bytes(token.secret_sha256) if token is not None else _DUMMY_HASH
    if not hmac.compare_digest(stored, _hash(secret)) or token is None:
        return None
    now = timezone.now()
    if not token.is_usable(now):
        return None
    _touch(token, now)
    return token


def _touch(token: ApiToken, now: datetime) -> None:
    """Record use at most once a minute per token, not a write per request."""
    if token.last_used_at is not None and now - token.last_used_at < LAST_USED_RESOLUTION:
        return
    cutoff = now - LAST_USED_RESOLUTION
    ApiToken.objects.filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lt=cutoff), pk=token.pk
    ).update(last_used_at=now)
    token.last_used_at = now
