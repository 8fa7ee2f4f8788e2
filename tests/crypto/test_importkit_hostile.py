"""Hostile import tokens, wrapped keys and key material: only the documented refusals."""

from __future__ import annotations

import contextlib
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import example, given, settings
from hypothesis import strategies as st

from crypto import importkit
from tests.support.fuzz import examples, mutated

# Hostile input: a short run in `make test`, twenty times the examples in `make faults`.
pytestmark = pytest.mark.faults

SECRET = b"s" * 32
TENANT = "3d2c5d0e-6d1a-4c53-9f63-0a4e9f1d2b7c"
PUBLIC_DER = b"the wrapping key's public half"
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
VALID = importkit.issue_token(
    SECRET, tenant_id=TENANT, import_id="imp-1", public_der=PUBLIC_DER, now=NOW
)


def verify(token: bytes) -> importkit.TokenClaims:
    return importkit.verify_token(
        SECRET, token, tenant_id=TENANT, public_der=PUBLIC_DER, now=NOW + timedelta(hours=1)
    )


def test_the_reference_token_verifies() -> None:
    assert verify(VALID).import_id == "imp-1"


@settings(max_examples=examples(150))
@given(st.one_of(st.binary(max_size=5000), mutated(VALID)))
@example(b"")
@example(b"KWIT")
@example(VALID[:-1])
@example(VALID + b"\x00")
def test_any_bytes_as_a_token_are_refused_with_its_own_error(token: bytes) -> None:
    try:
        claims = verify(token)
    except importkit.InvalidImportToken as exc:
        assert str(exc)  # a message for the person who uploaded it
        assert "Traceback" not in str(exc)
    else:
        assert token == VALID and claims.tenant_id == TENANT


def _signed(
    fmt: int, issued: int, expires: int, fingerprint: bytes, fields: list[bytes], sizes: list[int]
) -> bytes:
    body = importkit._TOKEN_MAGIC + bytes([fmt])
    body += issued.to_bytes(8, "big", signed=True) + expires.to_bytes(8, "big", signed=True)
    body += fingerprint
    for field, size in zip(fields, sizes, strict=True):
        body += size.to_bytes(2, "big") + field
    return body + importkit._mac(SECRET, body)


int64 = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=examples(150))
@given(
    fmt=st.sampled_from([0, 1, 1, 1, 2, 255]),
    issued=st.one_of(int64, st.just(0)),
    expires=st.one_of(int64, st.integers(-(10**6), 10**18)),
    fingerprint=st.one_of(
        st.just(hashlib.sha256(PUBLIC_DER).digest()), st.binary(min_size=32, max_size=32)
    ),
    fields=st.lists(st.binary(max_size=40), min_size=2, max_size=2),
    size_skew=st.lists(st.sampled_from([0, 0, 0, -1, 1, 1000, 65535]), min_size=2, max_size=2),
    tenant=st.sampled_from([TENANT.encode(), b""]),
)
def test_tokens_signed_with_the_real_secret_but_any_content_are_refused_cleanly(
    fmt: int,
    issued: int,
    expires: int,
    fingerprint: bytes,
    fields: list[bytes],
    size_skew: list[int],
    tenant: bytes,
) -> None:
    """Past the signature: what a leaked secret or a bug in issuing could produce."""
    if tenant:
        fields[0] = tenant
    sizes = [max(0, min(65535, len(f) + skew)) for f, skew in zip(fields, size_skew, strict=True)]
    token = _signed(fmt, issued, expires, fingerprint, fields, sizes)
    try:
        claims = verify(token)
    except importkit.InvalidImportToken as exc:
        assert str(exc)
    else:
        assert claims.tenant_id == TENANT
        assert claims.expires_at > NOW


@pytest.fixture(scope="module")
def wrapping() -> importkit.WrappingKey:
    return importkit.new_wrapping_key()


def _wrap(wrapping: importkit.WrappingKey, key: bytes) -> bytes:
    public = serialization.load_der_public_key(wrapping.public_der)
    return public.encrypt(  # type: ignore[union-attr]
        key,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    )


# Each blob of the right size loads the RSA-4096 private key (about half a
# second with its consistency checks), so few examples here.
@settings(max_examples=examples(10))
@given(data=st.data())
def test_any_wrapped_key_blob_is_refused_with_its_own_error(
    wrapping: importkit.WrappingKey, data: st.DataObject
) -> None:
    good = _wrap(wrapping, bytes(range(7, 39)))
    blob = data.draw(
        st.one_of(
            st.binary(max_size=1100),
            st.binary(min_size=importkit.WRAPPED_KEY_BYTES, max_size=importkit.WRAPPED_KEY_BYTES),
            mutated(good),
        )
    )
    try:
        material = importkit.unwrap_uploaded_key(wrapping.private_pem, blob)
    except importkit.InvalidKeyBlob as exc:
        assert str(exc)
        return
    # Only a blob that really is this key wrapped (or, absurdly rarely, random
    # bytes OAEP accepts) unwraps; the material check then judges it.
    with contextlib.suppress(importkit.InvalidKeyMaterial):
        importkit.check_key_material(material)


@settings(max_examples=examples(200))
@given(st.one_of(st.binary(max_size=64), st.binary(min_size=32, max_size=32)))
@example(bytes(32))
@example(bytes(range(32)))
@example(b"0123456789abcdef0123456789abcdef")
def test_any_key_material_is_accepted_or_refused_as_weak(key: bytes) -> None:
    try:
        importkit.check_key_material(key)
    except importkit.InvalidKeyMaterial as exc:
        assert str(exc)
    else:
        assert len(key) == importkit.KEY_BYTES
        assert importkit.key_check_value(key)
