from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from audit.export import csv_stream, jsonl_stream
from audit.forms import KNOWN_ACTION_OPTIONS, AuditFilterForm
from audit.models import AuditEvent, StreamKind
from audit.selectors import AuditFilters, audit_events_for_tenant, audit_page
from audit.services import record
from audit.streaming.address import InvalidDestination
from audit.streaming.forms import StreamDestinationForm
from audit.streaming.selectors import stream_backlog, stream_destination, stream_state
from audit.streaming.services import (
    StreamRefused,
    stream_configure,
    stream_remove,
    stream_resume,
)
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.sudo import sudo_required


@login_required
@require_GET
@with_tenant(Perm.VIEW_AUDIT)
def audit_list(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = AuditFilterForm(request.GET or None)
    if form.is_bound and not form.is_valid():
        events: list[AuditEvent] = []
        next_before = None
    else:
        filters = form.filters() if form.is_bound else AuditFilters()
        before = form.cleaned_data.get("before") if form.is_bound else None
        page = audit_page(
            audit_events_for_tenant(access.tenant, filters),
            before=before,
            size=settings.KEYWARD_AUDIT_PAGE_SIZE,
        )
        events, next_before = page.events, page.next_before
    query = request.GET.copy()
    query.pop("before", None)
    context = {
        "form": form,
        "events": events,
        "next_before": next_before,
        "filter_query": query.urlencode(),
        "tenant": access.tenant,
    }
    # The filter form and the pager swap the table alone; any other request, the
    # live refresh of the page's region included, gets the whole page.
    if request.htmx and request.htmx.target == "results":  # type: ignore[attr-defined]
        return render(request, "audit/audit_list.html#results", context)
    context["known_action_options"] = KNOWN_ACTION_OPTIONS
    # Its state only, for the link to the streaming page: the destination's
    # row holds its sealed secret, which this page has no business reading.
    context["stream_state"] = stream_state(access.tenant)
    return render(request, "audit/audit_list.html", context)


def _export(request: HttpRequest, access: TenantAccess, fmt: str) -> HttpResponseBase:
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        return HttpResponse(
            "The export filters are not valid: "
            + "; ".join(
                f"{field}: {' '.join(str(e) for e in errors)}"
                for field, errors in form.errors.items()
            ),
            status=400,
            content_type="text/plain; charset=utf-8",
        )
    filters = form.filters()
    record(
        tenant=access.tenant,
        actor=access.actor(request.user),
        action="audit.export",
        target=fmt,
        details={k: str(v) for k, v in filters.__dict__.items() if v},
        request=request,
    )
    events = audit_events_for_tenant(access.tenant, filters)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    if fmt == "csv":
        response = StreamingHttpResponse(csv_stream(events), content_type="text/csv; charset=utf-8")
    else:
        response = StreamingHttpResponse(
            jsonl_stream(events), content_type="application/x-ndjson; charset=utf-8"
        )
    name = f"keyward-audit-{access.tenant.slug}-{stamp}.{'csv' if fmt == 'csv' else 'jsonl'}"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_GET
@with_tenant(Perm.EXPORT_AUDIT)
def audit_export_csv(request: HttpRequest, access: TenantAccess) -> HttpResponseBase:
    return _export(request, access, "csv")


@login_required
@require_GET
@with_tenant(Perm.EXPORT_AUDIT)
def audit_export_jsonl(request: HttpRequest, access: TenantAccess) -> HttpResponseBase:
    return _export(request, access, "jsonl")


def _stream_page(
    request: HttpRequest,
    access: TenantAccess,
    form: StreamDestinationForm | None = None,
    *,
    secret: str | None = None,
    status: int = 200,
) -> HttpResponse:
    destination = stream_destination(access.tenant)
    if form is None and destination is not None:
        form = StreamDestinationForm(
            initial={
                "kind": destination.kind,
                "host": destination.host if destination.kind == StreamKind.SYSLOG else "",
                "port": destination.port if destination.kind == StreamKind.SYSLOG else None,
                "url": destination.url,
                "ca_pem": destination.ca_pem,
            }
        )
    context = {
        "tenant": access.tenant,
        "destination": destination,
        "backlog": stream_backlog(destination) if destination is not None else 0,
        "form": form or StreamDestinationForm(initial={"kind": StreamKind.SYSLOG, "port": 6514}),
        "can_configure": access.can(Perm.CONFIGURE_AUDIT_STREAM),
        "secret": secret,
    }
    response = render(request, "audit/stream.html", context, status=status)
    if secret is not None:
        response["Cache-Control"] = "no-store"
    return response


@login_required
@require_GET
@with_tenant(Perm.VIEW_AUDIT)
def audit_stream(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return _stream_page(request, access)


@login_required
@require_POST
@with_tenant(Perm.CONFIGURE_AUDIT_STREAM)
@sudo_required
def audit_stream_save(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = StreamDestinationForm(request.POST)
    if not form.is_valid():
        return _stream_page(request, access, form, status=400)
    data = form.cleaned_data
    try:
        secret = stream_configure(
            tenant=access.tenant,
            actor=access.actor(request.user),
            kind=data["kind"],
            host=data["host"],
            port=data["port"],
            url=data["url"],
            ca_pem=data["ca_pem"],
            new_secret=data["new_secret"],
            request=request,
        )
    except InvalidDestination as exc:
        form.add_error(exc.field if exc.field in form.fields else None, str(exc))
        return _stream_page(request, access, form, status=400)
    if secret is not None:
        # Rendered, not redirected: the secret must not travel through the session.
        return _stream_page(request, access, secret=secret)
    messages.success(request, "Saved: the audit trail is streamed to the new destination.")
    return redirect("audit:stream", slug=access.tenant.slug)


@login_required
@require_POST
@with_tenant(Perm.CONFIGURE_AUDIT_STREAM)
@sudo_required
def audit_stream_resume(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    try:
        stream_resume(tenant=access.tenant, actor=access.actor(request.user), request=request)
    except StreamRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Resumed: delivery goes on from the first event not delivered.")
    return redirect("audit:stream", slug=access.tenant.slug)


@login_required
@require_POST
@with_tenant(Perm.CONFIGURE_AUDIT_STREAM)
@sudo_required
def audit_stream_remove(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    try:
        stream_remove(tenant=access.tenant, actor=access.actor(request.user), request=request)
    except StreamRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Removed: audit events are no longer streamed.")
    return redirect("audit:stream", slug=access.tenant.slug)
