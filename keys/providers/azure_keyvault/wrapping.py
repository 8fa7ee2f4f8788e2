"""The wrapped-DEK formats.

Version 2 (written now):
    blob = 0x02 | origin version (4, big-endian) | RSA-OAEP-256 ciphertext | tag (32) | origin (32)
    tag    = HMAC-SHA256(HKDF-SHA256(DEK, b"keyward azure wrap tag v2"),
                         b"keyward azure wrap v1" | encode_context | ciphertext)
    origin = HMAC-SHA256(vendor origin key of that version,
                         b"keyward azure origin v2" | encode_context | everything before it)
  RSA-OAEP wrapping needs only the public key, which is no secret: the tag,
  under the DEK, binds the context but proves nothing about who made the blob.
  The origin MAC, under a key only Keyward holds (derived from its root key),
  does: a blob made from the public key alone is refused before Key Vault is
  called. The tag's key is derived from the DEK for this purpose alone.

Version 1 (read only, until rewrapped):
    blob = 0x01 | ciphertext | HMAC-SHA256(DEK, b"keyward azure wrap v1" | context | ciphertext)
  Accepted only while the source still has such blobs (`accept_unsigned`).
"""

from __future__ import annotations

import hashlib
import hmac

from azure.keyvault.keys.crypto import KeyWrapAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keys.providers.base import Context, KeyMaterialInvalid
from keys.providers.context import encode_context

BLOB_VERSION = b"\x01"  # read only
BLOB_SIGNED = b"\x02"
_TAG_LABEL = b"keyward azure wrap v1"
_TAG_KEY_INFO = b"keyward azure wrap tag v2"
_ORIGIN_LABEL = b"keyward azure origin v2"
ORIGIN_PURPOSE = b"azure key vault wrap origin"
ORIGIN_VERSION_SIZE = 4
TAG_SIZE = 32
DEK_SIZE = 32
RSA_SIZES = (256, 384, 512)  # Key Vault RSA keys: 2048, 3072 or 4096 bits

ALG = KeyWrapAlgorithm.rsa_oaep_256


def encoded_context(context: Context) -> bytes:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise KeyMaterialInvalid("a wrap context maps text to text")
    return encode_context(context)


def tag_for(dek: bytes, context_bytes: bytes, ciphertext: bytes) -> bytes:
    """Version 1's tag, keyed by the DEK itself (read only)."""
    return hmac.new(dek, _TAG_LABEL + context_bytes + ciphertext, hashlib.sha256).digest()


def tag_v2(dek: bytes, context_bytes: bytes, ciphertext: bytes) -> bytes:
    key = HKDF(hashes.SHA256(), length=32, salt=None, info=_TAG_KEY_INFO).derive(dek)
    return hmac.new(key, _TAG_LABEL + context_bytes + ciphertext, hashlib.sha256).digest()


def origin_mac(origin_key: bytes, context_bytes: bytes, signed: bytes) -> bytes:
    return hmac.new(origin_key, _ORIGIN_LABEL + context_bytes + signed, hashlib.sha256).digest()
