"""Registering a key in Azure Key Vault: the page and Save and Test."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_POST

from keys.errors import KeyActionRefused
from keys.forms import (
    AzureKeyVaultSourceForm,
)
from keys.models import SourceKind
from keys.selectors.sources import current_source, saved_azure_method
from keys.services.registration import azure_register
from keys.views.common import (
    addon_permits,
    form_refused,
    refused,
    saved_then_tested,
    source_page,
)
from tenants.display import Act, state_permits
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.sudo import sudo_required


def _azure_form(
    access: TenantAccess, data: Any = None, files: Any = None
) -> AzureKeyVaultSourceForm:
    source = current_source(access.tenant, SourceKind.AZURE_KEYVAULT)
    config = source.config if source else {}
    return AzureKeyVaultSourceForm(
        data,
        files,
        saved_method=saved_azure_method(access.tenant),
        initial={
            name: config.get(name, "")
            for name in ("vault_url", "key_name", "tenant_id", "client_id")
        }
        | {"auth_method": config.get("auth_method", "secret")},
    )


@login_required
@require_GET
@with_tenant(Perm.MANAGE_KEYS)
@addon_permits()
def azure_source(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return source_page(request, access, SourceKind.AZURE_KEYVAULT, _azure_form(access))


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
@state_permits(Act.BRING_KEY, audit="key_source.register", back="keys:azure")
@addon_permits(audit="key_source.register")
def azure_save_and_test(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = _azure_form(access, request.POST, request.FILES)
    if not form.is_valid():
        return form_refused(request, access, SourceKind.AZURE_KEYVAULT, form)
    data = form.cleaned_data
    try:
        source = azure_register(
            tenant=access.tenant,
            vault_url=data["vault_url"],
            key_name=data["key_name"],
            tenant_id=data["tenant_id"],
            client_id=data["client_id"],
            auth_method=data["auth_method"],
            credentials=form.credentials(),
            certificate_thumbprint=form.certificate_thumbprint,
            actor=access.actor(request.user),
            request=request,
        )
    except KeyActionRefused as exc:
        refused(request, access, "key_source.register", str(exc))
        return redirect("keys:azure", slug=access.tenant.slug)
    saved_then_tested(request, access, source)
    return redirect("keys:azure", slug=access.tenant.slug)
