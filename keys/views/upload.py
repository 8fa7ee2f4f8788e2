"""Wrapped-key upload: the page, import parameters, the upload."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from keys.errors import KeyActionRefused
from keys.forms import (
    KeyUploadForm,
)
from keys.models import KekState, SourceKind, SourceState
from keys.selectors.sources import current_source
from keys.services.sources import key_source_test
from keys.services.uploads import MAX_UPLOAD_BYTES, key_import_create, key_upload
from keys.views.common import (
    addon_permits,
    refused,
)
from tenants.display import Act, state_permits
from tenants.models import ServiceState
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.sudo import sudo_required


def _upload_page(
    request: HttpRequest, access: TenantAccess, form: KeyUploadForm | None = None, status: int = 200
) -> HttpResponse:
    tenant = access.tenant
    source = current_source(tenant, SourceKind.UPLOADED)
    versions = list(source.versions.order_by("-created")) if source else []
    newest = versions[0] if versions else None
    revoked = tenant.state in (ServiceState.REVOKED, ServiceState.DESTROYED)
    context = {
        "tenant": tenant,
        "source": source,
        "versions": versions,
        "revoked": revoked,
        # A key is in use: a new upload is a rotation, which pauses writes until confirmed.
        "upload_is_rotation": bool(source and source.state == SourceState.ACTIVE and not revoked),
        # The checks shown are those of the newest upload, never an older one's; a
        # revoked tenant's key copy is destroyed, so no check of it stands.
        "checks": (
            source.test_results
            if source
            and newest is not None
            and newest.material
            and not revoked
            and source.config.get("version") == newest.provider_version
            else []
        ),
        "newest_pending": newest
        if newest is not None and newest.state == KekState.PENDING and not revoked
        else None,
        "form": form or KeyUploadForm(),
        "max_upload_bytes": MAX_UPLOAD_BYTES,
        "can_enable": bool(
            source and source.test_passed and tenant.state == ServiceState.VENDOR_MANAGED
        ),
    }
    return render(request, "keys/upload.html", context, status=status)


@login_required
@require_GET
@with_tenant(Perm.MANAGE_KEYS)
@addon_permits()
def upload_page(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return _upload_page(request, access)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@state_permits(Act.UPLOAD_VERSION, audit="key_import.create", back="keys:upload")
@addon_permits(audit="key_import.create")
def download_import_parameters(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    try:
        key_import, bundle = key_import_create(
            tenant=access.tenant, actor=access.actor(request.user), request=request
        )
    except KeyActionRefused as exc:
        refused(request, access, "key_import.create", str(exc))
        return redirect("keys:upload", slug=access.tenant.slug)
    response = HttpResponse(bundle, content_type="application/zip")
    stamp = key_import.created.strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = (
        f'attachment; filename="keyward-import-{access.tenant.slug}-{stamp}.zip"'
    )
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
@state_permits(Act.UPLOAD_VERSION, audit="key.upload", back="keys:upload")
@addon_permits(audit="key.upload")
def upload_key(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = KeyUploadForm(request.POST, request.FILES)
    actor = access.actor(request.user)
    if not form.is_valid():
        reasons = "; ".join(
            f"{field}: {' '.join(str(e) for e in errors)}" for field, errors in form.errors.items()
        )
        refused(request, access, "key.upload", reasons)
        return _upload_page(request, access, form=form, status=400)
    try:
        version = key_upload(
            tenant=access.tenant,
            wrapped_key=form.cleaned_data["wrapped_key"],
            token=form.cleaned_data["token"],
            material_expires_at=form.cleaned_data["expires_at"],
            actor=actor,
            request=request,
        )
    except KeyActionRefused as exc:
        form.add_error(None, str(exc))
        messages.error(request, "The key was not accepted: nothing changed.")
        return _upload_page(request, access, form=form, status=400)
    key_source_test(source=version.source, actor=actor, request=request)
    if version.check_value:
        text = (
            f"Key received as {version.provider_version}. Its key check value is "
            f"{version.check_value}: compare it with the one from step 3 of README.txt."
        )
    else:
        text = (
            f"Key received into the KMS key {version.provider_version}. Keyward never sees it "
            "in the clear, so there is no key check value to compare; the test below ran a "
            "round trip with it."
        )
    messages.success(request, text)
    return redirect("keys:upload", slug=access.tenant.slug)
