"""The support console's pages and actions: vendor staff only, a 404 for anyone else.

Every action is one POST URL recorded in the tenant's audit trail with the
engineer as a support actor, which the customer sees on their Audit page. A
refusal is recorded too (failure), changes nothing and says why. Nothing here
changes, revokes, restores, destroys or removes a key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from audit.models import ActorKind, Outcome
from audit.services import Actor, record
from console.support.forms import TenantFilterForm
from console.support.selectors import (
    FAILED_CHECKS,
    SORTS,
    BadCursor,
    Listing,
    support_health_history,
    support_key_events,
    support_key_sources,
    support_moves,
    support_tenant,
    support_tenant_page,
)
from keys.errors import KeyActionRefused
from keys.models import SourceKind
from keys.selectors.usage import tenant_states_chart
from keys.services.health import key_health_check_request, rotation_remind
from objects.models import MigrationState
from objects.moves import objects_move_retry
from tenants.display import display_of
from tenants.models import ServiceState, Tenant
from tenants.services import AddonRefused, tenant_addon_disable, tenant_addon_enable
from tenants.staff import is_support_staff

View = Callable[..., HttpResponseBase]


def support_only(view: View) -> View:
    """Vendor staff only; everyone else (a tenant member, nobody signed in) gets a 404."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not is_support_staff(request.user):
            raise Http404
        return view(request, *args, **kwargs)

    return wrapper


def _query(params: dict[str, Any], **changes: Any) -> str:
    merged = {k: v for k, v in {**params, **changes}.items() if v not in ("", None, False)}
    return f"{reverse('support:list')}?{urlencode(merged)}" if merged else reverse("support:list")


@support_only
@require_GET
def tenant_list(request: HttpRequest) -> HttpResponse:
    """/support/: every tenant, filtered, searched, sorted, 50 at a time (keyset pages)."""
    form = TenantFilterForm(request.GET)
    context: dict[str, Any] = {"form": form, "rows": [], "sort": {}}
    status = 200
    if form.is_valid():
        listing = form.listing()
        try:
            page = support_tenant_page(listing, form.cleaned_data["after"] or None)
        except BadCursor as exc:
            form.add_error("after", str(exc))
            status = 400
        else:
            context.update(_list_context(form, listing, page.rows, page.next_cursor))
    else:
        status = 400
    if request.htmx:  # type: ignore[attr-defined]
        return render(request, "support/tenants.html#results", context, status=status)
    # The whole page adds the 30-day chart of tenants by state (one small query).
    context["states_chart"] = tenant_states_chart(timezone.now().date())
    return render(request, "support/tenants.html", context, status=status)


def _list_context(
    form: TenantFilterForm, listing: Listing, rows: list[Tenant], next_cursor: str | None
) -> dict[str, Any]:
    params = {
        "q": listing.q,
        "state": listing.state,
        "source": listing.source,
        "attention": "on" if listing.attention else "",
        "sort": listing.sort if listing.sort != "name" else "",
        "dir": "desc" if listing.descending else "",
    }
    sorts = {}
    for key, label in SORTS.items():
        current = key == listing.sort
        flip = "" if current and listing.descending else ("desc" if current else "")
        sorts[key] = {
            "key": key,
            "label": label,
            "url": _query(params, sort=key if key != "name" else "", dir=flip),
            "current": current,
            "descending": current and listing.descending,
        }
    return {
        "rows": [_row(tenant) for tenant in rows],
        "sort": sorts,
        "next_url": _query(params, after=next_cursor) if next_cursor else None,
        "first_url": _query(params) if form.cleaned_data["after"] else None,
    }


@dataclass(frozen=True)
class Row:
    """One line of the list, formatted once here: a template resolving fifty model
    instances' attributes through filters costs more than the page's query."""

    name: str
    slug: str
    url: str
    state: str
    badge: str
    warn: bool
    since: str
    source: str
    source_where: str
    check_result: str
    check_failed: bool
    check_at: str
    attention: list[str]
    addon: bool
    records: int
    objects: int
    activity: str


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if moment else ""


def _row(tenant: Any) -> Row:
    display = display_of(tenant)
    since = _when(tenant.state_changed_at)
    attention = []
    if tenant.state == ServiceState.ROTATION_PENDING:
        attention.append(f"Rotation pending since {since}")
    if tenant.state == ServiceState.DEGRADED:
        attention.append(f"Degraded since {since}")
    if tenant.check_result in FAILED_CHECKS:
        attention.append("Last health check failed")
    if tenant.move_state == MigrationState.FAILED:
        attention.append("Move of objects failed")
    if tenant.key_expiring:
        attention.append("Key material expires within 30 days")
    kind = tenant.source_kind
    return Row(
        name=tenant.name,
        slug=tenant.slug,
        url=reverse("support:tenant", args=[tenant.slug]),
        state=tenant.state,
        badge=display.badge,
        warn=display.tone != "ok",
        since=since,
        source=str(SourceKind(kind).label) if kind in SourceKind.values else "",
        source_where=(tenant.source_where or "")[:60],
        check_result=tenant.check_result or "",
        check_failed=tenant.check_result in FAILED_CHECKS,
        check_at=_when(tenant.check_at),
        attention=attention,
        addon=tenant.byok_addon,
        records=tenant.records_held,
        objects=tenant.objects_held,
        activity=_when(tenant.last_activity),
    )


def _tenant_or_404(slug: str) -> Tenant:
    tenant = support_tenant(slug)
    if tenant is None:
        raise Http404
    return tenant


@support_only
@require_GET
def tenant_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """/support/t/<slug>/: the tenant's key metadata, never its data, secrets or key material."""
    tenant = _tenant_or_404(slug)
    context = {
        "tenant": tenant,
        "state_display": display_of(tenant),
        "sources": support_key_sources(tenant),
        "health": support_health_history(tenant),
        "moves": support_moves(tenant),
        "events": support_key_events(tenant),
        "person": ActorKind.USER,
    }
    return render(request, "support/tenant.html", context)


def _act(
    request: HttpRequest,
    slug: str,
    action: str,
    run: Callable[[Tenant, Actor], str],
) -> HttpResponse:
    """Run a support action; a refusal is recorded (failure) and shown, changing nothing."""
    tenant = _tenant_or_404(slug)
    actor = Actor.for_user(request.user, support=True)
    try:
        message = run(tenant, actor)
    except (KeyActionRefused, AddonRefused) as exc:
        record(
            tenant=tenant,
            actor=actor,
            action=action,
            outcome=Outcome.FAILURE,
            reason=str(exc),
            request=request,
        )
        messages.error(request, str(exc))
    else:
        messages.success(request, message)
    return redirect("support:tenant", slug=tenant.slug)


@support_only
@require_POST
def run_health_check(request: HttpRequest, slug: str) -> HttpResponse:
    def run(tenant: Tenant, actor: Actor) -> str:
        key_health_check_request(tenant=tenant, actor=actor, request=request)
        return "The health check runs now; its result shows here in a few seconds."

    return _act(request, slug, "key.health_check_requested", run)


@support_only
@require_POST
def retry_move(request: HttpRequest, slug: str) -> HttpResponse:
    def run(tenant: Tenant, actor: Actor) -> str:
        objects_move_retry(tenant=tenant, actor=actor)
        return "The failed move starts again; its progress shows below."

    return _act(request, slug, "objects.migration_retry", run)


@support_only
@require_POST
def remind_rotation(request: HttpRequest, slug: str) -> HttpResponse:
    def run(tenant: Tenant, actor: Actor) -> str:
        sent = rotation_remind(tenant=tenant, actor=actor, request=request)
        return f"Reminder emailed to {sent} owner{'s' if sent != 1 else ''} and key administrators."

    return _act(request, slug, "key.rotation_reminder", run)


@support_only
@require_POST
def addon_enable(request: HttpRequest, slug: str) -> HttpResponse:
    def run(tenant: Tenant, actor: Actor) -> str:
        tenant_addon_enable(tenant=tenant, actor=actor, request=request)
        return f"{tenant.name} has the BYOK add-on now."

    return _act(request, slug, "addon.enable", run)


@support_only
@require_POST
def addon_disable(request: HttpRequest, slug: str) -> HttpResponse:
    def run(tenant: Tenant, actor: Actor) -> str:
        tenant_addon_disable(tenant=tenant, actor=actor, request=request)
        return f"{tenant.name} no longer has the BYOK add-on."

    return _act(request, slug, "addon.disable", run)
