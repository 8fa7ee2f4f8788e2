"""The wrapped-key formats (blob versions 1 and 2), the context bytes and the HMAC tag."""

from __future__ import annotations

import hashlib
import hmac

from keys.providers.base import Context, KeyMaterialInvalid
from keys.providers.context import encode_context
from keys.providers.kmip.pykmip import enums

DEK_BYTES = 32
BLOB_SERVER = 1
BLOB_LOCAL = 2
_WRAP_LABEL = b"keyward kmip wrap v1"
LOCAL_LABEL = b"keyward kmip local v1"
IV_BYTES = 16
NONCE_BYTES = 12
_TAG_BYTES = 32
CBC_CIPHERTEXT_BYTES = DEK_BYTES + 16  # PKCS5 always pads: a full block after 32 bytes
SERVER_BLOB_BYTES = 1 + IV_BYTES + CBC_CIPHERTEXT_BYTES + _TAG_BYTES
LOCAL_BLOB_BYTES = 1 + NONCE_BYTES + DEK_BYTES + 16

CBC = {
    "cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
    "block_cipher_mode": enums.BlockCipherMode.CBC,
    "padding_method": enums.PaddingMethod.PKCS5,
}

TAMPERED = "the wrapped key was not wrapped under this context or key, or was tampered with"


def encoded_context(context: Context) -> bytes:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise KeyMaterialInvalid("an encryption context maps text to text")
    return encode_context(context)


def hmac_tag(dek: bytes, aad: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    return hmac.new(dek, _WRAP_LABEL + aad + iv + ciphertext, hashlib.sha256).digest()
