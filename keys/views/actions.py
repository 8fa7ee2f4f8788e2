"""Key lifecycle actions, declared once each.

Every action here has the same shape: a POST behind the tenant permission and
recent re-authentication, one service called with the tenant and the acting
person (with their role), its refusal audited and shown, then back to the Keys
page. One click is one audit event: the service records what it did, and a
refusal is recorded here, once. One row of `ACTIONS` is one action;
`urlpatterns` and the views are built from the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import get_object_or_404, redirect
from django.urls import URLPattern, path
from django.views.decorators.http import require_POST

from keys.errors import KeyActionRefused
from keys.models import KeySource
from keys.services.lifecycle import (
    tenant_cancel_destroy,
    tenant_remove_byok,
    tenant_restore,
    tenant_revoke,
    tenant_schedule_destroy,
)
from keys.services.rotation import (
    kek_confirm_rotation,
    kek_reject_rotation,
    kek_rotate_now,
    kek_switch_source,
)
from keys.views.common import refused
from tenants.display import Act, state_refusal
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.sudo import sudo_required


@dataclass(frozen=True)
class LifecycleAction:
    name: str  # the URL name, in the `keys` namespace
    route: str
    perm: Perm
    # The audit action a refusal is recorded under.
    audit: str
    service: Callable[..., Any]
    # What the person is told on success: a text, a text made from the service's
    # result, or None when the service returns the text itself.
    message: str | Callable[[Any], str] | None = None
    # The service keyword that gets the typed confirmation (POST "confirm").
    confirm: str | None = None
    # The URL names a key source of the tenant (`source_id`), passed as `source`.
    with_source: bool = False
    # What the tenant-state table calls it (tenants/display.py): refused in a
    # state that does not allow it, with the table's message.
    act: Act = field(kw_only=True)

    def success(self, result: Any) -> str:
        if self.message is None:
            return str(result)
        if isinstance(self.message, str):
            return self.message
        return self.message(result)


ACTIONS = (
    LifecycleAction(
        "rotation_confirm",
        "rotation/confirm/",
        Perm.MANAGE_KEYS,
        "kek.confirm_rotation",
        kek_confirm_rotation,
        act=Act.CONFIRM_ROTATION,
    ),
    LifecycleAction(
        "rotation_reject",
        "rotation/reject/",
        Perm.MANAGE_KEYS,
        "kek.reject_rotation",
        kek_reject_rotation,
        act=Act.CONFIRM_ROTATION,
    ),
    LifecycleAction(
        "revoke",
        "revoke/",
        Perm.MANAGE_KEYS,
        "key.revoke",
        tenant_revoke,
        "Revoked: Keyward can no longer decrypt this tenant's data.",
        confirm="confirm",
        act=Act.REVOKE,
    ),
    LifecycleAction(
        "restore",
        "restore/",
        Perm.MANAGE_KEYS,
        "key.restore",
        tenant_restore,
        "Restored: the key passed its checks and the service runs again.",
        act=Act.RESTORE,
    ),
    LifecycleAction(
        "destroy",
        "destroy/",
        Perm.DESTROY_KEYS,
        "key.destroy_scheduled",
        tenant_schedule_destroy,
        lambda when: f"The keys will be destroyed on {when:%Y-%m-%d %H:%M} UTC unless you cancel.",
        confirm="confirm",
        act=Act.DESTROY,
    ),
    LifecycleAction(
        "cancel_destroy",
        "destroy/cancel/",
        Perm.DESTROY_KEYS,
        "key.destroy_cancelled",
        tenant_cancel_destroy,
        "The destruction was cancelled.",
        act=Act.DESTROY,
    ),
    LifecycleAction(
        "remove_byok",
        "remove/",
        Perm.REMOVE_BYOK,
        "byok.remove",
        tenant_remove_byok,
        "Moving your data keys back to the vendor-managed key.",
        act=Act.REMOVE_BYOK,
    ),
    LifecycleAction(
        "rotate_kek",
        "rotate-key/",
        Perm.MANAGE_KEYS,
        "kek.rotate_now",
        kek_rotate_now,
        act=Act.ROTATE_KEK,
    ),
    LifecycleAction(
        "switch_source",
        "sources/<uuid:source_id>/switch/",
        Perm.MANAGE_KEYS,
        "kek.switch_source",
        kek_switch_source,
        with_source=True,
        act=Act.SWITCH_SOURCE,
    ),
)


def lifecycle_view(action: LifecycleAction) -> Callable[..., HttpResponseBase]:
    """The view of one action, behind login, POST only, the permission and sudo mode."""

    def view(request: HttpRequest, access: TenantAccess, **url: Any) -> HttpResponse:
        arguments: dict[str, Any] = {
            "tenant": access.tenant,
            "actor": access.actor(request.user),
            "request": request,
        }
        if action.with_source:
            arguments["source"] = get_object_or_404(
                KeySource, pk=url["source_id"], tenant=access.tenant
            )
        if action.confirm is not None:
            arguments[action.confirm] = request.POST.get("confirm", "")
        # After the source lookup: another tenant's source is a 404 in any state.
        not_now = state_refusal(access.tenant, action.act)
        if not_now is not None:
            refused(request, access, action.audit, not_now)
            return redirect("keys:overview", slug=access.tenant.slug)
        try:
            result = action.service(**arguments)
        except KeyActionRefused as exc:
            # The services record what they did, never a refusal: this is its one event.
            refused(request, access, action.audit, str(exc), exc.details)
        else:
            messages.success(request, action.success(result))
        return redirect("keys:overview", slug=access.tenant.slug)

    view.__name__ = view.__qualname__ = action.name
    return login_required(require_POST(with_tenant(action.perm)(sudo_required(view))))


urlpatterns: list[URLPattern] = [
    path(action.route, lifecycle_view(action), name=action.name) for action in ACTIONS
]
