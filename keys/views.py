from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from audit.models import Outcome
from audit.services import Actor, record
from keys.aws_console import key_policy_statement, role_trust_policy, suggested_external_id
from keys.forms import (
    AwsKmsSourceForm,
    AzureKeyVaultSourceForm,
    CacheTtlForm,
    KeyUploadForm,
    KmipSourceForm,
    RotateDekForm,
)
from keys.lifecycle import (
    LifecycleRefused,
    kek_confirm_rotation,
    kek_reject_rotation,
    kek_rotate_now,
    kek_switch_source,
    pending_version,
    tenant_cancel_destroy,
    tenant_remove_byok,
    tenant_restore,
    tenant_revoke,
    tenant_schedule_destroy,
)
from keys.models import KekState, KeySource, SourceKind, SourceState
from keys.providers.base import KeyProviderError
from keys.registration import (
    KmipEntry,
    RegistrationInvalid,
    azure_register,
    kmip_register,
    saved_azure_method,
)
from keys.registry import provider_for
from keys.selectors import (
    enabling_progress,
    keys_overview,
    rotation_history,
)
from keys.services import KeyActionRefused, dek_rotate, tenant_set_dek_cache_ttl
from keys.sources import (
    byok_enable,
    current_source,
    draft_source,
    key_source_register,
    key_source_test,
)
from keys.uploads import MAX_UPLOAD_BYTES, UploadRefused, key_import_create, key_upload
from tenants.models import ServiceState
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.states import REVOCABLE_STATES
from tenants.sudo import sudo_required


def _page(
    request: HttpRequest,
    access: TenantAccess,
    ttl_form: CacheTtlForm | None = None,
    status: int = 200,
) -> HttpResponse:
    overview = keys_overview(access.tenant)
    context = {
        "tenant": access.tenant,
        "overview": overview,
        "ttl_form": ttl_form or CacheTtlForm(initial={"ttl": access.tenant.dek_cache_ttl}),
        "rotate_form": RotateDekForm(),
        "job": overview.open_job or overview.last_job,
        "can_manage": access.can(Perm.MANAGE_KEYS),
        "can_revoke": access.tenant.state in REVOCABLE_STATES,
        "can_rotate_kek": bool(
            overview.source
            and access.tenant.state == ServiceState.BYOK_ACTIVE
            and provider_for(overview.source).can_rotate_now
        ),
        "can_destroy": access.can(Perm.DESTROY_KEYS),
        "can_remove": access.can(Perm.REMOVE_BYOK)
        and access.tenant.state in (ServiceState.BYOK_ACTIVE, ServiceState.DEGRADED),
        "enabling": enabling_progress(access.tenant),
    }
    return render(request, "keys/keys.html", context, status=status)


@login_required
@require_GET
@with_tenant(Perm.VIEW_STATUS)
def keys_page(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return _page(request, access)


def _refused(request: HttpRequest, access: TenantAccess, action: str, message: str) -> None:
    record(
        tenant=access.tenant,
        actor=Actor.for_user(request.user),
        action=action,
        outcome=Outcome.FAILURE,
        reason=message,
        request=request,
    )
    messages.error(request, message)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def rotate_dek(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = RotateDekForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    try:
        dek = dek_rotate(
            tenant=access.tenant,
            actor=Actor.for_user(request.user),
            reason=reason or "rotated on demand",
            request=request,
        )
    except (KeyActionRefused, KeyProviderError) as exc:
        _refused(request, access, "dek.rotate", str(exc))
    else:
        messages.success(request, f"New data key v{dek.version} is in use for new data.")
    return redirect("keys:overview", slug=access.tenant.slug)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def set_cache_ttl(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = CacheTtlForm(request.POST)
    if not form.is_valid():
        return _page(request, access, ttl_form=form, status=400)
    try:
        tenant_set_dek_cache_ttl(
            tenant=access.tenant,
            ttl=form.cleaned_data["ttl"],
            actor=Actor.for_user(request.user),
            request=request,
        )
    except ValidationError as exc:
        form.add_error("ttl", " ".join(exc.messages))
        return _page(request, access, ttl_form=form, status=400)
    messages.success(request, "Key cache lifetime saved.")
    return redirect("keys:overview", slug=access.tenant.slug)


# -- AWS KMS (bring your own KMS key) -----------------------------------------------


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
        **_test_and_enable(tenant, source),
    }
    return render(request, "keys/aws.html", context, status=status)


@login_required
@require_GET
@with_tenant(Perm.MANAGE_KEYS)
def aws_source(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return _aws_page(request, access)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def aws_save_and_test(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = AwsKmsSourceForm(request.POST)
    if not form.is_valid():
        reasons = "; ".join(
            f"{field}: {' '.join(str(e) for e in errors)}" for field, errors in form.errors.items()
        )
        _refused(request, access, "key_source.register", reasons)
        return _aws_page(request, access, form=form, status=400)
    tenant = access.tenant
    existing = draft_source(tenant, SourceKind.AWS_KMS)
    config = {
        "key_arn": form.cleaned_data["key_arn"],
        "role_arn": form.cleaned_data["role_arn"],
        "external_id": (existing.config.get("external_id") if existing else None)
        or suggested_external_id(tenant),
    }
    actor = Actor.for_user(request.user)
    try:
        source = key_source_register(
            tenant=tenant, kind=SourceKind.AWS_KMS, config=config, actor=actor, request=request
        )
    except KeyActionRefused as exc:
        _refused(request, access, "key_source.register", str(exc))
        return redirect("keys:aws", slug=tenant.slug)
    source = key_source_test(source=source, actor=actor, request=request)
    if source.test_passed:
        messages.success(request, "Every check passed. You can enable your key.")
    else:
        messages.error(request, "Some checks failed: see what to change below.")
    return redirect("keys:aws", slug=tenant.slug)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def enable_source(request: HttpRequest, access: TenantAccess, source_id: str) -> HttpResponse:
    source = get_object_or_404(KeySource, pk=source_id, tenant=access.tenant)
    try:
        byok_enable(
            tenant=access.tenant, source=source, actor=Actor.for_user(request.user), request=request
        )
    except KeyActionRefused as exc:
        _refused(request, access, "byok.enable", str(exc))
        return redirect(SOURCE_PAGES.get(source.kind, "keys:overview"), slug=access.tenant.slug)
    messages.success(request, "Moving your data keys under your key. This page shows the progress.")
    return redirect("keys:overview", slug=access.tenant.slug)


@login_required
@require_GET
@with_tenant(Perm.VIEW_STATUS)
def enable_progress(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return render(
        request,
        "keys/keys.html#enable-progress",
        {"tenant": access.tenant, "enabling": enabling_progress(access.tenant)},
    )


# -- Azure Key Vault and KMIP servers ---------------------------------------------------

# The registration page of each kind of customer key.
SOURCE_PAGES: dict[str, str] = {
    SourceKind.AWS_KMS: "keys:aws",
    SourceKind.UPLOADED: "keys:upload",
    SourceKind.AZURE_KEYVAULT: "keys:azure",
    SourceKind.KMIP: "keys:kmip",
}


def _source_page(
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
        **_test_and_enable(tenant, source),
    }
    template: dict[str, str] = {
        SourceKind.AZURE_KEYVAULT: "keys/azure.html",
        SourceKind.KMIP: "keys/kmip.html",
    }
    return render(request, template[kind], context, status=status)


def _test_and_enable(tenant: Any, source: KeySource | None) -> dict[str, Any]:
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


def _form_refused(
    request: HttpRequest, access: TenantAccess, kind: str, form: forms.Form
) -> HttpResponse:
    reasons = "; ".join(
        f"{field}: {' '.join(str(e) for e in errors)}" for field, errors in form.errors.items()
    )
    _refused(request, access, "key_source.register", reasons)
    return _source_page(request, access, kind, form, status=400)


def _saved_then_tested(request: HttpRequest, access: TenantAccess, source: KeySource) -> None:
    source = key_source_test(source=source, actor=Actor.for_user(request.user), request=request)
    if source.test_passed:
        messages.success(request, "Every check passed. You can enable your key.")
    else:
        messages.error(request, "Some checks failed: see what to change below.")


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
def azure_source(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return _source_page(request, access, SourceKind.AZURE_KEYVAULT, _azure_form(access))


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def azure_save_and_test(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = _azure_form(access, request.POST, request.FILES)
    if not form.is_valid():
        return _form_refused(request, access, SourceKind.AZURE_KEYVAULT, form)
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
            actor=Actor.for_user(request.user),
            request=request,
        )
    except KeyActionRefused as exc:
        _refused(request, access, "key_source.register", str(exc))
        return redirect("keys:azure", slug=access.tenant.slug)
    _saved_then_tested(request, access, source)
    return redirect("keys:azure", slug=access.tenant.slug)


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
def kmip_source(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return _source_page(request, access, SourceKind.KMIP, _kmip_form(access))


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def kmip_save_and_test(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = _kmip_form(access, request.POST, request.FILES)
    if not form.is_valid():
        return _form_refused(request, access, SourceKind.KMIP, form)
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
            tenant=access.tenant, entry=entry, actor=Actor.for_user(request.user), request=request
        )
    except RegistrationInvalid as exc:
        form.add_error(exc.field if exc.field in form.fields else None, str(exc))
        return _form_refused(request, access, SourceKind.KMIP, form)
    except KeyActionRefused as exc:
        _refused(request, access, "key_source.register", str(exc))
        return redirect("keys:kmip", slug=access.tenant.slug)
    _saved_then_tested(request, access, source)
    return redirect("keys:kmip", slug=access.tenant.slug)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def test_source(request: HttpRequest, access: TenantAccess, source_id: str) -> HttpResponse:
    """Test the saved settings again (the key store may have been fixed meanwhile)."""
    source = get_object_or_404(
        KeySource.objects.exclude(state__in=[SourceState.RETIRED, SourceState.REVOKED]),
        pk=source_id,
        tenant=access.tenant,
    )
    _saved_then_tested(request, access, source)
    return redirect(SOURCE_PAGES.get(source.kind, "keys:overview"), slug=access.tenant.slug)


# -- wrapped-key upload (bring your own key) ------------------------------------------


def _upload_page(
    request: HttpRequest, access: TenantAccess, form: KeyUploadForm | None = None, status: int = 200
) -> HttpResponse:
    tenant = access.tenant
    source = current_source(tenant, SourceKind.UPLOADED)
    versions = list(source.versions.order_by("-created")) if source else []
    context = {
        "tenant": tenant,
        "source": source,
        "versions": versions,
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
def upload_page(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return _upload_page(request, access)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
def download_import_parameters(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    try:
        key_import, bundle = key_import_create(
            tenant=access.tenant, actor=Actor.for_user(request.user), request=request
        )
    except UploadRefused as exc:
        _refused(request, access, "key_import.create", str(exc))
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
def upload_key(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = KeyUploadForm(request.POST, request.FILES)
    actor = Actor.for_user(request.user)
    if not form.is_valid():
        reasons = "; ".join(
            f"{field}: {' '.join(str(e) for e in errors)}" for field, errors in form.errors.items()
        )
        _refused(request, access, "key.upload", reasons)
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
    except UploadRefused as exc:
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


# -- lifecycle: confirm a rotation, revoke, restore -------------------------------------


@login_required
@require_GET
@with_tenant(Perm.MANAGE_KEYS)
def rotation_review(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    tenant = access.tenant
    source = (
        KeySource.objects.filter(tenant=tenant, state=SourceState.ACTIVE)
        .exclude(kind=SourceKind.LOCAL)
        .first()
    )
    context = {
        "tenant": tenant,
        "source": source,
        "pending": pending_version(source) if source else None,
        "current_versions": list(
            source.versions.filter(state=KekState.ACTIVE).order_by("-created") if source else []
        ),
        "history": rotation_history(tenant),
    }
    return render(request, "keys/rotation.html", context)


def _lifecycle(request: HttpRequest, access: TenantAccess, action: str, run: Any) -> HttpResponse:
    try:
        message = run()
    except LifecycleRefused as exc:
        _refused(request, access, action, str(exc))
    else:
        messages.success(request, message)
    return redirect("keys:overview", slug=access.tenant.slug)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def rotation_confirm(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    actor = Actor.for_user(request.user)
    return _lifecycle(
        request,
        access,
        "kek.confirm_rotation",
        lambda: kek_confirm_rotation(tenant=access.tenant, actor=actor, request=request),
    )


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def rotation_reject(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    actor = Actor.for_user(request.user)
    return _lifecycle(
        request,
        access,
        "kek.reject_rotation",
        lambda: kek_reject_rotation(tenant=access.tenant, actor=actor, request=request),
    )


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def revoke(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    actor = Actor.for_user(request.user)

    def run() -> str:
        tenant_revoke(
            tenant=access.tenant,
            actor=actor,
            confirm=request.POST.get("confirm", ""),
            request=request,
        )
        return "Revoked: Keyward can no longer decrypt this tenant's data."

    return _lifecycle(request, access, "key.revoke", run)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def restore(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    actor = Actor.for_user(request.user)

    def run() -> str:
        tenant_restore(tenant=access.tenant, actor=actor, request=request)
        return "Restored: the key passed its checks and the service runs again."

    return _lifecycle(request, access, "key.restore", run)


@login_required
@require_POST
@with_tenant(Perm.DESTROY_KEYS)
@sudo_required
def destroy(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    actor = Actor.for_user(request.user)

    def run() -> str:
        when = tenant_schedule_destroy(
            tenant=access.tenant,
            actor=actor,
            typed_name=request.POST.get("confirm", ""),
            request=request,
        )
        return f"The keys will be destroyed on {when:%Y-%m-%d %H:%M} UTC unless you cancel."

    return _lifecycle(request, access, "key.destroy_scheduled", run)


@login_required
@require_POST
@with_tenant(Perm.DESTROY_KEYS)
@sudo_required
def cancel_destroy(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    actor = Actor.for_user(request.user)

    def run() -> str:
        tenant_cancel_destroy(tenant=access.tenant, actor=actor, request=request)
        return "The destruction was cancelled."

    return _lifecycle(request, access, "key.destroy_cancelled", run)


@login_required
@require_POST
@with_tenant(Perm.REMOVE_BYOK)
@sudo_required
def remove_byok(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    actor = Actor.for_user(request.user)

    def run() -> str:
        tenant_remove_byok(tenant=access.tenant, actor=actor, request=request)
        return "Moving your data keys back to the vendor-managed key."

    return _lifecycle(request, access, "byok.remove", run)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def rotate_kek(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    actor = Actor.for_user(request.user)
    return _lifecycle(
        request,
        access,
        "kek.rotate_now",
        lambda: kek_rotate_now(tenant=access.tenant, actor=actor, request=request),
    )


@login_required
@require_POST
@with_tenant(Perm.MANAGE_KEYS)
@sudo_required
def switch_source(request: HttpRequest, access: TenantAccess, source_id: str) -> HttpResponse:
    source = get_object_or_404(KeySource, pk=source_id, tenant=access.tenant)
    actor = Actor.for_user(request.user)
    return _lifecycle(
        request,
        access,
        "kek.switch_source",
        lambda: kek_switch_source(
            tenant=access.tenant, source=source, actor=actor, request=request
        ),
    )
