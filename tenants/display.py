"""What each tenant state shows and allows: the one table pages and views read.

Beside the state machine (tenants/states.py says how a state changes; this
says what it means to the people watching). For each of the nine states:
the badge, the banner (severity, text, the action it links to) and the
actions the console offers. A page shows an action only if the table allows
it in the tenant's state, and the server refuses any other with the same
message (`state_refusal`), so a page and the server never disagree.

Actions are named here, not imported from the apps that carry them out:
tenants sits below them, and the URL a banner links to is a URL name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import wraps
from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponseBase
from django.shortcuts import redirect

from audit.models import Outcome
from audit.services import record
from tenants.models import ServiceState, Tenant

S = ServiceState


class Act(StrEnum):
    """The state-dependent actions of the console."""

    BRING_KEY = "bring_key"  # register a key of one's own and test it (or its settings again)
    ENABLE = "enable"  # move the data keys under a tested key of one's own
    UPLOAD_VERSION = "upload_version"  # upload a key (a new version of an uploaded key)
    CONFIRM_ROTATION = "confirm_rotation"  # confirm or reject a new key version
    ROTATE_KEK = "rotate_kek"  # new key material in the key store now (AWS KMS)
    SWITCH_SOURCE = "switch_source"  # move the data keys to another registered key
    REVOKE = "revoke"
    RESTORE = "restore"
    DESTROY = "destroy"  # schedule the destruction, or cancel it
    REMOVE_BYOK = "remove_byok"  # back to the vendor-managed key
    ROTATE_DEK = "rotate_dek"
    REENCRYPT = "reencrypt"  # re-encrypt data under older data keys
    ROTATE_LOOKUP_KEY = "rotate_lookup_key"
    SET_CACHE_TTL = "set_cache_ttl"
    RETRY_MOVE = "retry_move"  # start a failed object move again


@dataclass(frozen=True)
class BannerLink:
    url_name: str  # reversed with the tenant's slug
    label: str
    act: Act  # shown only to those allowed to do it


@dataclass(frozen=True)
class Banner:
    level: str  # "info", "warning" or "danger"
    title: str
    text: str
    link: BannerLink | None = None


@dataclass(frozen=True)
class StateDisplay:
    state: str
    tone: str  # "ok", "warning" or "danger": how the badge looks
    banner: Banner | None
    allows: frozenset[Act]
    # Something is moving: pages follow it closely (see console's live region).
    moving: bool = False
    # What the key-encryption-key table says of the versions in use, when the
    # state overrides what the versions themselves say (revoked, destroyed).
    kek_versions_state: str | None = None

    @property
    def badge(self) -> str:
        """The words of the state badge: the state's own label (its CSS class is the state)."""
        return str(ServiceState(self.state).label)


_EVERYDAY = frozenset({Act.ROTATE_DEK, Act.REENCRYPT, Act.ROTATE_LOOKUP_KEY, Act.SET_CACHE_TTL})
_REVIEW = BannerLink("keys:rotation", "Review and confirm", Act.CONFIRM_ROTATION)
_RESTORE = BannerLink("keys:overview", "Restore access", Act.RESTORE)

_TABLE: tuple[StateDisplay, ...] = (
    StateDisplay(
        S.VENDOR_MANAGED,
        "ok",
        None,
        _EVERYDAY | {Act.BRING_KEY, Act.ENABLE, Act.UPLOAD_VERSION},
    ),
    StateDisplay(
        S.MIGRATING,
        "warning",
        Banner(
            "warning",
            "Moving your data to your key",
            "New data is held until the move finishes; reads serve data stored before it began.",
        ),
        frozenset({Act.SET_CACHE_TTL, Act.RETRY_MOVE}),
        moving=True,
    ),
    StateDisplay(
        S.BYOK_ACTIVE,
        "ok",
        None,
        _EVERYDAY
        | {
            Act.BRING_KEY,
            Act.UPLOAD_VERSION,
            Act.ROTATE_KEK,
            Act.SWITCH_SOURCE,
            Act.REVOKE,
            Act.REMOVE_BYOK,
        },
    ),
    StateDisplay(
        S.ROTATION_PENDING,
        "warning",
        Banner(
            "warning",
            "Service paused: a key rotation needs your confirmation",
            "A new version of your key is waiting. New data is held until an "
            "administrator reviews and confirms it (or rejects it).",
            _REVIEW,
        ),
        frozenset({Act.CONFIRM_ROTATION, Act.REVOKE, Act.SET_CACHE_TTL}),
    ),
    StateDisplay(
        S.REWRAPPING,
        "warning",
        Banner(
            "info",
            "Rewrapping data keys",
            "Your data keys are being wrapped under the confirmed key version; new data "
            "is held until it finishes.",
        ),
        frozenset({Act.REVOKE, Act.SET_CACHE_TTL}),
        moving=True,
    ),
    StateDisplay(
        S.DEGRADED,
        "warning",
        Banner(
            "warning",
            "Key store unreachable",
            "Keyward cannot reach your key store. Cached keys keep serving for a while; "
            "service recovers by itself when the key store answers again.",
        ),
        frozenset(
            {Act.BRING_KEY, Act.UPLOAD_VERSION, Act.REVOKE, Act.REMOVE_BYOK, Act.SET_CACHE_TTL}
        ),
    ),
    StateDisplay(
        S.REVOKED,
        "danger",
        Banner(
            "danger",
            "Key revoked: your data is unreadable",
            "Keyward cannot decrypt this tenant's data. Make the key usable again, then restore.",
            _RESTORE,
        ),
        # Restoring may need the key's settings fixed, or the same key uploaded again.
        frozenset({Act.RESTORE, Act.DESTROY, Act.BRING_KEY, Act.UPLOAD_VERSION}),
        kek_versions_state="Revoked",
    ),
    StateDisplay(
        S.MIGRATING_BACK,
        "warning",
        Banner(
            "warning",
            "Moving your data back to the vendor-managed key",
            "New data is held until the move finishes.",
        ),
        frozenset({Act.RETRY_MOVE}),
        moving=True,
    ),
    StateDisplay(
        S.DESTROYED,
        "danger",
        Banner(
            "danger",
            "Keys destroyed",
            "This tenant's keys were destroyed; its data can never be decrypted again.",
        ),
        frozenset(),
        kek_versions_state="Destroyed",
    ),
)

STATE_DISPLAY: dict[str, StateDisplay] = {row.state: row for row in _TABLE}

_ACT_WORDS: dict[Act, str] = {
    Act.BRING_KEY: "Saving and testing a key of your own",
    Act.ENABLE: "Enabling a key of your own",
    Act.UPLOAD_VERSION: "Uploading a key",
    Act.CONFIRM_ROTATION: "Confirming or rejecting a key rotation",
    Act.ROTATE_KEK: "Rotating your key's material",
    Act.SWITCH_SOURCE: "Switching to another key",
    Act.REVOKE: "Revoking",
    Act.RESTORE: "Restoring",
    Act.DESTROY: "Destroying the keys",
    Act.REMOVE_BYOK: "Going back to the vendor-managed key",
    Act.ROTATE_DEK: "Rotating the data key",
    Act.REENCRYPT: "Re-encrypting older data",
    Act.ROTATE_LOOKUP_KEY: "Rotating the lookup key",
    Act.SET_CACHE_TTL: "Changing the key cache lifetime",
    Act.RETRY_MOVE: "Moving the objects again",
}


def display_of(tenant: Tenant) -> StateDisplay:
    return STATE_DISPLAY[tenant.state]


def state_allows(tenant: Tenant, act: Act) -> bool:
    return act in STATE_DISPLAY[tenant.state].allows


def state_refusal(tenant: Tenant, act: Act) -> str | None:
    """The message for an action the tenant's state does not allow, None when it does."""
    row = STATE_DISPLAY[tenant.state]
    if act in row.allows:
        return None
    return f"{_ACT_WORDS[act]} is not available while the tenant's state is “{row.badge}”."


def allowed_acts(tenant: Tenant) -> frozenset[str]:
    """The allowed actions' names, for templates (`'revoke' in allowed`)."""
    return frozenset(str(act) for act in STATE_DISPLAY[tenant.state].allows)


View = Callable[..., HttpResponseBase]


def state_permits(act: Act, *, audit: str, back: str = "keys:overview") -> Callable[[View], View]:
    """Refuse the view when the tenant's state does not allow `act`: one audit event
    (`audit`, failure) and the table's message, then back to the page `back` names.

    Goes below `with_tenant` (it needs the access) and `sudo_required`.
    """

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, access: Any, *args: Any, **kwargs: Any) -> Any:
            message = state_refusal(access.tenant, act)
            if message is None:
                return view(request, access, *args, **kwargs)
            record(
                tenant=access.tenant,
                actor=access.actor(request.user),
                action=audit,
                outcome=Outcome.FAILURE,
                reason=message,
                request=request,
            )
            messages.error(request, message)
            return redirect(back, slug=access.tenant.slug)

        return wrapper

    return decorator
