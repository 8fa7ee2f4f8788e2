"""PyKMIP's client against the PyKMIP server that scripts/servers.sh starts for the suite.

The server requires mutual TLS. scripts/servers.sh makes the certificates for each run in
the folder KEYWARD_TEST_KMIP_DIR names: the server's CA, a client certificate whose CN
(keyward-test) owns the objects it creates, another client with another CN
(keyward-other), and for bad-input tests an unrelated CA, an expired client certificate and
one without the clientAuth extended key usage.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Import PyKMIP through this module: `import kmip` loads its objects, SQLAlchemy models
# declared the pre-2.0 way, which warns once (MovedIn20Warning).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from kmip.core import enums
    from kmip.core.enums import KMIPVersion
    from kmip.pie.client import ProxyKmipClient
    from kmip.pie.exceptions import KmipOperationFailure
    from kmip.pie.objects import SymmetricKey

__all__ = ["KMIPVersion", "KmipOperationFailure", "ProxyKmipClient", "SymmetricKey", "enums"]

HOST_VARIABLE = "KEYWARD_TEST_KMIP_HOST"
PORT_VARIABLE = "KEYWARD_TEST_KMIP_PORT"
DIR_VARIABLE = "KEYWARD_TEST_KMIP_DIR"
CLIENT_CN = "keyward-test"
OTHER_CLIENT_CN = "keyward-other"


@dataclass(frozen=True)
class KmipSettings:
    host: str
    port: int
    cert_dir: Path


def kmip_settings() -> KmipSettings:
    """Where the server is; fails the test when the suite was not started by `make test`."""
    values = {
        name: os.environ.get(name, "") for name in (HOST_VARIABLE, PORT_VARIABLE, DIR_VARIABLE)
    }
    missing = [name for name, value in values.items() if not value]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not set: run the suite with `make test`, which starts "
            "PyKMIP's server (scripts/servers.sh) and makes its certificates",
            pytrace=False,
        )
    cert_dir = Path(values[DIR_VARIABLE])
    if not (cert_dir / "ca.crt").is_file():
        pytest.fail(f"{DIR_VARIABLE}={cert_dir} holds no ca.crt", pytrace=False)
    return KmipSettings(values[HOST_VARIABLE], int(values[PORT_VARIABLE]), cert_dir)


def _pem(name: str) -> str:
    return str(kmip_settings().cert_dir / name)


def ca_cert() -> str:
    """The CA that signed the server's and the clients' certificates."""
    return _pem("ca.crt")


def other_ca_cert() -> str:
    """A CA unrelated to the server: verifying the server with it fails."""
    return _pem("other-ca.crt")


def client_cert() -> str:
    """Client certificate, CN=keyward-test, extendedKeyUsage=clientAuth."""
    return _pem("client.crt")


def client_key() -> str:
    return _pem("client.key")


def other_client_cert() -> str:
    """Client certificate with another CN (keyward-other): it does not own our objects."""
    return _pem("other-client.crt")


def other_client_key() -> str:
    return _pem("other-client.key")


def expired_client_cert() -> str:
    """Client certificate signed by the right CA whose validity ended yesterday."""
    return _pem("expired-client.crt")


def expired_client_key() -> str:
    return _pem("expired-client.key")


def no_client_auth_cert() -> str:
    """Client certificate signed by the right CA with extendedKeyUsage=serverAuth only."""
    return _pem("no-client-auth.crt")


def no_client_auth_key() -> str:
    return _pem("no-client-auth.key")


def kmip_client(**overrides: Any) -> Any:
    """A ProxyKmipClient for the test server, not yet open: use it as a context manager.

    `overrides` replace the constructor's arguments (hostname, port, cert, key, ca,
    kmip_version, ...). config_file="/dev/null" keeps it from reading ~/.pykmip/pykmip.conf.
    """
    settings = kmip_settings()
    arguments: dict[str, Any] = {
        "hostname": settings.host,
        "port": settings.port,
        "cert": client_cert(),
        "key": client_key(),
        "ca": ca_cert(),
        "config_file": "/dev/null",
        "kmip_version": KMIPVersion.KMIP_1_2,
    }
    arguments.update(overrides)
    return ProxyKmipClient(**arguments)


def legacy_cbc_blob(provider: Any, dek: bytes, context: dict[str, str]) -> bytes:
    """A blob as Keyward wrote it before version 3 (read only today): AES-CBC with
    PKCS5 padding on the server, then an HMAC tag keyed by the DEK itself."""
    import secrets

    from keys.providers.kmip.wrapping import CBC, encoded_context, hmac_tag

    uid = provider.current_version()
    iv = secrets.token_bytes(16)
    ciphertext, _ = provider._call(
        "Encrypt",
        uid,
        lambda c: c.encrypt(dek, uid=uid, cryptographic_parameters=CBC, iv_counter_nonce=iv),
    )
    ciphertext = bytes(ciphertext)
    return b"\x01" + iv + ciphertext + hmac_tag(dek, encoded_context(context), iv, ciphertext)
