"""The typed confirmation of an action that can lose data: the tenant's identifier.

Every such action (revoke, destroy) asks for the same word in the same sentence,
so nobody has to guess whether this form wants the name or the identifier; the
forms' labels say the same sentence.
"""

from __future__ import annotations

from tenants.models import Tenant


def confirmation_prompt(tenant: Tenant) -> str:
    return f"Type the tenant's identifier, {tenant.slug}, to confirm."


def confirmation_matches(tenant: Tenant, typed: str) -> bool:
    return typed.strip() == tenant.slug
