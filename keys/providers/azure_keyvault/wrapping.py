"""The wrapped-DEK format: an RSA-OAEP-256 ciphertext and an HMAC tag over the context."""

from __future__ import annotations

import hashlib
import hmac

from azure.keyvault.keys.crypto import KeyWrapAlgorithm

from keys.providers.base import Context, KeyMaterialInvalid
from keys.providers.context import encode_context

BLOB_VERSION = b"\x01"
_TAG_LABEL = b"keyward azure wrap v1"
TAG_SIZE = 32
DEK_SIZE = 32
RSA_SIZES = (256, 384, 512)  # Key Vault RSA keys: 2048, 3072 or 4096 bits

ALG = KeyWrapAlgorithm.rsa_oaep_256


def encoded_context(context: Context) -> bytes:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise KeyMaterialInvalid("a wrap context maps text to text")
    return encode_context(context)


def tag_for(dek: bytes, context_bytes: bytes, ciphertext: bytes) -> bytes:
    return hmac.new(dek, _TAG_LABEL + context_bytes + ciphertext, hashlib.sha256).digest()
