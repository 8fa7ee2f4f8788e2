from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from audit.export import csv_stream, jsonl_stream
from audit.forms import KNOWN_ACTIONS, AuditFilterForm
from audit.models import AuditEvent
from audit.selectors import AuditFilters, audit_events_for_tenant, audit_page
from audit.services import record
from tenants.permissions import Perm, TenantAccess, with_tenant


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
        "known_actions": KNOWN_ACTIONS,
        "tenant": access.tenant,
    }
    template = "audit/audit_list.html#results" if request.htmx else "audit/audit_list.html"  # type: ignore[attr-defined]
    return render(request, template, context)


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
