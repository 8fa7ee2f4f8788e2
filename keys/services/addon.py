"""The BYOK add-on gate: bringing, testing and enabling a key of one's own needs it."""

from __future__ import annotations

from keys.errors import KeyActionRefused
from tenants.models import Tenant

ADDON_REFUSAL = (
    "Bringing your own key is a licensed add-on that this tenant does not have. "
    "Ask for it with 'Request the add-on' on the Keys page; the vendor's support team turns it on."
)


def byok_addon_required(tenant: Tenant) -> None:
    """Refuse unless the tenant has the add-on now (read fresh: support may have just changed it
    while the page was open)."""
    if not Tenant.objects.filter(pk=tenant.pk, byok_addon=True).exists():
        raise KeyActionRefused(ADDON_REFUSAL)
