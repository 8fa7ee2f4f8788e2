"""The bring-your-own-key add-on: who had it before it was licensed.

Kept apart from the services so the data migration can call it with the
historical models it is given (a migration must not use today's models).
"""

from __future__ import annotations

from typing import Any

# Key source kinds that are the customer's own key (keys.models.SourceKind minus "local";
# spelled out here because tenants sits below keys).
OWN_KEY_KINDS = ("aws_kms", "azure_keyvault", "kmip", "uploaded")
# A registration still in play: being set up, in use, or cut off and waiting for a restore.
LIVE_SOURCE_STATES = ("draft", "tested", "active", "revoked")


def grant_addon_to_own_key_tenants(tenant_model: Any, key_source_model: Any) -> int:
    """Turn the add-on on for every tenant that already brought a key of its own.

    A tenant is kept on its key when it is anywhere but vendor-managed (moving,
    protected, paused, revoked...) or has a customer key registered (even one
    not enabled yet): nobody loses a key they set up before the add-on existed.
    Returns how many tenants were changed; running it again changes none.
    """
    with_own_key = key_source_model.objects.filter(
        kind__in=OWN_KEY_KINDS, state__in=LIVE_SOURCE_STATES
    ).values("tenant_id")
    candidates = tenant_model.objects.filter(byok_addon=False)
    return int(
        candidates.exclude(state="vendor_managed").update(byok_addon=True)
        + candidates.filter(pk__in=with_own_key).update(byok_addon=True)
    )
