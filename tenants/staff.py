"""Who the vendor's support staff are: one predicate, read by the tenant checks
(tenants.permissions) and by what lists tenants (tenants.selectors)."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser


def is_support_staff(user: AbstractBaseUser | AnonymousUser) -> bool:
    return bool(user.is_authenticated and getattr(user, "is_staff", False))
