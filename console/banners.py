"""What the banner says for each service state. Later work only sets the state."""

from __future__ import annotations

from dataclasses import dataclass

from tenants.models import ServiceState, Tenant


@dataclass(frozen=True)
class Banner:
    level: str  # "info", "warning" or "danger"
    title: str
    text: str


_BANNERS: dict[str, Banner] = {
    ServiceState.MIGRATING: Banner(
        "warning",
        "Moving your data to your key",
        "New data is held until the move finishes; reads serve data stored before it began.",
    ),
    ServiceState.ROTATION_PENDING: Banner(
        "warning",
        "Service paused: a key rotation needs your confirmation",
        "Your key changed in your key store. Review the new version and confirm it "
        "to resume the service.",
    ),
    ServiceState.REWRAPPING: Banner(
        "info",
        "Rewrapping data keys",
        "Your data keys are being wrapped under the confirmed key version.",
    ),
    ServiceState.REVOKED: Banner(
        "danger",
        "Key revoked: your data is unreadable",
        "Keyward cannot decrypt this tenant's data. Restore access to the key to resume.",
    ),
    ServiceState.MIGRATING_BACK: Banner(
        "warning",
        "Moving your data back to the vendor-managed key",
        "New data is held until the move finishes.",
    ),
    ServiceState.DESTROYED: Banner(
        "danger",
        "Keys destroyed",
        "This tenant's keys were destroyed; its data can never be decrypted again.",
    ),
    ServiceState.DEGRADED: Banner(
        "warning",
        "Key store unreachable",
        "Keyward cannot reach your key store. Cached keys keep serving for a while; "
        "service recovers by itself when the key store answers again.",
    ),
}


def banner_for(tenant: Tenant) -> Banner | None:
    return _BANNERS.get(tenant.state)
