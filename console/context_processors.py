from __future__ import annotations

from dataclasses import replace
from functools import cache
from typing import Any

from django.db.models.functions import Now
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from audit.streaming.selectors import paused_stream
from console.live import fingerprint_of, pace_of
from console.shell import ShellFacts, shell_facts
from keys.expiry import expiring_version
from keys.selectors.overview import rotation_cause
from objects.selectors import migration_progress
from tenants.display import Banner, allowed_acts, display_of
from tenants.models import MIGRATING_STATES, ServiceState, Tenant
from tenants.selectors import SupportAccessNow, memberships_for_user, support_access_now
from tenants.staff import is_support_staff


def shell(request: HttpRequest) -> dict[str, Any]:
    """The tenant switcher, the state banner and the live poller, for every page."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    access = getattr(request, "tenant_access", None)
    # A tenant's page read them already, for its tenant check (tenant_for_request).
    switcher = getattr(request, "user_memberships", None)
    context: dict[str, Any] = {
        "switcher": memberships_for_user(user) if switcher is None else switcher,
        "is_support": is_support_staff(user),
        "access": access,
        "current_tenant": access.tenant if access else None,
    }
    if access is None:
        return context
    tenant = access.tenant
    display = display_of(tenant)

    # What needs the database is read when a template first uses it, and then once
    # for all of it (console/shell.py): a partial that htmx swaps into a page (a
    # page of the audit trail, a progress section) shows none of it and reads none.
    # A banner that is there is read again whole, on the same clock as the facts
    # (the database's), so that the two agree at an expiry's very moment.
    @cache
    def facts() -> ShellFacts:
        return shell_facts(tenant)

    def support_access() -> SupportAccessNow | None:
        if access.is_support or not facts().support_access:
            return None
        return support_access_now(tenant, now=Now())

    return {
        **context,
        "expiring_key": SimpleLazyObject(
            lambda: expiring_version(tenant, now=Now()) if facts().key_expiring else None
        ),
        "paused_stream": SimpleLazyObject(
            lambda: paused_stream(tenant) if facts().stream_paused else None
        ),
        "state_display": display,
        # The state-dependent actions the tenant's state allows (tenants/display.py);
        # a page shows one only if the person's role allows it too.
        "allowed": allowed_acts(tenant),
        "banner": SimpleLazyObject(lambda: _banner(display.banner, tenant)),
        # Vendor support's pending requests and open grants, for the tenant's members.
        "support_access": SimpleLazyObject(support_access),
        "live_tenant": tenant,
        "live_fingerprint": SimpleLazyObject(
            lambda: fingerprint_of(tenant, facts().chain_position)
        ),
        "live_pace": SimpleLazyObject(lambda: str(pace_of(tenant, jobs_open=facts().jobs_open))),
        # Only a page fetched with GET can be fetched again when the tenant changes.
        "live_url": request.get_full_path() if request.method == "GET" else "",
    }


def _banner(banner: Banner | None, tenant: Tenant) -> Banner | None:
    """The state's banner, with what only the moment knows: where a pending rotation
    came from, how far a move of objects is."""
    if banner is None:
        return None
    if tenant.state == ServiceState.ROTATION_PENDING:
        cause = rotation_cause(tenant)
        if cause:
            banner = replace(banner, text=f"{cause} {banner.text}")
    if tenant.state in MIGRATING_STATES:
        progress = migration_progress(tenant)
        if progress is not None:
            banner = replace(
                banner, text=f"{banner.text} Objects: {progress.label} ({progress.percent}%)."
            )
    return banner
