"""Vendor support's side of the lockbox: ask for access to a tenant's data, and read
it while a grant is open. Every read is in the tenant's audit trail with the grant.

Support staff only: anyone else gets 404, as for every support page.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from audit.services import Actor
from crypto.envelope import EnvelopeError
from keys.providers.base import KeyProviderError
from objects.models import StoredObject
from objects.selectors import objects_of_tenant
from objects.services import object_open
from records.selectors import records_page
from records.services import record_fields
from tenants.access import (
    AccessRefused,
    access_read_record,
    access_refusal_record,
    access_request_create,
    active_grant,
)
from tenants.models import AccessReason, AccessScope, SupportAccess, Tenant
from tenants.staff import is_support_staff

PAGE = 50


def support_staff_only(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Resolve `slug` to the tenant for support staff; 404 for everybody else."""

    @wraps(view)
    def wrapper(request: HttpRequest, slug: str, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not is_support_staff(request.user):
            raise Http404
        tenant = get_object_or_404(Tenant, slug=slug)
        return view(request, tenant, *args, **kwargs)

    return wrapper


class AccessRequestForm(forms.Form):
    reason = forms.ChoiceField(label="Reason", choices=AccessReason.choices)
    case_reference = forms.CharField(label="Case reference", max_length=100)
    justification = forms.CharField(
        label="Why you need the data", max_length=2000, widget=forms.Textarea(attrs={"rows": 3})
    )
    scopes = forms.MultipleChoiceField(
        label="What you need",
        choices=AccessScope.choices,
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose what you need to read."},
    )
    hours = forms.IntegerField(label="For how many hours", min_value=1, max_value=72)


@login_required
@require_http_methods(["GET", "POST"])
@support_staff_only
def access_request(request: HttpRequest, tenant: Tenant) -> HttpResponse:
    form = AccessRequestForm(request.POST or None, initial={"hours": tenant.support_max_hours})
    never = tenant.support_access == SupportAccess.NEVER
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            access_request_create(
                tenant=tenant,
                requester=request.user,
                reason=data["reason"],
                case_reference=data["case_reference"],
                justification=data["justification"],
                scopes=list(data["scopes"]),
                hours=data["hours"],
                request=request,
            )
        except AccessRefused as exc:
            _refused(request, tenant, "access.request", str(exc))
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"Request sent: {tenant.name}'s approvers have been emailed.")
            return redirect("lockbox:data", slug=tenant.slug)
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "support/access_request.html",
        {"tenant": tenant, "form": form, "never": never},
        status=status,
    )


def _refused(request: HttpRequest, tenant: Tenant, action: str, reason: str) -> None:
    access_refusal_record(
        tenant=tenant,
        actor=Actor.for_user(request.user, support=True),
        action=action,
        reason=reason,
        request=request,
    )


def _grants(request: HttpRequest, tenant: Tenant) -> dict[str, Any]:
    """The open grant for each scope, or the refusal of the scopes without one."""
    found: dict[str, Any] = {}
    for scope in AccessScope.values:
        try:
            found[scope] = active_grant(tenant, request.user, scope)
        except AccessRefused as exc:
            found[scope] = exc
    return found


def _refusal_page(
    request: HttpRequest, tenant: Tenant, action: str, refusal: AccessRefused
) -> HttpResponse:
    _refused(request, tenant, action, str(refusal))
    return render(
        request,
        "support/access_refused.html",
        {"tenant": tenant, "reason": str(refusal)},
        status=403,
    )


@login_required
@require_GET
@support_staff_only
def data(request: HttpRequest, tenant: Tenant) -> HttpResponse:
    grants = _grants(request, tenant)
    records_grant = grants[AccessScope.RECORDS_READ]
    objects_grant = grants[AccessScope.OBJECTS_READ]
    if isinstance(records_grant, AccessRefused) and isinstance(objects_grant, AccessRefused):
        return _refusal_page(request, tenant, "access.read_records", records_grant)
    rows: list[tuple[Any, dict[str, str]]] = []
    error = ""
    if not isinstance(records_grant, AccessRefused):
        try:
            after = max(int(request.GET.get("after", "0")), 0)
        except ValueError:
            after = 0
        page = records_page(tenant, kind=None, after=after, limit=PAGE)
        try:
            rows = [(r, record_fields(tenant, r)) for r in page]
        except (EnvelopeError, KeyProviderError) as exc:
            error = f"The tenant's key does not open its data now: {exc}"
            rows = []
        else:
            access_read_record(
                grant=records_grant,
                user=request.user,
                what="records",
                target=f"{len(rows)} record(s)",
                details={"records": [str(r.uid) for r, _ in rows]},
                request=request,
            )
    stored = (
        []
        if isinstance(objects_grant, AccessRefused)
        else list(objects_of_tenant(tenant).order_by("key")[:PAGE])
    )
    open_grants = [g for g in (records_grant, objects_grant) if not isinstance(g, AccessRefused)]
    return render(
        request,
        "support/access_data.html",
        {
            "tenant": tenant,
            "grant": open_grants[0],
            "reads_records": not isinstance(records_grant, AccessRefused),
            "reads_objects": not isinstance(objects_grant, AccessRefused),
            "rows": rows,
            "error": error,
            "objects": stored,
            "next_after": rows[-1][0].pk if len(rows) == PAGE else None,
        },
    )


@login_required
@require_GET
@support_staff_only
def object_download(request: HttpRequest, tenant: Tenant, object_id: str) -> HttpResponseBase:
    grant = _grants(request, tenant)[AccessScope.OBJECTS_READ]
    if isinstance(grant, AccessRefused):
        return _refusal_page(request, tenant, "access.read_object", grant)
    obj = get_object_or_404(StoredObject, pk=object_id, tenant=tenant)
    try:
        obj, stream = object_open(tenant=tenant, key=obj.key)
    except (EnvelopeError, KeyProviderError) as exc:
        return render(
            request,
            "support/access_refused.html",
            {"tenant": tenant, "reason": f"The tenant's key does not open its data now: {exc}"},
            status=503,
        )
    access_read_record(
        grant=grant,
        user=request.user,
        what="object",
        target=obj.key,
        details={"sha256": obj.sha256, "size": obj.size},
        request=request,
    )
    response = StreamingHttpResponse(stream, content_type=obj.content_type)
    response["Content-Length"] = str(obj.size)
    response["Content-Disposition"] = f'attachment; filename="{obj.key.rsplit("/", 1)[-1]}"'
    return response
