"""The wrapped-key formats (blob versions 1, 2 and 3), the context bytes and the tags."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keys.providers.base import Context, KeyMaterialInvalid
from keys.providers.context import encode_context
from keys.providers.kmip.pykmip import enums

DEK_BYTES = 32
BLOB_SERVER_CBC = 1  # read only: written before version 3
BLOB_LOCAL = 2
BLOB_SERVER = 3
_WRAP_LABEL = b"keyward kmip wrap v1"
LOCAL_LABEL = b"keyward kmip local v1"
IV_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 32
CBC_CIPHERTEXT_BYTES = DEK_BYTES + 16  # PKCS5 always pads: a full block after 32 bytes
CBC_BLOB_BYTES = 1 + IV_BYTES + CBC_CIPHERTEXT_BYTES + TAG_BYTES
CTR_CIPHERTEXT_BYTES = DEK_BYTES  # no padding: the server cannot refuse a ciphertext
SERVER_BLOB_BYTES = 1 + IV_BYTES + CTR_CIPHERTEXT_BYTES + TAG_BYTES
LOCAL_BLOB_BYTES = 1 + NONCE_BYTES + DEK_BYTES + 16

CBC = {
    "cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
    "block_cipher_mode": enums.BlockCipherMode.CBC,
    "padding_method": enums.PaddingMethod.PKCS5,
}
CTR = {
    "cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
    "block_cipher_mode": enums.BlockCipherMode.CTR,
}
_TAG_KEY_INFO = b"keyward kmip wrap tag v3"

TAMPERED = "the wrapped key was not wrapped under this context or key, or was tampered with"


def encoded_context(context: Context) -> bytes:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
        raise KeyMaterialInvalid("an encryption context maps text to text")
    return encode_context(context)


def hmac_tag(dek: bytes, aad: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """Blob version 1's tag, keyed by the DEK itself (read only)."""
    return hmac.new(dek, _WRAP_LABEL + aad + iv + ciphertext, hashlib.sha256).digest()


def tag_v3(dek: bytes, aad: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    """Blob version 3's tag, under a key derived from the DEK for this one purpose
    (HKDF-SHA256, its own label): the DEK itself is only ever HKDF input."""
    key = HKDF(hashes.SHA256(), length=32, salt=None, info=_TAG_KEY_INFO).derive(dek)
    return hmac.new(key, _WRAP_LABEL + aad + iv + ciphertext, hashlib.sha256).digest()
