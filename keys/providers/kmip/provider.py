"""The KMIP provider: keys created, used, checked and retired on the customer's server."""

from __future__ import annotations

import contextlib
import hmac
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys.providers.base import (
    CheckResult,
    Context,
    KeyDescription,
    KeyHealth,
    KeyMaterialInvalid,
    KeyProvider,
    KeyProviderError,
    Wrapped,
)
from keys.providers.kmip.config import (
    InvalidKmipConfig,
    InvalidKmipMaterial,
    KmipConfig,
    KmipCredentials,
    check_text,
)
from keys.providers.kmip.errors import (
    MAYBE_BAD_BLOB,
    KmipAccessDenied,
    KmipConnectError,
    KmipTlsError,
    KmipUnavailable,
    server_refusal,
    state_detail,
    tls_problem,
    transport_text,
)
from keys.providers.kmip.material import name_text
from keys.providers.kmip.pykmip import (
    KmipOperationFailure,
    KMIPVersion,
    RequestLengthMismatch,
    enums,
)
from keys.providers.kmip.transport import (
    IDLE_SECONDS,
    Connection,
    closed_by_peer,
    open_connection,
    tls_context,
)
from keys.providers.kmip.wrapping import (
    BLOB_LOCAL,
    BLOB_SERVER,
    BLOB_SERVER_CBC,
    CBC,
    CBC_CIPHERTEXT_BYTES,
    CTR,
    CTR_CIPHERTEXT_BYTES,
    DEK_BYTES,
    IV_BYTES,
    LOCAL_BLOB_BYTES,
    LOCAL_LABEL,
    NONCE_BYTES,
    TAG_BYTES,
    TAMPERED,
    encoded_context,
    hmac_tag,
    tag_v3,
)

T = TypeVar("T")

CHECK_TLS = "TLS connection"
CHECK_VERSIONS = "Protocol versions"
CHECK_OPERATIONS = "Operations"
CHECK_ROUND_TRIP = "Round trip"
CHECK_KEY_ACTIVE = "Key active"

# Versions this client speaks, best first (PyKMIP's 2.0 encoding changes attributes).
_VERSIONS: dict[tuple[int, int], KMIPVersion] = {
    (1, 4): KMIPVersion.KMIP_1_4,
    (1, 3): KMIPVersion.KMIP_1_3,
    (1, 2): KMIPVersion.KMIP_1_2,
    (1, 1): KMIPVersion.KMIP_1_1,
    (1, 0): KMIPVersion.KMIP_1_0,
}

_NEEDED_OPERATIONS = ("Create", "Activate", "Get Attributes", "Revoke", "Destroy")


def _operation_names(operations: Sequence[Any]) -> list[str]:
    return [op.name.replace("_", " ").title() for op in operations]


class KmipProvider(KeyProvider):
    """An AES-256 key on the customer's KMIP server."""

    kind = "kmip"
    remote = True
    can_rotate_now = True

    def __init__(
        self,
        config: KmipConfig,
        credentials: KmipCredentials,
        *,
        timeout: float = 10.0,
        key_cache_seconds: float = 300.0,
        resolve: Callable[[str, int], list[str]] | None = None,
    ) -> None:
        if not timeout > 0:
            raise InvalidKmipConfig("timeout: must be a positive number of seconds")
        if not key_cache_seconds >= 0:
            raise InvalidKmipConfig("key_cache_seconds: must be zero or more")
        self.config = config
        self._timeout = float(timeout)
        self._key_cache_seconds = float(key_cache_seconds)
        self._resolve = resolve
        try:
            self._tls = tls_context(
                credentials.ca_pem,
                credentials.cert_pem,
                credentials.key_pem,
                credentials.passphrase,
            )
        except (ssl.SSLError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise InvalidKmipMaterial(
                f"the client certificate, key or passphrase could not be loaded ({reason}): "
                "upload them again",
                field="client_key",
            ) from None
        try:
            leaf = x509.load_pem_x509_certificates(credentials.cert_pem)[0]
            self._client_subject = name_text(leaf.subject)
        except (ValueError, x509.InvalidVersion):
            self._client_subject = "(unreadable)"
        self._password = credentials.password
        if (config.username is None) != (credentials.password is None):
            raise InvalidKmipConfig(
                "username: a KMIP username and password go together: enter both or neither"
            )
        self._lock = threading.RLock()
        self._conn: Connection | None = None
        self._version: KMIPVersion | None = None
        self._offered: list[str] | None = None
        self._operations: list[str] | None = None
        self._keys: dict[str, tuple[bytearray, float]] = {}

    def __repr__(self) -> str:
        return f"<KmipProvider {self.config.address} key={self.config.key_uid!r}>"

    # -- connection ------------------------------------------------------------
    def _open(self) -> Connection:
        """The open connection, or a new one (caller holds the lock)."""
        conn = self._conn
        if conn is not None:
            idle = time.monotonic() - conn.last_used
            if idle > IDLE_SECONDS or closed_by_peer(conn.sock):
                self._drop()
            else:
                return conn
        conn = open_connection(
            self.config,
            self._tls,
            password=self._password,
            version=self._version or KMIPVersion.KMIP_1_2,
            timeout=self._timeout,
            resolve=self._resolve,
        )
        self._conn = conn
        if self._version is None:
            try:
                self._negotiate(conn)
            except BaseException:
                self._drop()
                raise
        return conn

    def _negotiate(self, conn: Connection) -> None:
        """Pick the protocol version: the best both sides speak (first request on a connection)."""
        try:
            result = conn.client.proxy.discover_versions()
        except ssl.SSLError as exc:
            # Under TLS 1.3 the server checks our certificate after the handshake.
            problem = tls_problem(exc, self.config.host)
            raise KmipTlsError(f"KMIP server {self.config.address}: {problem}", problem) from None
        except (OSError, EOFError, RequestLengthMismatch) as exc:
            raise KmipConnectError(
                f"the KMIP server {self.config.address} closed the connection after the TLS "
                f"handshake ({transport_text(exc)}); it may not accept the client certificate"
            ) from None
        except Exception as exc:  # PyKMIP could not decode the answer
            raise KmipUnavailable(
                f"the KMIP server {self.config.address} answered DiscoverVersions with "
                f"something that could not be read ({type(exc).__name__})",
                "DiscoverVersions",
            ) from None
        if result.result_status.value == enums.ResultStatus.SUCCESS:
            offered = [(v.major, v.minor) for v in result.protocol_versions or []]
            self._offered = [f"{major}.{minor}" for major, minor in offered]
            spoken = [v for v in _VERSIONS if v in offered]
            version = _VERSIONS[spoken[0]] if spoken else KMIPVersion.KMIP_1_0
        else:
            # A KMIP 1.0 server has no DiscoverVersions.
            self._offered = None
            version = KMIPVersion.KMIP_1_0
        self._version = version
        conn.client.kmip_version = version

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.client.close()

    def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        with self._lock:
            self._drop()

    def _call(
        self, operation: str, uid: str | None, fn: Callable[[Any], T], *, repeatable: bool = True
    ) -> T:
        """Run one KMIP operation on the shared connection, errors mapped onto base.py's."""
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None
                conn = self._open()
                try:
                    answer = fn(conn.client)
                except KmipOperationFailure as exc:
                    conn.last_used = time.monotonic()
                    raise server_refusal(operation, uid, exc.reason, exc.message) from None
                except ssl.SSLError as exc:
                    self._drop()
                    problem = tls_problem(exc, self.config.host)
                    raise KmipTlsError(
                        f"KMIP {operation} at {self.config.address}: {problem}", problem
                    ) from None
                except TimeoutError:
                    self._drop()
                    raise KmipUnavailable(
                        f"KMIP {operation} at {self.config.address} timed out after "
                        f"{self._timeout:g} s",
                        operation,
                    ) from None
                except (OSError, EOFError, RequestLengthMismatch) as exc:
                    self._drop()
                    if reused and repeatable and attempt == 1:
                        continue  # the server had closed a reused connection: once more
                    raise KmipUnavailable(
                        f"KMIP {operation} at {self.config.address} failed: the connection "
                        f"broke ({transport_text(exc)})",
                        operation,
                    ) from None
                except (TypeError, ValueError, AttributeError, IndexError, KeyError) as exc:
                    # PyKMIP could not decode the answer: the connection's framing is unknown.
                    self._drop()
                    raise KmipUnavailable(
                        f"KMIP {operation} at {self.config.address}: the server's answer could "
                        f"not be read ({type(exc).__name__})",
                        operation,
                    ) from None
                conn.last_used = time.monotonic()
                return answer
        raise AssertionError("unreachable")

    def _result(self, operation: str, result: Any) -> Any:
        """Raise for a KMIPProxy result (its lower-level calls do not raise)."""
        if result.result_status.value != enums.ResultStatus.SUCCESS:
            reason = result.result_reason.value if result.result_reason else None
            message = result.result_message.value if result.result_message else ""
            raise server_refusal(operation, None, reason, message)
        return result

    # -- what the server offers -----------------------------------------------
    def server_info(self) -> tuple[list[str], list[str]]:
        """(protocol versions from DiscoverVersions, operations from Query), as names."""

        def discover(client: Any) -> Any:
            return client.proxy.discover_versions()

        def query(client: Any) -> Any:
            return client.proxy.query(query_functions=[enums.QueryFunction.QUERY_OPERATIONS])

        versions = self._result("DiscoverVersions", self._call("DiscoverVersions", None, discover))
        offered = [f"{v.major}.{v.minor}" for v in versions.protocol_versions or []]
        answer = self._result("Query", self._call("Query", None, query))
        operations = _operation_names(answer.operations or [])
        with self._lock:
            self._offered, self._operations = offered, operations
        return offered, operations

    def _query_operations(self) -> list[str]:
        with self._lock:
            if self._operations is not None:
                return self._operations

        def query(client: Any) -> Any:
            return client.proxy.query(query_functions=[enums.QueryFunction.QUERY_OPERATIONS])

        try:
            answer = self._result("Query", self._call("Query", None, query))
        except KmipUnavailable as exc:
            if exc.reason is None:
                raise  # the connection, not the server's answer
            answer = None  # a server without Query: the round trip tells what works
        operations = _operation_names(answer.operations or []) if answer else []
        with self._lock:
            self._operations = operations
        return operations

    def _server_side_crypto(self) -> bool:
        """Whether the server encrypts and decrypts (else: Get, and AES-GCM here).

        A server that lists no operations at all is assumed to (the round trip tells).
        """
        operations = self._query_operations()
        return not operations or {"Encrypt", "Decrypt"} <= set(operations)

    # -- keys --------------------------------------------------------------------
    def _create(self, name: str) -> str:
        uid = self._call(
            "Create",
            None,
            lambda c: c.create(enums.CryptographicAlgorithm.AES, 256, name=name),
            repeatable=False,
        )
        try:
            self._call("Activate", uid, lambda c: c.activate(uid), repeatable=False)
        except KeyProviderError:
            with contextlib.suppress(KeyProviderError):
                self._call("Destroy", uid, lambda c: c.destroy(uid), repeatable=False)
            raise
        return str(uid)

    def _retire(self, uid: str) -> None:
        """Revoke, then Destroy (refused while Active)."""
        reason = enums.RevocationReasonCode.CESSATION_OF_OPERATION
        self._call("Revoke", uid, lambda c: c.revoke(reason, uid), repeatable=False)
        self._call("Destroy", uid, lambda c: c.destroy(uid), repeatable=False)
        self._forget_key(uid)

    def create_key(self) -> str:
        """Create an AES-256 key named `config.key_name` for encrypt/decrypt, Activate it."""
        return self._create(self.config.key_name)

    def rotate_now(self) -> str | None:
        """A new key made the same way; the caller rewraps data keys under it."""
        return self._create(self.config.key_name)

    def prepare_enable(self) -> dict[str, str]:
        """Enable uses the configured key, or a new one made here (its uid is kept)."""
        return {"key_uid": self.config.key_uid or self.create_key()}

    def discard_prepared(self, prepared: dict[str, str]) -> None:
        """Enable was refused after `prepare_enable`: a key made for it goes (revoked and
        destroyed, nothing was ever wrapped under it); a configured key stays."""
        uid = prepared.get("key_uid")
        if uid and uid != self.config.key_uid:
            self._retire(uid)

    def pin_version(self, version: str) -> dict[str, str]:
        """A confirmed rotation: new wraps use the key `version`."""
        return {"key_uid": check_text("version", version, what="key unique identifier")}

    def _state(self, uid: str) -> Any:
        def get_state(client: Any) -> Any:
            _, attributes = client.get_attributes(uid, ["State"])
            return attributes

        for attribute in self._call("GetAttributes", uid, get_state):
            if str(attribute.attribute_name.value) == "State":
                return attribute.attribute_value.value
        raise KmipUnavailable(f"the KMIP server did not report the state of key {uid}")

    def health(self) -> KeyHealth:
        uid = self.config.key_uid
        if uid is None:
            return KeyHealth(False, "", "no KMIP key has been created yet")
        try:
            state = self._state(uid)
        except KmipAccessDenied as exc:
            if exc.reason == enums.ResultReason.ITEM_NOT_FOUND:
                detail = (
                    f"key {uid} was not found on the KMIP server (destroyed, or not visible "
                    "to this client certificate)"
                )
            else:
                detail = str(exc)
            return KeyHealth(False, uid, detail)
        if state == enums.State.ACTIVE:
            return KeyHealth(True, uid, "active")
        return KeyHealth(False, uid, state_detail(uid, state))

    def current_version(self) -> str:
        if self.config.key_uid is None:
            raise KeyMaterialInvalid("no KMIP key has been created yet: create one first")
        return self.config.key_uid

    def describe(self) -> KeyDescription:
        facts = {
            "Server": self.config.address,
            "Key unique identifier": self.config.key_uid or "not created yet",
            "Key name": self.config.key_name,
            "Client certificate": self._client_subject,
        }
        if self.config.username:
            facts["Username"] = self.config.username
        return KeyDescription(self.kind, "KMIP server key", facts)

    # -- wrapping ------------------------------------------------------------------
    def wrap(self, dek: bytes, context: Context) -> Wrapped:
        uid = self.current_version()
        return Wrapped(self._wrap_with(uid, dek, context), uid)

    def unwrap(self, wrapped: bytes, context: Context, version: str) -> bytes:
        try:
            uid = check_text("version", version, what="key unique identifier")
        except InvalidKmipConfig as exc:
            raise KeyMaterialInvalid(f"not a KMIP key version: {exc}") from None
        return self._unwrap_with(uid, wrapped, context)

    def _wrap_with(self, uid: str, dek: bytes, context: Context) -> bytes:
        if not isinstance(dek, bytes | bytearray) or len(dek) != DEK_BYTES:
            raise KeyMaterialInvalid(f"a DEK to wrap is {DEK_BYTES} bytes")
        aad = encoded_context(context)
        plain = bytes(dek)
        if not self._server_side_crypto():
            nonce = secrets.token_bytes(NONCE_BYTES)
            key = self._key_bytes(uid)
            return (
                bytes([BLOB_LOCAL]) + nonce + AESGCM(key).encrypt(nonce, plain, LOCAL_LABEL + aad)
            )
        iv = secrets.token_bytes(IV_BYTES)

        def encrypt(client: Any) -> Any:
            return client.encrypt(plain, uid=uid, cryptographic_parameters=CTR, iv_counter_nonce=iv)

        ciphertext, server_iv = self._call("Encrypt", uid, encrypt)
        if server_iv is not None:
            iv = bytes(server_iv)  # a server may choose its own initial counter and return it
        ciphertext = bytes(ciphertext)
        if len(iv) != IV_BYTES or len(ciphertext) != CTR_CIPHERTEXT_BYTES:
            raise KmipUnavailable(
                f"KMIP Encrypt on key {uid} answered {len(ciphertext)} bytes with a "
                f"{len(iv)}-byte counter; AES-CTR gives {CTR_CIPHERTEXT_BYTES} bytes with a "
                f"{IV_BYTES}-byte counter",
                "Encrypt",
            )
        return bytes([BLOB_SERVER]) + iv + ciphertext + tag_v3(plain, aad, iv, ciphertext)

    def _unwrap_with(self, uid: str, wrapped: bytes, context: Context) -> bytes:
        """The DEK in `wrapped`; every way a blob can be wrong ends the same way.

        A blob is checked for its shape, sent to the server once (Decrypt), and
        its tag checked here: one server operation whatever is wrong with it,
        and one `KeyMaterialInvalid`. Version 3 uses AES-CTR, which decrypts
        any 32 bytes, so the server's answer says nothing about the blob.
        Version 1 (AES-CBC with PKCS5, read only until rewrapped) can make the
        server refuse a bad padding; that refusal gives the same error after the
        same single operation as a bad tag, and no confirming round trip.
        """
        if not isinstance(wrapped, bytes | bytearray) or not wrapped:
            raise KeyMaterialInvalid("a wrapped key is bytes")
        blob = bytes(wrapped)
        aad = encoded_context(context)
        if blob[0] == BLOB_LOCAL:
            if len(blob) != LOCAL_BLOB_BYTES:
                raise KeyMaterialInvalid(TAMPERED)
            key = self._key_bytes(uid)
            try:
                return AESGCM(key).decrypt(
                    blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :], LOCAL_LABEL + aad
                )
            except InvalidTag:
                raise KeyMaterialInvalid(TAMPERED) from None
        if blob[0] == BLOB_SERVER:
            size, parameters, tag_of = CTR_CIPHERTEXT_BYTES, CTR, tag_v3
        elif blob[0] == BLOB_SERVER_CBC:
            size, parameters, tag_of = CBC_CIPHERTEXT_BYTES, CBC, hmac_tag
        else:
            raise KeyMaterialInvalid(f"unknown KMIP wrapped-key format {blob[0]}")
        if len(blob) != 1 + IV_BYTES + size + TAG_BYTES:
            raise KeyMaterialInvalid(TAMPERED)
        iv = blob[1 : 1 + IV_BYTES]
        ciphertext = blob[1 + IV_BYTES : 1 + IV_BYTES + size]
        tag = blob[1 + IV_BYTES + size :]

        def decrypt(client: Any) -> Any:
            return client.decrypt(
                ciphertext, uid=uid, cryptographic_parameters=parameters, iv_counter_nonce=iv
            )

        try:
            plain = bytes(self._call("Decrypt", uid, decrypt))
        except KmipUnavailable as exc:
            if blob[0] == BLOB_SERVER_CBC and exc.reason in MAYBE_BAD_BLOB:
                plain = b""  # a refused padding: judged below like a bad tag
            else:
                raise
        # The same work whatever failed: a tag is computed even for a refused padding.
        candidate = plain if len(plain) == DEK_BYTES else bytes(DEK_BYTES)
        matches = hmac.compare_digest(tag_of(candidate, aad, iv, ciphertext), tag)
        if not matches or len(plain) != DEK_BYTES:
            raise KeyMaterialInvalid(TAMPERED)
        return plain

    def needs_rewrap(self, wrapped: bytes) -> bool:
        """A blob in a format that is read but no longer written (version 1)."""
        return bool(wrapped) and wrapped[0] == BLOB_SERVER_CBC

    def rewrap(self, wrapped: bytes, context: Context, version: str) -> bytes:
        """The DEK of a version 1 blob wrapped again, today's way, by the same key."""
        dek = self.unwrap(wrapped, context, version)
        blob = self._wrap_with(version, dek, context)
        del dek
        return blob

    # -- keys fetched with Get (servers without Encrypt/Decrypt) --------------------
    def _key_bytes(self, uid: str) -> bytes:
        now = time.monotonic()
        with self._lock:
            cached = self._keys.get(uid)
            if cached is not None and cached[1] > now:
                return bytes(cached[0])
            self._forget_key(uid)
            state = self._state(uid)
            if state != enums.State.ACTIVE:
                raise KmipAccessDenied(state_detail(uid, state), "Get", None)
            key = self._call("Get", uid, lambda c: c.get(uid))
            algorithm = getattr(key, "cryptographic_algorithm", None)
            value = getattr(key, "value", b"")
            if algorithm != enums.CryptographicAlgorithm.AES or len(value) != DEK_BYTES:
                raise KeyMaterialInvalid(f"KMIP key {uid} is not an AES-256 key")
            if self._key_cache_seconds > 0:
                self._keys[uid] = (bytearray(value), now + self._key_cache_seconds)
            return bytes(value)

    def _forget_key(self, uid: str) -> None:
        with self._lock:
            cached = self._keys.pop(uid, None)
            if cached is not None:
                cached[0][:] = bytes(len(cached[0]))  # best effort: zero our copy

    # -- Save and Test ---------------------------------------------------------------
    def run_checks(self, context: Context) -> list[CheckResult]:
        results: list[CheckResult] = []
        names = [CHECK_TLS, CHECK_VERSIONS, CHECK_OPERATIONS, CHECK_ROUND_TRIP]
        if self.config.key_uid is not None:
            names.append(CHECK_KEY_ACTIVE)

        def skip_rest(reason: str) -> list[CheckResult]:
            done = {r.name for r in results}
            return results + [
                CheckResult(name, False, f"not run: {reason}") for name in names if name not in done
            ]

        tls = self._check_tls()
        results.append(tls)
        if not tls.passed:
            return skip_rest("no TLS connection to the KMIP server")

        versions = self._check_versions()
        results.append(versions)
        if not versions.passed:
            return skip_rest("no KMIP protocol version in common")

        operations = self._check_operations()
        results.append(operations)
        if not operations.passed:
            return skip_rest("the server lacks operations Keyward needs")

        round_trip = self._check_round_trip(context)
        results.append(round_trip)
        if self.config.key_uid is not None:
            results.append(self._check_key_active())
        return results

    def _check_tls(self) -> CheckResult:
        with self._lock:
            self._drop()
            self._version = None  # negotiate again, as a new connection would
            try:
                conn = self._open()
            except KmipTlsError as exc:
                return CheckResult(CHECK_TLS, False, _sentence(exc.problem))
            except KeyProviderError as exc:
                return CheckResult(CHECK_TLS, False, _sentence(str(exc)))
            version = conn.sock.version() or "TLS"
            peer = conn.peer
        return CheckResult(
            CHECK_TLS,
            True,
            f"Connected to {self.config.address} ({peer}) with {version}; the server's "
            f"certificate was verified against your CA and for {self.config.host}, and the "
            f"server accepted the client certificate {self._client_subject}.",
        )

    def _check_versions(self) -> CheckResult:
        with self._lock:
            offered, version = self._offered, self._version
        spoken = _version_text(version)
        if offered is None:
            return CheckResult(
                CHECK_VERSIONS,
                True,
                f"The server did not answer DiscoverVersions; using KMIP {spoken}.",
            )
        if not offered:
            return CheckResult(
                CHECK_VERSIONS, False, "The server listed no KMIP protocol versions."
            )
        if not any(f"{major}.{minor}" in offered for major, minor in _VERSIONS):
            return CheckResult(
                CHECK_VERSIONS,
                False,
                f"The server offers KMIP {', '.join(offered)}; Keyward speaks KMIP 1.0 to 1.4. "
                "Enable one of those versions on the KMIP server.",
            )
        return CheckResult(
            CHECK_VERSIONS,
            True,
            f"The server offers KMIP {', '.join(offered)}; using KMIP {spoken}.",
        )

    def _check_operations(self) -> CheckResult:
        try:
            with self._lock:
                self._operations = None
            offered = self._query_operations()
        except KeyProviderError as exc:
            return CheckResult(CHECK_OPERATIONS, False, f"Query failed: {exc}.")
        if not offered:
            return CheckResult(
                CHECK_OPERATIONS,
                True,
                "The server did not list its operations; the round trip tests the ones "
                "Keyward uses.",
            )
        available = set(offered)
        missing = [op for op in _NEEDED_OPERATIONS if op not in available]
        server_side = {"Encrypt", "Decrypt"} <= available
        if not server_side and "Get" not in available:
            missing.append("Encrypt and Decrypt (or Get)")
        listed = ", ".join(offered)
        if missing:
            return CheckResult(
                CHECK_OPERATIONS,
                False,
                f"The server does not offer {', '.join(missing)} (it offers: {listed}). "
                "Enable them for this client on the KMIP server.",
            )
        how = (
            "keys stay on the server (Encrypt and Decrypt)"
            if server_side
            else "the server has no Encrypt/Decrypt, so the key is fetched with Get and "
            "used in memory only"
        )
        return CheckResult(CHECK_OPERATIONS, True, f"The server offers {listed}; {how}.")

    def _check_round_trip(self, context: Context) -> CheckResult:
        step = "Create"
        probe_uid: str | None = None
        try:
            probe_uid = self._call(
                "Create",
                None,
                lambda c: c.create(
                    enums.CryptographicAlgorithm.AES, 256, name=f"{self.config.key_name}-check"
                ),
                repeatable=False,
            )
            uid = str(probe_uid)
            step = "Activate"
            self._call("Activate", uid, lambda c: c.activate(uid), repeatable=False)
            step = "Encrypt" if self._server_side_crypto() else "Get"
            probe = secrets.token_bytes(DEK_BYTES)
            blob = self._wrap_with(uid, probe, context)
            step = "Decrypt" if self._server_side_crypto() else "Get"
            same = self._unwrap_with(uid, blob, context) == probe
            step = "Revoke and Destroy"
            self._retire(uid)
            probe_uid = None
        except KeyProviderError as exc:
            message = f"{step} failed: {exc}."
            if isinstance(exc, KmipAccessDenied):
                message += (
                    " Allow this client (its certificate and KMIP user) to create, activate, "
                    "use, revoke and destroy symmetric keys on the KMIP server."
                )
            if probe_uid is not None:
                message += f" The temporary key {probe_uid} may remain on the server."
                with contextlib.suppress(KeyProviderError):
                    self._retire(str(probe_uid))
            return CheckResult(CHECK_ROUND_TRIP, False, message)
        if not same:
            return CheckResult(
                CHECK_ROUND_TRIP, False, "The server decrypted the probe to different bytes."
            )
        where = "on the server" if self._server_side_crypto() else "in memory (fetched with Get)"
        return CheckResult(
            CHECK_ROUND_TRIP,
            True,
            "Created and activated a temporary AES-256 key, wrapped and unwrapped a 32-byte "
            f"probe with it {where} under the context, then revoked and destroyed it.",
        )

    def _check_key_active(self) -> CheckResult:
        try:
            health = self.health()
        except KeyProviderError as exc:
            return CheckResult(CHECK_KEY_ACTIVE, False, _sentence(str(exc)))
        if health.usable:
            return CheckResult(CHECK_KEY_ACTIVE, True, f"Key {health.version} is active.")
        return CheckResult(CHECK_KEY_ACTIVE, False, _sentence(health.detail))


def _version_text(version: KMIPVersion | None) -> str:
    for pair, value in _VERSIONS.items():
        if value == version:
            return f"{pair[0]}.{pair[1]}"
    return "1.2"


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."
