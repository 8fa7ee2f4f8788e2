from __future__ import annotations

from django.contrib.auth import authenticate
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.templatetags.static import static
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_safe

from api.openapi import openapi_document
from audit.selectors import recent_audit_events
from audit.services import Actor, record_for_tenants
from console.forms import SudoForm
from console.live import live_fingerprint, live_pace
from console.mfa.forms import CodeForm
from console.mfa.services import FactorRefused, has_factor, second_factor_verify
from console.mfa.webauthn import authentication_options, has_security_key, webauthn_verify
from keys.selectors.overview import revocation_bound
from keys.selectors.usage import revocation_chart, usage_charts
from records.blindindex import INDEXED_FIELDS
from records.fields import FIELDS_BY_KIND
from tenants.models import Tenant
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.selectors import memberships_for_user, tenants_for_user
from tenants.staff import is_support_staff
from tenants.sudo import safe_next, sudo_grant


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})


def openapi_json(request: HttpRequest) -> HttpResponse:
    """/api/v1/openapi.json (GET): the API layer's document, with the records' vocabulary."""
    document = openapi_document(fields_by_kind=FIELDS_BY_KIND, indexed_fields=INDEXED_FIELDS)
    return JsonResponse(document, json_dumps_params={"indent": 1})


@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers ask for whatever the page links: the SVG icon."""
    response = redirect(static("img/favicon.svg"))
    response["Cache-Control"] = "public, max-age=86400"
    return response


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """One tenant: straight to it. Several: the list. Support staff: the support console."""
    if is_support_staff(request.user):
        return redirect("support:list")
    memberships = list(memberships_for_user(request.user)[:2])
    if len(memberships) == 1:
        return redirect("console:dashboard", slug=memberships[0].tenant.slug)
    tenants = tenants_for_user(request.user).order_by("name")
    return render(request, "console/home.html", {"tenants": tenants})


@login_required
@require_GET
@with_tenant(Perm.VIEW_STATUS)
def live(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    """The live poller's question: 204 while nothing changed, else a new poller and
    the `kw-changed` event (console/live.py)."""
    tenant = access.tenant
    fingerprint = live_fingerprint(tenant)
    if request.GET.get("seen") == fingerprint:
        return HttpResponse(status=204)
    response = render(
        request,
        "console/_live.html",
        {"live_tenant": tenant, "live_fingerprint": fingerprint, "live_pace": live_pace(tenant)},
    )
    response["HX-Trigger"] = "kw-changed"
    return response


@login_required
@require_GET
@with_tenant(Perm.VIEW_STATUS)
def dashboard(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    # Support staff see metadata only: the trail names people and addresses.
    events = recent_audit_events(access.tenant) if access.can(Perm.VIEW_AUDIT) else []
    tenant = access.tenant
    bound = revocation_bound(tenant)
    now = timezone.now()
    calls_chart, cache_chart = usage_charts(tenant, now)
    context = {
        "tenant": tenant,
        "events": events,
        "bound": bound,
        "calls_chart": calls_chart,
        "cache_chart": cache_chart,
        "bound_chart": revocation_chart(bound, now) if bound.customer_key else None,
    }
    return render(request, "console/dashboard.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def sudo(request: HttpRequest) -> HttpResponse:
    next_url = safe_next(
        request, request.GET.get("next") or request.POST.get("next"), reverse("console:home")
    )
    # Which form to show; what is granted follows from what was checked.
    wants_factor = "1" in (request.GET.get("factor"), request.POST.get("factor"))
    me = request.user
    assert isinstance(me, AbstractBaseUser)  # login_required
    enrolled = has_factor(request.user)
    if wants_factor and not enrolled:
        return render(request, "console/sudo_enrol_first.html", {"next": next_url})
    form = SudoForm(request.POST or None)
    assertion = request.POST.get("assertion", "") if wants_factor else ""
    code_form = CodeForm(None if assertion else request.POST or None) if wants_factor else None
    key_error = ""
    if request.method == "POST" and form.is_valid():
        user = authenticate(
            request, username=request.user.get_username(), password=form.cleaned_data["password"]
        )
        tenants: list[Tenant | None] = [m.tenant for m in memberships_for_user(request.user)]
        actor = Actor.for_user(request.user, support=is_support_staff(request.user))
        if user is None or user.pk != request.user.pk:
            form.add_error("password", "That password is not correct.")
        elif code_form is None:
            # A raised privilege gets a session id of its own, as signing in does:
            # an id seen before the password was entered is worth nothing after.
            request.session.cycle_key()
            sudo_grant(request)
            record_for_tenants(tenants or [None], actor=actor, action="auth.sudo", request=request)
            return redirect(next_url)
        elif assertion or code_form.is_valid():
            try:
                if assertion:
                    webauthn_verify(
                        request=request, user=request.user, assertion=assertion, purpose="sudo"
                    )
                else:
                    second_factor_verify(
                        user=request.user,
                        code=code_form.cleaned_data["code"],
                        request=request,
                        purpose="sudo",
                    )
            except FactorRefused as exc:
                key_error = str(exc) if assertion else ""
                if not assertion:
                    code_form.add_error("code", str(exc))
            else:
                request.session.cycle_key()
                sudo_grant(request, second_factor=True)
                record_for_tenants(
                    tenants or [None],
                    actor=actor,
                    action="auth.sudo",
                    details={"second_factor": True},
                    request=request,
                )
                return redirect(next_url)
    return render(
        request,
        "console/sudo.html",
        {
            "form": form,
            "code_form": code_form,
            "next": next_url,
            "key_error": key_error,
            "webauthn_options": (
                authentication_options(request, me)
                if code_form is not None and has_security_key(me)
                else None
            ),
        },
    )
