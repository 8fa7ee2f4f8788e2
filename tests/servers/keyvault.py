"""A small Azure Key Vault (keys) REST server for tests.

The real ``azure-keyvault-keys`` clients (``KeyClient``, ``CryptographyClient``) talk to it over
HTTPS with a CA generated per run. No emulator exists for Key Vault; this answers the subset of
the REST API that a BYOK provider uses (get / list versions / wrap / unwrap / update) and lets
tests inject faults (403, 429, 500, stalls), disable or delete keys and inspect the requests seen.

Usage::

    with KeyVaultServer() as kv:
        kv.create_key("tenant-kek")
        client = KeyClient(kv.url, FakeCredential(), verify_challenge_resource=False,
                           connection_verify=kv.ca_path)
        key = client.get_key("tenant-kek")

With Entra apps registered (``register_app``), the same server also answers the two Microsoft
Entra ID endpoints that ``azure-identity``/MSAL use for the client credentials flow, under
``kv.authority`` (pass it as ``authority=`` with ``disable_instance_discovery=True`` and
``connection_verify=kv.ca_path``)::

    GET  /{tenant}/v2.0/.well-known/openid-configuration
    POST /{tenant}/oauth2/v2.0/token   (a client secret, or a client assertion JWT signed
                                        by a registered certificate: RS256 with x5t, or
                                        PS256 with x5t#S256)

Errors are Entra's: an unknown tenant is 400 invalid_tenant (AADSTS90002), an unknown app 400
unauthorized_client (AADSTS700016), a wrong secret 401 invalid_client (AADSTS7000215), an
unregistered or expired certificate or a bad assertion 401 invalid_client (AADSTS700027). Once any
app is registered, the Key Vault routes accept only unexpired tokens issued here for the vault's
tenant (``kv.tenant_id``), and answer 403 ForbiddenByRbac to apps refused with ``deny_app``.

Production code must not import this module.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hmac
import ipaddress
import json
import re
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
RESOURCE = "https://vault.azure.net"
CHALLENGE = (
    f'Bearer authorization="https://login.microsoftonline.com/{TENANT_ID}", resource="{RESOURCE}"'
)
DEFAULT_RSA_OPS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
DEFAULT_EC_OPS = ["sign", "verify"]
_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}
# Operation names, as used by fail()/stall() and RecordedRequest.op.
OPERATIONS = ("get", "list_versions", "update", "wrapkey", "unwrapkey")
# Entra ID operations: only failed or stalled when named (op=None means the Key Vault ones).
ENTRA_OPERATIONS = ("openid_configuration", "token")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_LIFETIME = 3599


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def _fixed_int_bytes(value: int, length: int) -> bytes:
    return value.to_bytes(length, "big")


def _now() -> int:
    return int(time.time())


class FakeCredential:
    """A TokenCredential that hands out a fixed bearer token without contacting Entra ID."""

    def __init__(self, token: str = "fake-token", expires_in: int = 3600) -> None:  # noqa: S107
        self.token = token
        self.expires_in = expires_in
        self.calls: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls.append(scopes)
        return AccessToken(self.token, _now() + self.expires_in)

    # azure-core >= 1.31 prefers get_token_info when present; keep to the classic protocol.
    def close(self) -> None:
        pass

    def __enter__(self) -> FakeCredential:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@dataclass
class KeyVersion:
    name: str
    version: str
    kty: str  # "RSA" or "EC"
    private_key: Any  # rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    key_ops: list[str]
    enabled: bool = True
    exp: int | None = None
    nbf: int | None = None
    created: int = field(default_factory=_now)
    updated: int = field(default_factory=_now)
    recovery_level: str = "Recoverable+Purgeable"
    tags: dict[str, str] = field(default_factory=dict)
    crv: str | None = None


@dataclass
class EntraApp:
    """An app registration: a client id in a tenant, with client secrets and/or certificates."""

    tenant_id: str
    client_id: str
    secrets: list[str] = field(default_factory=list)
    # SHA-1 thumbprint (lowercase hex) -> certificate, as uploaded to the app registration.
    certificates: dict[str, x509.Certificate] = field(default_factory=dict)


@dataclass
class IssuedToken:
    tenant_id: str
    client_id: str
    resource: str
    expires_at: float


def make_client_certificate(
    common_name: str = "keyward-test-app",
    *,
    key: rsa.RSAPrivateKey | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key_size: int = 2048,
) -> bytes:
    """A self-signed client certificate and its unencrypted private key, as one PEM.

    That is what a customer uploads for an app registration's certificate credential.
    """
    now = dt.datetime.now(dt.UTC)
    if key is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_thumbprint(certificate: x509.Certificate | bytes) -> str:
    """The SHA-1 thumbprint (uppercase hex, as the Azure portal shows it) of a certificate/PEM."""
    if isinstance(certificate, bytes):
        certificate = x509.load_pem_x509_certificate(certificate)
    return certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303


class EntraError(Exception):
    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.code = code
        self.description = description


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    op: str | None
    key_name: str | None
    key_version: str | None
    authorized: bool
    status: int = 0


@dataclass
class _Fault:
    op: str | None  # None: every operation
    status: int  # 0 for a stall
    remaining: int | None  # None: until reset
    retry_after: int | None = None
    stall_seconds: float = 0.0
    code: str = ""
    message: str = ""


class KeyVaultError(Exception):
    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.inner = inner


def _not_found(name: str, version: str | None = None) -> KeyVaultError:
    ident = f"{name}/{version}" if version else name
    return KeyVaultError(
        404, "KeyNotFound", f"A key with (name/id) {ident} was not found in this key vault."
    )


def _make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """Generate a CA and a server certificate for 127.0.0.1/localhost; return (ca, cert, key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyward test Key Vault CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    cert_path = directory / "server.pem"
    key_path = directory / "server-key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    kv: KeyVaultServer
    ssl_context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the per-connection thread, so a slow client cannot
        # block the accept loop.
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        except (ssl.SSLError, OSError):
            pass
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out and hang up are expected


_ENTRA_PATH = re.compile(
    r"^/(?P<tenant>[0-9A-Za-z.-]+)/(?P<op>v2\.0/\.well-known/openid-configuration|oauth2/v2\.0/token)$"
)
# The Host header a loopback client sends (the server itself, or a proxy in front of it).
_LOOPBACK_HOST = re.compile(r"(?:127\.0\.0\.1|localhost):[0-9]{1,5}")
_PATH = re.compile(r"^/keys/(?P<name>[0-9A-Za-z-]+)(?:/(?P<rest>[^/]*)(?:/(?P<action>[^/]+))?)?$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _TLSServer
    server_version = "FakeKeyVault/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.server.kv._handle(self, raw)

    do_GET = _dispatch
    do_POST = _dispatch
    do_PATCH = _dispatch
    do_PUT = _dispatch
    do_DELETE = _dispatch

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True


class KeyVaultServer:
    """An in-process HTTPS server speaking enough of the Key Vault keys REST API for tests.

    Start/stop with ``start()``/``stop()`` or use it as a context manager. All test controls
    are thread-safe and take effect on the next request.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._port = port
        self._lock = threading.RLock()
        self._request = threading.local()  # per handler thread: the URL the client addressed
        self._keys: dict[str, list[KeyVersion]] = {}
        self._faults: list[_Fault] = []
        self._release = threading.Event()
        self._required_token: str | None = None
        self.tenant_id = TENANT_ID
        self._apps: dict[tuple[str, str], EntraApp] = {}
        self._tokens: dict[str, IssuedToken] = {}
        self._denied: set[str] = set()
        self.requests: list[RecordedRequest] = []
        self._tmpdir: Path | None = None
        self._httpd: _TLSServer | None = None
        self._thread: threading.Thread | None = None
        self.ca_path: str = ""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> KeyVaultServer:
        if self._httpd is not None:
            return self
        self._tmpdir = Path(tempfile.mkdtemp(prefix="fake-keyvault-"))
        ca_path, cert_path, key_path = _make_tls(self._tmpdir)
        self.ca_path = str(ca_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(cert_path), str(key_path))
        httpd = _TLSServer((self.host, self._port), _Handler)
        httpd.kv = self
        httpd.ssl_context = context
        self._port = httpd.server_address[1]
        self._release.clear()
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # wake stalled handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> KeyVaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The vault URL, e.g. ``https://127.0.0.1:54321`` (no trailing slash)."""
        return f"https://{self.host}:{self._port}"

    @property
    def authority(self) -> str:
        """The Entra authority host for azure-identity's ``authority=`` (the same HTTPS server)."""
        return self.url

    # -- Entra ID ----------------------------------------------------------------------------

    def register_app(
        self,
        client_id: str | None = None,
        *,
        secret: str | None = None,
        certificate: x509.Certificate | bytes | None = None,
        tenant_id: str | None = None,
    ) -> EntraApp:
        """Register (or add a credential to) an app in `tenant_id` (default: the vault's tenant).

        ``certificate`` is an ``x509.Certificate`` or a PEM (a private key in it is ignored).
        From then on, Key Vault routes require tokens issued by the token endpoint.
        """
        tenant = (tenant_id or self.tenant_id).lower()
        client = (client_id or str(uuid.uuid4())).lower()
        with self._lock:
            app = self._apps.setdefault((tenant, client), EntraApp(tenant, client))
            if secret is not None:
                app.secrets.append(secret)
            if certificate is not None:
                if isinstance(certificate, bytes):
                    certificate = x509.load_pem_x509_certificate(certificate)
                app.certificates[certificate_thumbprint(certificate).lower()] = certificate
            return app

    def unregister_app(self, client_id: str, tenant_id: str | None = None) -> None:
        with self._lock:
            self._apps.pop(((tenant_id or self.tenant_id).lower(), client_id.lower()), None)

    def deny_app(self, client_id: str, denied: bool = True) -> None:
        """Key Vault answers 403 ForbiddenByRbac to this app (its role assignment removed)."""
        with self._lock:
            if denied:
                self._denied.add(client_id.lower())
            else:
                self._denied.discard(client_id.lower())

    def expire_tokens(self) -> None:
        """Every issued token expires now (Key Vault then answers 401)."""
        with self._lock:
            for token in self._tokens.values():
                token.expires_at = 0

    @property
    def tokens_issued(self) -> list[IssuedToken]:
        with self._lock:
            return list(self._tokens.values())

    def _challenge(self) -> str:
        return (
            f'Bearer authorization="https://login.microsoftonline.com/{self.tenant_id}", '
            f'resource="{RESOURCE}"'
        )

    # -- keys ------------------------------------------------------------------------------

    def create_key(
        self,
        name: str,
        size: int = 2048,
        key_ops: list[str] | None = None,
        kty: str = "RSA",
        *,
        curve: str = "P-256",
        private_key: Any = None,
        enabled: bool = True,
        exp: int | None = None,
        nbf: int | None = None,
        tags: dict[str, str] | None = None,
    ) -> KeyVersion:
        """Create key `name` (replacing any existing one) with a first version; return it.

        ``kty`` is "RSA" (size bits) or "EC" (``curve``). Pass ``private_key`` to reuse a
        pre-generated key (RSA generation costs ~50-100 ms).
        """
        with self._lock:
            self._keys.pop(name, None)
        return self._new_version(
            name, size, key_ops, kty, curve, private_key, enabled, exp, nbf, tags
        )

    def add_version(
        self,
        name: str,
        *,
        private_key: Any = None,
        key_ops: list[str] | None = None,
        size: int | None = None,
    ) -> KeyVersion:
        """Make a new current version of existing key `name` (same kty/size/ops by default)."""
        with self._lock:
            if name not in self._keys:
                raise KeyError(name)
            last = self._keys[name][-1]
        bits = (size or last.private_key.key_size) if last.kty == "RSA" else 0
        return self._new_version(
            name,
            bits,
            key_ops if key_ops is not None else list(last.key_ops),
            last.kty,
            last.crv or "P-256",
            private_key,
            True,
            None,
            None,
            dict(last.tags),
        )

    def _new_version(
        self,
        name: str,
        size: int,
        key_ops: list[str] | None,
        kty: str,
        curve: str,
        private_key: Any,
        enabled: bool,
        exp: int | None,
        nbf: int | None,
        tags: dict[str, str] | None,
    ) -> KeyVersion:
        kty = kty.upper()
        crv: str | None = None
        if kty in ("RSA", "RSA-HSM"):
            kty = "RSA"
            if private_key is None:
                private_key = rsa.generate_private_key(public_exponent=65537, key_size=size)
            default_ops = DEFAULT_RSA_OPS
        elif kty in ("EC", "EC-HSM"):
            kty = "EC"
            if private_key is None:
                private_key = ec.generate_private_key(_CURVES[curve]())
            crv = {v.name: k for k, v in _CURVES.items()}[private_key.curve.name]
            default_ops = DEFAULT_EC_OPS
        else:
            raise ValueError(f"unsupported kty {kty!r}")
        version = KeyVersion(
            name=name,
            version=uuid.uuid4().hex,
            kty=kty,
            private_key=private_key,
            key_ops=list(key_ops if key_ops is not None else default_ops),
            enabled=enabled,
            exp=exp,
            nbf=nbf,
            tags=dict(tags or {}),
            crv=crv,
        )
        with self._lock:
            self._keys.setdefault(name, []).append(version)
        return version

    def get_version(self, name: str, version: str | None = None) -> KeyVersion:
        """The given (or current) version of key `name`; KeyError if absent."""
        with self._lock:
            versions = self._keys[name]
            if not version:
                return versions[-1]
            for item in versions:
                if item.version == version:
                    return item
        raise KeyError(f"{name}/{version}")

    def versions(self, name: str) -> list[KeyVersion]:
        with self._lock:
            return list(self._keys.get(name, []))

    def kid(self, name: str, version: str | None = None) -> str:
        return f"{self.url}/keys/{name}/{self.get_version(name, version).version}"

    def set_enabled(self, name: str, enabled: bool, version: str | None = None) -> None:
        """Enable/disable one version, or every version of `name` when version is None."""
        with self._lock:
            targets = [self.get_version(name, version)] if version else self._keys[name]
            for item in targets:
                item.enabled = enabled
                item.updated = _now()

    def disable_key(self, name: str, version: str | None = None) -> None:
        self.set_enabled(name, False, version)

    def enable_key(self, name: str, version: str | None = None) -> None:
        self.set_enabled(name, True, version)

    def delete_key(self, name: str) -> None:
        """Remove key `name` and all its versions; later requests get 404 KeyNotFound."""
        with self._lock:
            self._keys.pop(name, None)

    def unwrap_locally(self, name: str, version: str | None, wrapped: bytes) -> bytes:
        """Decrypt an RSA-OAEP-256 blob with the stored private key (for assertions)."""
        return self.get_version(name, version).private_key.decrypt(wrapped, _oaep256())

    # -- faults and auth -------------------------------------------------------------------

    def fail(
        self,
        status: int,
        op: str | None = None,
        *,
        times: int | None = None,
        retry_after: int | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer `status` to authorised requests for `op` (one of OPERATIONS or
        ENTRA_OPERATIONS; None = every Key Vault operation, never the Entra ones).

        ``times``: how many requests to fail (None: until reset()). For 429 a
        ``Retry-After`` header is sent (default 1 second).
        """
        if op is not None and op not in OPERATIONS + ENTRA_OPERATIONS:
            raise ValueError(f"unknown op {op!r}; expected one of {OPERATIONS + ENTRA_OPERATIONS}")
        if status == 429 and retry_after is None:
            retry_after = 1
        default_codes = {
            403: ("Forbidden", "The user, group or application does not have keys permission."),
            429: ("Throttled", "Request was not processed because too many requests were sent."),
            500: ("InternalServerError", "An unexpected error occurred."),
            503: ("ServiceUnavailable", "The service is unavailable."),
        }
        dcode, dmessage = default_codes.get(status, ("Error", f"Injected {status}"))
        with self._lock:
            self._faults.append(
                _Fault(
                    op=op,
                    status=status,
                    remaining=times,
                    retry_after=retry_after,
                    code=code or dcode,
                    message=message or dmessage,
                )
            )

    def stall(self, seconds: float, op: str | None = None, *, times: int | None = None) -> None:
        """Hold authorised requests for `op` unanswered for `seconds` (then answer normally).

        Stalled handlers are released early by reset() and stop().
        """
        if op is not None and op not in OPERATIONS + ENTRA_OPERATIONS:
            raise ValueError(f"unknown op {op!r}; expected one of {OPERATIONS + ENTRA_OPERATIONS}")
        with self._lock:
            self._release.clear()
            self._faults.append(_Fault(op=op, status=0, remaining=times, stall_seconds=seconds))

    def require_token(self, token: str | None) -> None:
        """Accept only `Authorization: Bearer <token>` (None: accept any bearer token)."""
        with self._lock:
            self._required_token = token

    def reset_faults(self) -> None:
        """Clear injected failures/stalls (releasing stalled requests) and the token rule."""
        with self._lock:
            self._faults.clear()
            self._required_token = None
            self._release.set()

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def reset(self) -> None:
        """Back to an empty vault: no keys, apps, tokens, faults or recorded requests."""
        with self._lock:
            self.reset_faults()
            self._keys.clear()
            self._apps.clear()
            self._tokens.clear()
            self._denied.clear()
            self.tenant_id = TENANT_ID
            self.requests.clear()

    def requests_for(self, op: str, authorized_only: bool = True) -> list[RecordedRequest]:
        with self._lock:
            return [
                r for r in self.requests if r.op == op and (r.authorized or not authorized_only)
            ]

    def _take_fault(self, op: str | None) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if (fault.op is None and op not in ENTRA_OPERATIONS) or fault.op == op:
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    # -- request handling ------------------------------------------------------------------

    def _addressed(self) -> str:
        """The vault's URL as the client addressed it: key ids name it, as Key Vault's
        name the vault's own host (a client behind a proxy keeps using the proxy)."""
        return getattr(self._request, "base", None) or self.url

    def _handle(self, handler: _Handler, raw: bytes) -> None:
        host = handler.headers.get("Host", "")
        self._request.base = f"https://{host}" if _LOOPBACK_HOST.fullmatch(host) else None
        parts = urlsplit(handler.path)
        query = parse_qs(parts.query)
        path = parts.path
        entra = _ENTRA_PATH.match(path)
        if entra:
            self._handle_entra(handler, raw, entra["tenant"].lower(), entra["op"], query)
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        op, name, version = _classify(handler.command, path)
        auth = handler.headers.get("Authorization", "")
        authorized = auth.startswith("Bearer ") and len(auth) > len("Bearer ")
        with self._lock:
            required = self._required_token
            entra_tokens = bool(self._apps)
        denial: dict[str, Any] | None = None
        if authorized and required is not None:
            if auth != f"Bearer {required}":
                authorized = False
        elif authorized and entra_tokens:
            denial = self._check_token(auth[len("Bearer ") :])
        record = RecordedRequest(
            method=handler.command,
            path=path,
            query=query,
            headers={k: v for k, v in handler.headers.items()},
            body=body,
            op=op,
            key_name=name,
            key_version=version,
            authorized=authorized and denial is None,
        )
        with self._lock:
            self.requests.append(record)

        if denial is not None:
            record.status = int(denial["status"])
            handler.send_json(
                record.status,
                {"error": denial["error"]},
                {"WWW-Authenticate": self._challenge()} if record.status == 401 else None,
            )
            return
        if not authorized:
            record.status = 401
            handler.send_json(
                401,
                {
                    "error": {
                        "code": "Unauthorized",
                        "message": "AKV10000: Request is missing a Bearer or PoP token.",
                    }
                }
                if not auth
                else {"error": {"code": "Unauthorized", "message": "AKV10032: Invalid issuer."}},
                {"WWW-Authenticate": self._challenge()},
            )
            return

        fault = self._take_fault(op)
        if fault is not None and fault.status == 0:
            self._release.wait(fault.stall_seconds)
        elif fault is not None:
            record.status = fault.status
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            handler.send_json(
                fault.status, {"error": {"code": fault.code, "message": fault.message}}, headers
            )
            return

        try:
            status, payload = self._route(handler.command, op, name, version, body)
        except KeyVaultError as err:
            status = err.status
            error: dict[str, Any] = {"code": err.code, "message": err.message}
            if err.inner:
                error["innererror"] = {"code": err.inner}
            payload = {"error": error}
        record.status = status
        handler.send_json(status, payload)

    def _check_token(self, token: str) -> dict[str, Any] | None:
        """None when an Entra-issued token may call Key Vault, else the status and error."""
        with self._lock:
            issued = self._tokens.get(token)
            denied = issued is not None and issued.client_id in self._denied
        if issued is None or issued.expires_at <= time.time():
            return {
                "status": 401,
                "error": {"code": "Unauthorized", "message": "AKV10022: Invalid token."},
            }
        if issued.tenant_id != self.tenant_id:
            return {
                "status": 401,
                "error": {
                    "code": "Unauthorized",
                    "message": "AKV10032: Invalid issuer. Expected one of "
                    f"https://sts.windows.net/{self.tenant_id}/, found "
                    f"https://sts.windows.net/{issued.tenant_id}/.",
                },
            }
        if issued.resource.rstrip("/") != RESOURCE:
            return {
                "status": 401,
                "error": {"code": "Unauthorized", "message": "AKV10022: Invalid audience."},
            }
        if denied:
            return {
                "status": 403,
                "error": {
                    "code": "Forbidden",
                    "message": "Caller is not authorized to perform action on resource.\r\n"
                    "If role assignments, deny assignments or role definitions were changed "
                    "recently, please observe propagation time.\r\n"
                    f"Caller: appid={issued.client_id};\r\n"
                    "Action: 'Microsoft.KeyVault/vaults/keys/read'\r\n"
                    "Assignment: (not found)\r\nVault: test;location=local\r\n",
                    "innererror": {"code": "ForbiddenByRbac"},
                },
            }
        return None

    def _handle_entra(
        self,
        handler: _Handler,
        raw: bytes,
        tenant: str,
        op: str,
        query: dict[str, list[str]],
    ) -> None:
        operation = "openid_configuration" if op.endswith("openid-configuration") else "token"
        form = {key: values[-1] for key, values in parse_qs(raw.decode("utf-8", "replace")).items()}
        shown = {
            key: ("***" if key in ("client_secret", "client_assertion") else value)
            for key, value in form.items()
        }
        record = RecordedRequest(
            method=handler.command,
            path=handler.path.split("?", 1)[0],
            query=query,
            headers={k: v for k, v in handler.headers.items()},
            body=shown,
            op=operation,
            key_name=None,
            key_version=None,
            authorized=False,
        )
        with self._lock:
            self.requests.append(record)
        fault = self._take_fault(operation)
        if fault is not None and fault.status == 0:
            self._release.wait(fault.stall_seconds)
        elif fault is not None:
            record.status = fault.status
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
            handler.send_json(
                fault.status,
                _entra_error_json(
                    EntraError(
                        fault.status,
                        "temporarily_unavailable" if fault.status == 429 else "server_error",
                        50000,
                        fault.message or "There was an error issuing a token.",
                    )
                ),
                headers,
            )
            return
        try:
            if operation == "openid_configuration":
                if handler.command != "GET":
                    raise EntraError(405, "invalid_request", 900561, "Use GET.")
                payload = self._openid_configuration(tenant)
            else:
                if handler.command != "POST":
                    raise EntraError(405, "invalid_request", 900561, "Use POST.")
                payload = self._issue_token(tenant, form, handler.headers.get("Authorization"))
                record.authorized = True
            status = 200
        except EntraError as err:
            status, payload = err.status, _entra_error_json(err)
        record.status = status
        handler.send_json(status, payload)

    def _known_tenant(self, tenant: str) -> bool:
        with self._lock:
            return tenant == self.tenant_id or any(t == tenant for t, _ in self._apps)

    def _openid_configuration(self, tenant: str) -> dict[str, Any]:
        if not self._known_tenant(tenant):
            raise EntraError(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
                "and are signing into the correct cloud.",
            )
        base = f"{self.authority}/{tenant}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "issuer": f"{base}/v2.0",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "tenant_region_scope": "EU",
        }

    def _issue_token(self, tenant: str, form: dict[str, str], basic: str | None) -> dict[str, Any]:
        client_id = form.get("client_id", "").lower()
        secret = form.get("client_secret")
        if basic and basic.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
            except ValueError:
                raise EntraError(400, "invalid_request", 900144, "Bad Basic header.") from None
            client_id = client_id or unquote_plus(user).lower()
            secret = secret or unquote_plus(password)
        if form.get("grant_type") != "client_credentials":
            raise EntraError(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{form.get('grant_type')}'.",
            )
        if not self._known_tenant(tenant):
            raise EntraError(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
        with self._lock:
            app = self._apps.get((tenant, client_id))
        if app is None:
            raise EntraError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant. You may "
                "have sent your authentication request to the wrong tenant.",
            )
        scopes = form.get("scope", "").split()
        resources = [s[: -len("/.default")] for s in scopes if s.endswith("/.default")]
        if len(resources) != 1:
            raise EntraError(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {form.get('scope')!r} is not valid. Client "
                "credential flows must have a scope value with /.default suffixed to the "
                "resource identifier (application ID URI).",
            )
        if secret is not None:
            if not any(hmac.compare_digest(secret.encode(), s.encode()) for s in app.secrets):
                raise EntraError(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request "
                    "is the client secret value, not the client secret ID, for a secret added to "
                    f"app '{client_id}'.",
                )
        elif form.get("client_assertion"):
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                raise EntraError(
                    400,
                    "invalid_request",
                    50027,
                    "Invalid client_assertion_type.",
                )
            self._verify_assertion(app, form["client_assertion"], tenant)
        else:
            raise EntraError(
                401,
                "invalid_client",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the "
                "'client_credentials' grant type.",
            )
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = IssuedToken(
                tenant, client_id, resources[0], time.time() + TOKEN_LIFETIME
            )
        return {
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "ext_expires_in": TOKEN_LIFETIME,
            "access_token": token,
        }

    def _verify_assertion(self, app: EntraApp, assertion: str, tenant: str) -> None:
        def bad(message: str) -> EntraError:
            return EntraError(401, "invalid_client", 700027, message)

        try:
            head_b64, claims_b64, signature_b64 = assertion.split(".")
            header = json.loads(b64url_decode(head_b64))
            claims = json.loads(b64url_decode(claims_b64))
            signature = b64url_decode(signature_b64)
        except ValueError:
            raise bad("Client assertion failed signature validation: malformed JWT.") from None
        certificate: x509.Certificate | None = None
        if "x5t#S256" in header:
            wanted = b64url_decode(str(header["x5t#S256"]))
            for cert in app.certificates.values():
                if cert.fingerprint(hashes.SHA256()) == wanted:
                    certificate = cert
        elif "x5t" in header:
            certificate = app.certificates.get(b64url_decode(str(header["x5t"])).hex())
        if certificate is None:
            raise bad(
                "The certificate with identifier used to sign the client assertion is not "
                f"registered on application. [Reason - The key was not found., Thumbprint of key "
                f"used by client: '{header.get('x5t') or header.get('x5t#S256')}']"
            )
        public = certificate.public_key()
        signed = f"{head_b64}.{claims_b64}".encode()
        try:
            if not isinstance(public, rsa.RSAPublicKey):
                raise InvalidSignature
            if header.get("alg") == "RS256":
                public.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            elif header.get("alg") == "PS256":
                pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
                public.verify(signature, signed, pss, hashes.SHA256())
            else:
                raise InvalidSignature
        except InvalidSignature:
            raise bad("Client assertion contains an invalid signature.") from None
        now = time.time()
        if certificate.not_valid_after_utc.timestamp() < now:
            raise bad(
                "The certificate used to sign the client assertion has expired "
                f"({certificate.not_valid_after_utc:%Y-%m-%d})."
            )
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            raise bad("The client assertion's iss and sub must be the client id.")
        audience = f"{self.authority}/{tenant}/oauth2/v2.0/token"
        if claims.get("aud") != audience:
            raise bad(f"The client assertion's audience must be {audience}.")
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] < now - 300:
            raise bad("The client assertion has expired.")

    def _route(
        self, method: str, op: str | None, name: str | None, version: str | None, body: Any
    ) -> tuple[int, Any]:
        if op is None or name is None:
            raise KeyVaultError(400, "BadParameter", f"Unsupported request: {method}")
        if op == "list_versions":
            with self._lock:
                if name not in self._keys:
                    raise _not_found(name)
                items = [self._item_json(v) for v in self._keys[name]]
            return 200, {"value": items, "nextLink": None}
        try:
            key = self.get_version(name, version)
        except KeyError:
            raise _not_found(name, version) from None
        if op == "get":
            return 200, self._bundle_json(key)
        if op == "update":
            return 200, self._update(key, body)
        return 200, self._crypto(op, key, body)

    def _update(self, key: KeyVersion, body: Any) -> Any:
        if not isinstance(body, dict):
            raise KeyVaultError(400, "BadParameter", "The request body is not valid JSON.")
        attributes = body.get("attributes") or {}
        with self._lock:
            if "enabled" in attributes and attributes["enabled"] is not None:
                key.enabled = bool(attributes["enabled"])
            if "exp" in attributes:
                key.exp = attributes["exp"]
            if "nbf" in attributes:
                key.nbf = attributes["nbf"]
            if body.get("key_ops") is not None:
                key.key_ops = list(body["key_ops"])
            if body.get("tags") is not None:
                key.tags = dict(body["tags"])
            key.updated = _now()
        return self._bundle_json(key)

    def _crypto(self, op: str, key: KeyVersion, body: Any) -> Any:
        sdk_op = "wrapKey" if op == "wrapkey" else "unwrapKey"
        if not isinstance(body, dict) or "alg" not in body or "value" not in body:
            raise KeyVaultError(400, "BadParameter", "Property 'alg' and 'value' are required.")
        if not key.enabled:
            raise KeyVaultError(
                403,
                "Forbidden",
                f"Operation {sdk_op} is not allowed on a disabled key.",
                "KeyDisabled",
            )
        now = _now()
        if key.exp is not None and now >= key.exp:
            raise KeyVaultError(
                403,
                "Forbidden",
                f"Operation {sdk_op} is not allowed on an expired key.",
                "KeyExpired",
            )
        if key.nbf is not None and now < key.nbf:
            raise KeyVaultError(
                403,
                "Forbidden",
                f"Operation {sdk_op} is not allowed on a key before its activation date.",
                "KeyNotYetValid",
            )
        if sdk_op not in key.key_ops:
            raise KeyVaultError(
                403,
                "Forbidden",
                f"Operation {sdk_op} is not permitted on this key.",
                "KeyOperationForbidden",
            )
        if key.kty != "RSA":
            raise KeyVaultError(
                400, "BadParameter", f"Key type {key.kty} does not support operation {sdk_op}."
            )
        pad = {"RSA-OAEP-256": _oaep256(), "RSA-OAEP": _oaep1(), "RSA1_5": padding.PKCS1v15()}
        alg = body["alg"]
        if alg not in pad:
            raise KeyVaultError(400, "BadParameter", f"Algorithm {alg!r} is not supported.")
        try:
            value = b64url_decode(str(body["value"]))
        except ValueError:
            raise KeyVaultError(400, "BadParameter", "Property 'value' is not base64url.") from None
        try:
            if op == "wrapkey":
                result = key.private_key.public_key().encrypt(value, pad[alg])
            else:
                result = key.private_key.decrypt(value, pad[alg])
        except ValueError:
            raise KeyVaultError(400, "BadParameter", "The parameter is incorrect.") from None
        return {
            "kid": f"{self._addressed()}/keys/{key.name}/{key.version}",
            "value": b64url(result),
        }

    # -- JSON ------------------------------------------------------------------------------

    def _attributes_json(self, key: KeyVersion) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "enabled": key.enabled,
            "created": key.created,
            "updated": key.updated,
            "recoveryLevel": key.recovery_level,
            "recoverableDays": 90,
        }
        if key.exp is not None:
            attributes["exp"] = key.exp
        if key.nbf is not None:
            attributes["nbf"] = key.nbf
        return attributes

    def _jwk(self, key: KeyVersion) -> dict[str, Any]:
        jwk: dict[str, Any] = {
            "kid": f"{self._addressed()}/keys/{key.name}/{key.version}",
            "kty": key.kty,
            "key_ops": list(key.key_ops),
        }
        public = key.private_key.public_key()
        if key.kty == "RSA":
            numbers = public.public_numbers()
            jwk["n"] = b64url(_int_bytes(numbers.n))
            jwk["e"] = b64url(_int_bytes(numbers.e))
        else:
            numbers = public.public_numbers()
            size = (public.curve.key_size + 7) // 8
            jwk["crv"] = key.crv
            jwk["x"] = b64url(_fixed_int_bytes(numbers.x, size))
            jwk["y"] = b64url(_fixed_int_bytes(numbers.y, size))
        return jwk

    def _bundle_json(self, key: KeyVersion) -> dict[str, Any]:
        return {
            "key": self._jwk(key),
            "attributes": self._attributes_json(key),
            "tags": dict(key.tags),
        }

    def _item_json(self, key: KeyVersion) -> dict[str, Any]:
        return {
            "kid": f"{self._addressed()}/keys/{key.name}/{key.version}",
            "attributes": self._attributes_json(key),
            "tags": dict(key.tags),
        }


def _oaep256() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _oaep1() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303


def _entra_error_json(err: EntraError) -> dict[str, Any]:
    trace = str(uuid.uuid4())
    correlation = str(uuid.uuid4())
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return {
        "error": err.error,
        "error_description": f"AADSTS{err.code}: {err.description}\r\nTrace ID: {trace}\r\n"
        f"Correlation ID: {correlation}\r\nTimestamp: {stamp}",
        "error_codes": [err.code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": f"https://login.microsoftonline.com/error?code={err.code}",
    }


def _classify(method: str, path: str) -> tuple[str | None, str | None, str | None]:
    """Map a request to (op, key name, version); op None when the route is unknown."""
    match = _PATH.match(path)
    if not match:
        return None, None, None
    name, rest, action = match["name"], match["rest"], match["action"]
    if action is not None:
        if method == "POST" and action.lower() in ("wrapkey", "unwrapkey"):
            return action.lower(), name, rest or None
        return None, name, rest or None
    if rest == "versions" and method == "GET":
        return "list_versions", name, None
    if method == "GET":
        return "get", name, rest or None
    if method == "PATCH":
        return "update", name, rest or None
    return None, name, rest or None
