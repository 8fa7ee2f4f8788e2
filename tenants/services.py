from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest

from audit.services import Actor, record
from tenants.models import Membership, Role, Tenant

# What a new tenant needs besides its row (keys make its key source and first
# data key): registered at startup by the apps above, run in the create's
# transaction, so a tenant never exists without them.
TenantCreatedHook = Callable[[Tenant, Actor], object]
_created_hooks: list[TenantCreatedHook] = []


def tenant_created_register(hook: TenantCreatedHook) -> None:
    if hook not in _created_hooks:
        _created_hooks.append(hook)


@transaction.atomic
def tenant_create(*, name: str, slug: str, actor: Actor) -> Tenant:
    if Tenant.objects.filter(slug=slug).exists():
        raise ValidationError({"slug": f"A tenant with the slug {slug!r} exists already."})
    tenant = Tenant(name=name, slug=slug)
    tenant.full_clean()
    tenant.save()
    record(tenant=tenant, actor=actor, action="tenant.create", target=slug)
    for hook in _created_hooks:
        hook(tenant, actor)
    return tenant


def _last_owner(membership: Membership) -> bool:
    if membership.role != Role.OWNER:
        return False
    owners = Membership.objects.filter(tenant_id=membership.tenant_id, role=Role.OWNER)
    return owners.count() <= 1


@transaction.atomic
def membership_add(
    *,
    tenant: Tenant,
    user: AbstractBaseUser,
    role: str,
    actor: Actor,
    request: HttpRequest | None = None,
) -> Membership:
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    if Membership.objects.filter(tenant=tenant, user_id=user.pk).exists():
        raise ValidationError({"user": f"{user.get_username()} is a member already."})
    membership = Membership.objects.create(tenant=tenant, user_id=user.pk, role=role)
    record(
        tenant=tenant,
        actor=actor,
        action="membership.add",
        target=user.get_username(),
        details={"role": role},
        request=request,
    )
    return membership


@transaction.atomic
def membership_change_role(
    *, membership: Membership, role: str, actor: Actor, request: HttpRequest | None = None
) -> Membership:
    if role not in Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    # Lock the tenant, so that two owners demoting each other cannot both succeed.
    Tenant.objects.select_for_update().get(pk=membership.tenant_id)
    locked = Membership.objects.select_for_update().select_related("user").get(pk=membership.pk)
    old = locked.role
    if old == role:
        return locked
    if _last_owner(locked):
        raise ValidationError({"role": "A tenant needs at least one owner."})
    locked.role = role
    locked.save(update_fields=["role"])
    record(
        tenant=locked.tenant,
        actor=actor,
        action="membership.change_role",
        target=locked.user.get_username(),
        details={"from": old, "to": role},
        request=request,
    )
    return locked


@transaction.atomic
def membership_remove(
    *, membership: Membership, actor: Actor, request: HttpRequest | None = None
) -> None:
    Tenant.objects.select_for_update().get(pk=membership.tenant_id)
    locked = Membership.objects.select_for_update().select_related("user").get(pk=membership.pk)
    if _last_owner(locked):
        raise ValidationError("A tenant needs at least one owner.")
    username = locked.user.get_username()
    tenant = locked.tenant
    locked.delete()
    record(
        tenant=tenant,
        actor=actor,
        action="membership.remove",
        target=username,
        details={"role": locked.role},
        request=request,
    )
