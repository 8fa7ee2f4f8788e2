from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from audit.services import Actor
from tenants.models import AccessDecision, AccessRequest, Invitation, Membership
from tenants.services import membership_add, membership_change_role, membership_remove


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Memberships change through their own page so that every change is audited.
        return False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Invitation)
class InvitationAdmin(admin.ModelAdmin):
    """Invitations are sent and revoked from the tenant's Members page (or by
    `manage.py tenant_create`), where they are audited; here they are read only."""

    list_display = ("email", "tenant", "role", "invited_by_display", "created", "expires_at")
    list_filter = ("role",)
    search_fields = ("email", "tenant__name")
    exclude = ("token_sha256",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "tenant", "role", "created")
    list_filter = ("role", "tenant")
    search_fields = ("user__username", "tenant__name")
    autocomplete_fields = ["user"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        # Approvers of vendor support's access are the tenant owners' choice (Access page).
        if obj is None:
            return ("approves_support_access",)
        return ("user", "tenant", "approves_support_access")

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        actor = Actor.for_user(request.user, support=True)
        if change:
            membership_change_role(membership=obj, role=obj.role, actor=actor, request=request)
        else:
            saved = membership_add(
                tenant=obj.tenant, user=obj.user, role=obj.role, actor=actor, request=request
            )
            obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: Membership) -> None:
        membership_remove(
            membership=obj, actor=Actor.for_user(request.user, support=True), request=request
        )

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for membership in queryset:
            self.delete_model(request, membership)


class AccessDecisionInline(admin.TabularInline):
    model = AccessDecision
    extra = 0
    fields = ("user_display", "approved", "comment", "created")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AccessRequest)
class AccessRequestAdmin(admin.ModelAdmin):
    """Vendor support's access requests and grants: a history to read. They are asked
    for on the support pages and answered by the tenant's approvers, never here."""

    list_display = ("tenant", "requester_display", "reason", "state", "created", "ends_at")
    list_filter = ("state", "reason")
    search_fields = ("tenant__name", "requester_display", "case_reference")
    inlines = [AccessDecisionInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
