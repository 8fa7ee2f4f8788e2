"""Blind-index digests: which fields can be looked up, and how values are normalised.

Framework-free. A lookup row holds HMAC-SHA-256(index key, field || 0x00 ||
normalised value): equal values of one field of one tenant give equal
digests, nothing else does (the field is in the MAC so an email and a UPN
with the same text do not match; the key is per tenant and per version).

Normalisation, per field (both when indexing and when looking up):
- email, user_principal_name: trimmed, lowercased (mailboxes are treated as
  case-insensitive, as every mail system the customers use does);
- sid, onprem_sid, cloud_sid, and the serial numbers and product id:
  trimmed, uppercased (S-1-5-21-..., serials are printed either way);
- name, full_name, entra_name, distinguished_name: Unicode NFKC, casefolded,
  runs of whitespace collapsed to one space, trimmed;
- public_ip: the canonical text of the address (IPv6 compressed), or the
  trimmed lowercased text if it is not an address.
`local_admins` (a list) is not indexed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import unicodedata
from collections.abc import Callable

_SPACES = re.compile(r"\s+")


def _email(value: str) -> str:
    return value.strip().lower()


def _upper(value: str) -> str:
    return value.strip().upper()


def _name(value: str) -> str:
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", value).casefold()).strip()


def _ip(value: str) -> str:
    try:
        return ipaddress.ip_address(value.strip()).compressed
    except ValueError:
        return value.strip().lower()


NORMALISERS: dict[str, Callable[[str], str]] = {
    "email": _email,
    "user_principal_name": _email,
    "sid": _upper,
    "onprem_sid": _upper,
    "cloud_sid": _upper,
    "bios_serial": _upper,
    "chassis_serial": _upper,
    "machine_serial": _upper,
    "hardware_product_id": _upper,
    "name": _name,
    "full_name": _name,
    "entra_name": _name,
    "distinguished_name": _name,
    "public_ip": _ip,
}
INDEXED_FIELDS = frozenset(NORMALISERS)


def normalise(field: str, value: str) -> str:
    return NORMALISERS[field](value)


def digest(key: bytes, field: str, value: str) -> bytes:
    """The lookup digest of `value` in `field` under an index key (32 bytes)."""
    message = field.encode() + b"\x00" + normalise(field, value).encode()
    return hmac.new(key, message, hashlib.sha256).digest()


def digests(key: bytes, fields: dict[str, str]) -> list[tuple[str, bytes]]:
    """(field, digest) for every indexed, non-empty field of a record."""
    return [
        (name, digest(key, name, value))
        for name, value in sorted(fields.items())
        if name in NORMALISERS and normalise(name, value)
    ]
