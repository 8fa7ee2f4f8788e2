"""Registering a key in AWS KMS: the page and Save and Test."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from keys.aws_console import key_policy_statement, role_trust_policy, suggested_external_id
from keys.errors import KeyActionRefused
from keys.forms import (
    AwsKmsSourceForm,
)
from keys.models import SourceKind
from keys.selectors.sources import current_source, draft_source
from keys.services.sources import key_source_register, key_source_test
from keys.views.common import (
    addon_permits,
    refused,
    test_and_enable,
)
from tenants.display import Act, state_permits
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.sudo import sudo_required


def _aws_page(
    request: HttpRequest,
    access: TenantAccess,
    form: AwsKmsSourceForm | None = None,
    status: int = 200,
) -> HttpResponse:
    tenant = access.tenant
    source = current_source(tenant, SourceKind.AWS_KMS)
    config = source.config if source else {}
    external_id = config.get("external_id") or suggested_external_id(tenant)
    role_arn = (form.data.get("role_arn") if form is not None else None) or config.get(
        "role_arn", ""
    )
    context = {
        "tenant": tenant,
        "source": source,
        "form": form
        or AwsKmsSourceForm(
            initial={"key_arn": config.get("key_arn", ""), "role_arn": config.get("role_arn", "")}
        ),
        "external_id": external_id,
        "key_policy": key_policy_statement(tenant, str(role_arn or "")),
        "trust_policy": role_trust_policy(external_id),
        "vendor_principal": settings.KEYWARD_AWS_VENDOR_PRINCIPAL,
        **test_and_enable(tenant, source),
    }
    return render(request, "keys/aws.html", context, status=status)


@login_required
@require_GET
@with_tenant(Perm.MANAGE_KEYS)
@addon_permits()
def aws_source(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return _aws_page(request, access)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
@state_permits(Act.BRING_KEY, audit="key_source.register", back="keys:aws")
@addon_permits(audit="key_source.register")
def aws_save_and_test(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = AwsKmsSourceForm(request.POST)
    if not form.is_valid():
        reasons = "; ".join(
            f"{field}: {' '.join(str(e) for e in errors)}" for field, errors in form.errors.items()
        )
        refused(request, access, "key_source.register", reasons)
        return _aws_page(request, access, form=form, status=400)
    tenant = access.tenant
    existing = draft_source(tenant, SourceKind.AWS_KMS)
    config = {
        "key_arn": form.cleaned_data["key_arn"],
        "role_arn": form.cleaned_data["role_arn"],
        "external_id": (existing.config.get("external_id") if existing else None)
        or suggested_external_id(tenant),
    }
    actor = access.actor(request.user)
    try:
        source = key_source_register(
            tenant=tenant, kind=SourceKind.AWS_KMS, config=config, actor=actor, request=request
        )
    except KeyActionRefused as exc:
        refused(request, access, "key_source.register", str(exc))
        return redirect("keys:aws", slug=tenant.slug)
    source = key_source_test(source=source, actor=actor, request=request)
    if source.test_passed:
        messages.success(request, "Every check passed. You can enable your key.")
    else:
        messages.error(request, "Some checks failed: see what to change below.")
    return redirect("keys:aws", slug=tenant.slug)
