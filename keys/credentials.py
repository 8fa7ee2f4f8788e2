"""A key source's credentials (client secrets, private keys, passwords), sealed.

They are kept as one JSON object wrapped under the vendor root key
(keys/vault.py), bound to the source's id, so a sealed value copied to another
registration does not open. Nothing here ever returns them to a page: the
console shows only that they are set (and non-secret facts kept in `config`).
"""

from __future__ import annotations

import hashlib
import json

from keys.models import KeySource
from keys.vault import Sealed, reseal, seal, unseal

_PURPOSE = "key_source.credentials"


class CredentialsMissing(Exception):
    """The registration has no credentials saved (enter them again)."""


def credentials_seal(source: KeySource, values: dict[str, str]) -> None:
    """Seal `values` onto the (unsaved) source and name them in its config.

    `credentials_ref` changes with every seal (random nonce), so saving new
    credentials always invalidates the last test, even when they are equal.
    """
    blob = json.dumps(values, sort_keys=True).encode()
    sealed = seal(purpose=_PURPOSE, owner=str(source.pk), value=blob)
    source.sealed_credentials = sealed.blob
    source.sealed_credentials_root = sealed.root_version
    source.config = {
        **source.config,
        "credentials_ref": hashlib.sha256(sealed.blob).hexdigest()[:16],
    }


def credentials_of(source: KeySource) -> dict[str, str]:
    if not source.sealed_credentials:
        raise CredentialsMissing(
            "No credentials are saved for this key: enter them again and save."
        )
    sealed = Sealed(bytes(source.sealed_credentials), source.sealed_credentials_root)
    values = json.loads(unseal(purpose=_PURPOSE, owner=str(source.pk), sealed=sealed))
    if not isinstance(values, dict):
        raise CredentialsMissing("The saved credentials are unreadable: enter them again.")
    return {str(k): str(v) for k, v in values.items()}


def credentials_reseal(source: KeySource) -> bool:
    """Move the source's sealed credentials to the current root key version (saved);
    `credentials_ref` stays, since the credentials themselves did not change."""
    if not source.sealed_credentials:
        return False
    sealed = Sealed(bytes(source.sealed_credentials), source.sealed_credentials_root)
    moved = reseal(purpose=_PURPOSE, owner=str(source.pk), sealed=sealed)
    if moved is None:
        return False
    source.sealed_credentials = moved.blob
    source.sealed_credentials_root = moved.root_version
    source.save(update_fields=["sealed_credentials", "sealed_credentials_root"])
    return True
