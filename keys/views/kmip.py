"""Registering a key on a KMIP server: the page and Save and Test."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.views.decorators.http import require_GET, require_POST

from keys.errors import KeyActionRefused
from keys.forms import (
    KmipSourceForm,
)
from keys.models import SourceKind
from keys.selectors.sources import current_source
from keys.services.registration import KmipEntry, kmip_register
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


def _kmip_form(access: TenantAccess, data: Any = None, files: Any = None) -> KmipSourceForm:
    source = current_source(access.tenant, SourceKind.KMIP)
    config = source.config if source else {}
    return KmipSourceForm(
        data,
        files,
        initial={
            "host": config.get("host", ""),
            "port": config.get("port", 5696),
            "username": config.get("username", ""),
        },
    )


@login_required
@require_GET
@with_tenant(Perm.MANAGE_KEYS)
@addon_permits()
def kmip_source(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return source_page(request, access, SourceKind.KMIP, _kmip_form(access))


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
@state_permits(Act.BRING_KEY, audit="key_source.register", back="keys:kmip")
@addon_permits(audit="key_source.register")
def kmip_save_and_test(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = _kmip_form(access, request.POST, request.FILES)
    if not form.is_valid():
        return form_refused(request, access, SourceKind.KMIP, form)
    data = form.cleaned_data
    entry = KmipEntry(
        host=data["host"],
        port=data["port"],
        username=data["username"].strip(),
        password=data["password"] or None,
        ca_pem=data["ca_cert"],
        cert_pem=data["client_cert"],
        key_pem=data["client_key"],
        passphrase=data["passphrase"] or None,
    )
    try:
        source = kmip_register(
            tenant=access.tenant, entry=entry, actor=access.actor(request.user), request=request
        )
    except KeyActionRefused as exc:
        if exc.field is not None:  # what was entered is wrong: show it on the form
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
            return form_refused(request, access, SourceKind.KMIP, form)
        refused(request, access, "key_source.register", str(exc))
        return redirect("keys:kmip", slug=access.tenant.slug)
    saved_then_tested(request, access, source)
    return redirect("keys:kmip", slug=access.tenant.slug)
