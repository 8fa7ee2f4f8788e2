"""A key on the customer's KMIP server as the KEK, through PyKMIP's client.

Framework-free: the configuration arrives as plain values (`KmipConfig`,
`KmipCredentials`), and nothing here imports Django.

Connection
- Mutual TLS with a context built here: TLS 1.2 or later, the customer's CA as
  the only trust anchor, the server certificate checked against the host name
  the customer entered. The client certificate and its (possibly encrypted)
  private key reach OpenSSL through anonymous memory files (`memfd_create`),
  so no key, decrypted or not, is ever written to disk.
- SSRF: every connection resolves the host again, refuses loopback, private,
  link-local, multicast, reserved and unspecified addresses (unless the
  operator allows private ones), and connects to the address it checked, not
  to the name again, so a DNS answer that changes between the check and the
  connection (rebinding) cannot redirect us.
- PyKMIP's `KMIPProxy` keeps its message encoding; only its `open()` is
  replaced, handing it the socket made here (PyKMIP's own TLS code uses the
  deprecated `PROTOCOL_TLS` and reads certificates from file paths).
- One connection per provider, reused under a lock: a KMIP request on an open
  connection is one round trip, a new connection three more (TCP, then two for
  the TLS 1.2 handshake) plus the server's private-key operation. Measured on
  loopback against PyKMIP's server: 7 ms per Encrypt on an open connection,
  17 ms with a new connection each time; across a WAN the gap grows with the
  round trips. Requests are serialized per provider (PyKMIP's client is not
  thread-safe). A connection idle for a minute, or that the server has closed,
  is replaced before use; a request that is safe to repeat is retried once on a
  new connection when a reused one turns out dead (Create, Activate, Revoke and
  Destroy are not repeated).
- The protocol version is the highest of KMIP 1.0 to 1.4 that the server lists
  in DiscoverVersions (KMIP 1.0 when it cannot answer).

Wrapping (blob version 3, the server encrypts)
    blob = 0x03 | counter (16) | ciphertext (32) | tag (32)
    ciphertext = KMIP Encrypt(DEK) with AES-CTR from the random initial counter
    tag = HMAC-SHA256(key=HKDF-SHA256(DEK, info=b"keyward kmip wrap tag v3"),
                      b"keyward kmip wrap v1" | encode_context | counter | ciphertext)
  A DEK is exactly two AES blocks, so no padding is needed, and CTR decrypts
  any 32 bytes: the server cannot refuse a blob for what it holds, so its
  answer tells nothing about a tampered blob (no padding oracle). CTR has
  neither integrity nor associated data (and PyKMIP's client cannot carry a
  GCM tag), so the context is bound and tampering detected here: only the
  holder of the DEK can make a valid tag. The tag key is derived from the DEK
  for this purpose alone; the DEK itself only keys AES-GCM. A random 128-bit
  initial counter per wrap makes a repeated counter block negligible.
  Every bad blob costs exactly one Decrypt and ends in the same
  `KeyMaterialInvalid`, whatever is wrong with it.

Wrapping (blob version 1, read only)
    blob = 0x01 | iv (16) | AES-CBC-PKCS5 ciphertext (48) | HMAC-SHA256(key=DEK, ...)
  Written before version 3. A server refusing its padding is treated exactly
  like a bad tag (one operation, one answer, a tag still computed); such blobs
  are rewrapped to version 3 (`needs_rewrap`).

Wrapping (blob version 2, servers without Encrypt/Decrypt)
    blob = 0x02 | nonce (12) | AES-256-GCM(key, nonce, DEK, aad) (48)
    aad  = b"keyward kmip local v1" | encode_context
  The key is fetched with Get (after checking that it is Active) and kept in
  process memory only, for `key_cache_seconds`; never on disk.

Errors, onto base.py's contract
- `KeyUnavailable`: connection refused, timeouts, DNS failures, the host now
  resolving to a refused address, TLS failures (`KmipTlsError`, whose `problem`
  says what to fix), and KMIP failures not listed below. A TLS failure is not
  treated as the customer cutting access: an expired client certificate is
  ours to renew, and the tenant stays degraded (caches serve) meanwhile.
- `KeyAccessDenied`: ITEM_NOT_FOUND, PERMISSION_DENIED, OBJECT_ARCHIVED,
  OBJECT_DESTROYED, NOT_AUTHORISED, AUTHENTICATION_NOT_SUCCESSFUL and the key
  not being Active (revoked, destroyed, deactivated, compromised, pre-active).
- `KeyMaterialInvalid`: a blob that is malformed, tampered or wrapped under
  another context, a DEK that is not 32 bytes, a key that is not AES-256.
  A failing Decrypt of a version 3 blob is the server's or the key's fault
  (CTR cannot fail on content) and raised as such; no extra operation ever
  runs to tell the two apart.
No message contains key material, and nothing is logged at a level that
could: PyKMIP's wire logger (hex dumps of messages) is replaced by a silent one.

Modules: `config` (host, port and names, the SSRF checks), `material` (the
uploaded certificates and key), `errors` (KMIP and TLS failures onto base.py's
errors), `transport` (TLS context, socket, PyKMIP's client), `wrapping` (blob
formats, context bytes, HMAC tag), `provider` (`KmipProvider`), and `pykmip`
(PyKMIP, imported quietly).
"""

from __future__ import annotations

from keys.providers.kmip.config import (
    InvalidKmipConfig,
    InvalidKmipMaterial,
    KmipConfig,
    KmipCredentials,
    validate_host,
)
from keys.providers.kmip.errors import (
    KmipAccessDenied,
    KmipConnectError,
    KmipTlsError,
    KmipUnavailable,
)
from keys.providers.kmip.material import ClientMaterialInfo, validate_client_material
from keys.providers.kmip.provider import (
    CHECK_KEY_ACTIVE,
    CHECK_OPERATIONS,
    CHECK_ROUND_TRIP,
    CHECK_TLS,
    CHECK_VERSIONS,
    KmipProvider,
)
from keys.providers.kmip.wrapping import DEK_BYTES

__all__ = [
    "CHECK_KEY_ACTIVE",
    "CHECK_OPERATIONS",
    "CHECK_ROUND_TRIP",
    "CHECK_TLS",
    "CHECK_VERSIONS",
    "DEK_BYTES",
    "ClientMaterialInfo",
    "InvalidKmipConfig",
    "InvalidKmipMaterial",
    "KmipAccessDenied",
    "KmipConfig",
    "KmipConnectError",
    "KmipCredentials",
    "KmipProvider",
    "KmipTlsError",
    "KmipUnavailable",
    "validate_client_material",
    "validate_host",
]
