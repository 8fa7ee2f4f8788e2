"""What the Keys pages share: refusals, the registration page layout, test and Enable."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render

from audit.models import Outcome
from audit.services import record
from keys.models import KeySource, SourceKind, SourceState
from keys.selectors.sources import current_source
from keys.services.addon import ADDON_REFUSAL
from keys.services.sources import key_source_test
from tenants.models import ServiceState
from tenants.permissions import TenantAccess


def refused(
    request: HttpRequest,
    access: TenantAccess,
    action: str,
    message: str,
    details: dict[str, Any] | None = None,
) -> None:
    """Record the refusal (the one event of this click) and tell the person why."""
    record(
        tenant=access.tenant,
        actor=access.actor(request.user),
        action=action,
        outcome=Outcome.FAILURE,
        reason=message,
        details=details,
        request=request,
    )
    messages.error(request, message)


View = Callable[..., HttpResponseBase]


def addon_permits(*, audit: str | None = None) -> Callable[[View], View]:
    """The bring-your-own-key pages need the BYOK add-on (the services refuse too).

    Without it, a page (`audit` None) explains the add-on and offers to request
    it; an action is refused with one audit event (`audit`, failure) and sent
    back to the Keys page. Goes below `with_tenant` (it needs the access).
    """

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapper(request: HttpRequest, access: TenantAccess, *args: Any, **kwargs: Any) -> Any:
            if access.tenant.byok_addon:
                return view(request, access, *args, **kwargs)
            if audit is None:
                return render(request, "keys/addon_required.html", {"tenant": access.tenant})
            refused(request, access, audit, ADDON_REFUSAL)
            return redirect("keys:overview", slug=access.tenant.slug)

        return wrapper

    return decorator


# The registration page of each kind of customer key.
SOURCE_PAGES: dict[str, str] = {
    SourceKind.AWS_KMS: "keys:aws",
    SourceKind.UPLOADED: "keys:upload",
    SourceKind.AZURE_KEYVAULT: "keys:azure",
    SourceKind.KMIP: "keys:kmip",
}


def source_page(
    request: HttpRequest,
    access: TenantAccess,
    kind: str,
    form: forms.Form,
    status: int = 200,
) -> HttpResponse:
    """A registration page: the form, the last test's named checks, Enable."""
    tenant = access.tenant
    source = current_source(tenant, kind)
    context = {
        "tenant": tenant,
        "source": source,
        "form": form,
        "credentials_saved": bool(source and source.sealed_credentials),
        **test_and_enable(tenant, source),
    }
    template: dict[str, str] = {
        SourceKind.AZURE_KEYVAULT: "keys/azure.html",
        SourceKind.KMIP: "keys/kmip.html",
    }
    return render(request, template[kind], context, status=status)


def test_and_enable(tenant: Any, source: KeySource | None) -> dict[str, Any]:
    """What keys/_source_test.html needs: the last test, and whether Enable is offered."""
    test_passed = bool(source and source.test_passed)
    return {
        "settings_changed": bool(
            source and source.test_results and source.tested_config_digest != source.config_digest()
        ),
        "can_enable": test_passed and tenant.state == ServiceState.VENDOR_MANAGED,
        "can_switch": bool(
            source
            and source.state != SourceState.ACTIVE
            and test_passed
            and tenant.state == ServiceState.BYOK_ACTIVE
        ),
        "enable_blocked": _enable_blocked(source),
    }


def _enable_blocked(source: KeySource | None) -> str:
    """Why Enable is disabled now ("" when it is not)."""
    if source is None:
        return "Save your settings and run the test first."
    if source.state == SourceState.ACTIVE:
        return ""
    if not source.test_results:
        return "Run the test first: Enable needs every check to pass."
    if source.tested_config_digest != source.config_digest():
        return "The settings changed since the last test: test them again."
    if not source.test_passed:
        return "Some checks failed: fix them and test again."
    return ""


def form_refused(
    request: HttpRequest, access: TenantAccess, kind: str, form: forms.Form
) -> HttpResponse:
    reasons = "; ".join(
        f"{field}: {' '.join(str(e) for e in errors)}" for field, errors in form.errors.items()
    )
    refused(request, access, "key_source.register", reasons)
    return source_page(request, access, kind, form, status=400)


def saved_then_tested(request: HttpRequest, access: TenantAccess, source: KeySource) -> None:
    source = key_source_test(source=source, actor=access.actor(request.user), request=request)
    if source.test_passed:
        messages.success(request, "Every check passed. You can enable your key.")
    else:
        messages.error(request, "Some checks failed: see what to change below.")
