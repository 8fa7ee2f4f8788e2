"""The tenant's Data page: records per data key, lookup keys, API tokens.

Every member who may see the tenant sees the token list (names, prefixes,
scopes, last use: metadata, never a secret), so that key administrators and
auditors know which integrations a key change or revocation will stop.
Only owners create and revoke tokens (a token reads decrypted data), in sudo
mode. A new token's secret is in the one response that answers the create,
never in a session, a message or a log.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from api.forms import ApiTokenForm
from api.selectors import api_token_for_tenant, api_tokens_for_tenant
from api.tokens import IssuedToken, api_token_create, api_token_revoke
from keys.errors import KeyActionRefused
from keys.providers.base import KeyProviderError
from objects.views import data_section_context
from records.indexkeys import index_key_rotate
from records.selectors import records_overview
from tenants.display import Act, state_permits
from tenants.permissions import Perm, TenantAccess, with_tenant
from tenants.sudo import sudo_required


def _page(
    request: HttpRequest,
    access: TenantAccess,
    *,
    form: ApiTokenForm | None = None,
    issued: IssuedToken | None = None,
    status: int = 200,
) -> HttpResponse:
    context: dict[str, Any] = {
        "tenant": access.tenant,
        "records": records_overview(access.tenant),
        "tokens": api_tokens_for_tenant(access.tenant),
        "can_manage_tokens": access.can(Perm.MANAGE_API_TOKENS),
        "form": form or ApiTokenForm(),
        "issued": issued,
        **data_section_context(access),
    }
    response = render(request, "console/data.html", context, status=status)
    if issued is not None:
        response["Cache-Control"] = "no-store"
    return response


@login_required
@require_GET
@with_tenant(Perm.VIEW_STATUS)
def data_page(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    return _page(request, access)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_API_TOKENS)
@sudo_required
def token_create(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    form = ApiTokenForm(request.POST)
    if not form.is_valid():
        return _page(request, access, form=form, status=400)
    try:
        issued = api_token_create(
            tenant=access.tenant,
            actor=access.actor(request.user),
            name=form.cleaned_data["name"],
            scopes=list(form.cleaned_data["scopes"]),
            expires_at=form.expires_at(),
            created_by=request.user,
            request=request,
        )
    except ValidationError as exc:
        form.add_error(None, exc)
        return _page(request, access, form=form, status=400)
    return _page(request, access, issued=issued)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_API_TOKENS)
@sudo_required
def token_revoke(request: HttpRequest, access: TenantAccess, token_id: str) -> HttpResponse:
    token = api_token_for_tenant(access.tenant, str(token_id))
    if token is None:
        raise Http404
    api_token_revoke(
        tenant=access.tenant, token=token, actor=access.actor(request.user), request=request
    )
    messages.success(request, f"Token {token.name} (kw_{token.prefix}) is revoked.")
    return redirect("data:overview", slug=access.tenant.slug)


@login_required
@require_POST
@with_tenant(Perm.MANAGE_API_TOKENS)
@sudo_required
@state_permits(Act.ROTATE_LOOKUP_KEY, audit="blind_index.rotate", back="data:overview")
def lookup_key_rotate(request: HttpRequest, access: TenantAccess) -> HttpResponse:
    try:
        key = index_key_rotate(
            tenant=access.tenant, actor=access.actor(request.user), request=request
        )
    except (KeyActionRefused, KeyProviderError) as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Lookup key v{key.version} is being built.")
    return redirect("data:overview", slug=access.tenant.slug)
