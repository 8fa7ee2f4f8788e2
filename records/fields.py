"""The personal fields Keyward protects, per record kind (the Nexthink PII list)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

DEVICE_FIELDS = (
    "sid",
    "name",
    "distinguished_name",
    "bios_serial",
    "chassis_serial",
    "machine_serial",
    "hardware_product_id",
    "public_ip",
    "local_admins",
)
USER_FIELDS = (
    "sid",
    "name",
    "entra_name",
    "email",
    "distinguished_name",
    "full_name",
    "cloud_sid",
    "user_principal_name",
    "onprem_sid",
)
FIELDS_BY_KIND: dict[str, tuple[str, ...]] = {"device": DEVICE_FIELDS, "user": USER_FIELDS}
# Every encrypted column of archive_record, in a fixed order.
ALL_FIELDS: tuple[str, ...] = tuple(dict.fromkeys(DEVICE_FIELDS + USER_FIELDS))

PII_FIELD = "pii"  # the field name every record's sealed personal fields are bound to


@dataclass(frozen=True)
class NewRecord:
    """A record to create: its kind, the caller's id for it and its personal fields."""

    kind: str
    external_id: str
    fields: dict[str, str] = field(default_factory=dict)
    # Chosen by the caller when it must name the record before it exists (the
    # API stores its Idempotency-Key outcome first); else chosen at insert.
    uid: uuid.UUID | None = None
