"""The Tenant admin: registered here, in the shell, because a tenant's settings
change through services of two layers (the key-cache TTL is the key layer's:
it may bump the epoch and publish it to every process), and only the shell may
import both.

Nothing the state machine, the key services or the destruction waiting period
govern can be edited here: state and its time, the key epoch and the scheduled
destruction are read-only (they change through tenants/states.py and the
console's key pages, each with its own audit event). The fields that may change
go through their services, each recording its own event.

"Add tenant" stays, but only as `tenant_onboard`, the service behind
`manage.py tenant_create`: the tenant gets its key source and first data key
and the first owner an invitation, so a tenant made here is as complete as one
made on the command line (a bare row answered 500 on every key page).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from audit.services import Actor
from keys.services.deks import tenant_set_dek_cache_ttl
from tenants.admin import MembershipInline
from tenants.display import Act, state_refusal
from tenants.models import Tenant
from tenants.services import tenant_onboard, tenant_rename, tenant_set_dek_rotation_days

# Changed on the change page, each through its service (see `save_model`).
EDITABLE = ("name", "dek_cache_ttl", "dek_rotation_days")
# Governed elsewhere: never editable here.
GOVERNED = (
    "state",
    "state_changed_at",
    "key_epoch",
    "destroy_after",
    # The lockbox's rules are the tenant owners' (their Access page), not the vendor's.
    "support_access",
    "support_approvals",
    "support_max_hours",
    # The BYOK add-on is support's, on the support console (tenant_addon_enable/disable).
    "byok_addon",
)


class TenantAddForm(forms.ModelForm):
    owner_email = forms.EmailField(
        label="First owner's email", help_text="They get an invitation to set a password."
    )

    class Meta:
        model = Tenant
        fields = ("name", "slug")


class TenantChangeForm(forms.ModelForm):
    class Meta:
        model = Tenant
        fields = EDITABLE

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if "dek_cache_ttl" in self.changed_data:
            # The same table the key pages obey: e.g. no TTL change once destroyed.
            refusal = state_refusal(self.instance, Act.SET_CACHE_TTL)
            if refusal:
                self.add_error("dek_cache_ttl", refusal)
        return data


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "state", "state_changed_at", "byok_addon", "created")
    search_fields = ("name", "slug")
    inlines = [MembershipInline]

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        kwargs["form"] = TenantChangeForm if obj is not None else TenantAddForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ("name", "slug", "owner_email")
        return (*EDITABLE, "slug", *GOVERNED, "created")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ()
        # The slug is in every URL, audit target and per-tenant setting: fixed once made.
        return ("slug", *GOVERNED, "created")

    def get_prepopulated_fields(self, request: HttpRequest, obj: Any = None) -> dict[str, Any]:
        return {"slug": ("name",)} if obj is None else {}

    def save_model(self, request: HttpRequest, obj: Tenant, form: Any, change: bool) -> None:
        actor = Actor.for_user(request.user, support=True)
        if not change:
            tenant, invitation = tenant_onboard(
                name=obj.name,
                slug=obj.slug,
                owner_email=form.cleaned_data["owner_email"],
                actor=actor,
                site_url=request.build_absolute_uri("/"),
                request=request,
            )
            obj.pk = tenant.pk
            messages.info(request, f"Invitation emailed to {invitation.email} as owner.")
            return
        # `obj` holds the form's values; each changed one goes through its service.
        changed = set(form.changed_data)
        if "name" in changed:
            tenant_rename(tenant=obj, name=obj.name, actor=actor, request=request)
        if "dek_cache_ttl" in changed:
            tenant_set_dek_cache_ttl(
                tenant=obj, ttl=obj.dek_cache_ttl, actor=actor, request=request
            )
        if "dek_rotation_days" in changed:
            tenant_set_dek_rotation_days(
                tenant=obj, days=obj.dek_rotation_days, actor=actor, request=request
            )
        obj.refresh_from_db()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A tenant's audit trail outlives it; tenants are destroyed by crypto-shredding.
        return False
