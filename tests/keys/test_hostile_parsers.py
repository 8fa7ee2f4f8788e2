"""Hostile ARNs, vault URLs, KMIP hosts and ports, PEM certificates and keys.

Whatever a customer types or uploads, each parser answers with its own refusal
(a message for the form) or a parsed value, never another exception.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.core.files.uploadedfile import SimpleUploadedFile, UploadedFile
from django.utils.datastructures import MultiValueDict
from hypothesis import example, given, settings
from hypothesis import strategies as st

from keys.forms import AwsKmsSourceForm, AzureKeyVaultSourceForm, KmipSourceForm
from keys.providers.aws_kms import InvalidAwsKmsConfig, parse_kms_arn, parse_role_arn
from keys.providers.azure_keyvault import (
    InvalidAzureConfig,
    validate_client_certificate,
    validate_client_id,
    validate_key_name,
    validate_tenant_id,
    validate_vault_url,
)
from keys.providers.kmip.config import InvalidKmipConfig, KmipConfig, validate_host
from keys.providers.kmip.material import InvalidKmipMaterial, validate_client_material
from tests.servers.keyvault import make_client_certificate
from tests.support.fuzz import examples, mutated

# Hostile input: a short run in `make test`, twenty times the examples in `make faults`.
pytestmark = pytest.mark.faults

# ARNs: free text, and text built from ARN-shaped pieces so the parser's later
# checks are reached too.
ARN_PIECES = st.sampled_from(
    ["arn", "aws", "aws-cn", "aws-us-gov", "aws-iso", "kms", "iam", "", "eu-west-1",
     "us-gov-west-1", "cn-north-1", "xx-yyyy-9", "123456789012", "12345678901",
     "key/1234abcd-12ab-34cd-56ef-1234567890ab", "key/mrk-" + "a" * 32, "alias/aws/ebs",
     "alias/my-key", "role/a/b", "role/" + "n" * 65, ":", "/", "*", "\u00e9", "\x00", " "]
)  # fmt: skip
arns = st.one_of(
    st.text(max_size=200),
    st.lists(ARN_PIECES, min_size=1, max_size=8).map(":".join),
    st.lists(ARN_PIECES | st.text(max_size=8), min_size=6, max_size=6).map(":".join),
)


@settings(max_examples=examples(100))
@given(arns)
@example("arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab")
@example("arn:aws:iam::123456789012:role/keyward")
def test_any_text_as_an_arn_is_parsed_or_refused(value: str) -> None:
    for parse in (parse_kms_arn, parse_role_arn):
        try:
            parsed = parse(value)
        except InvalidAwsKmsConfig as exc:
            assert str(exc)
        else:
            assert parsed.arn == value


SUFFIXES = (".vault.azure.net", ".managedhsm.azure.net")
url_pieces = st.sampled_from(
    ["https://", "http://", "HTTPS://", "myvault", "my-vault", "a", "-x", "vault.azure.net",
     ".vault.azure.net", ".managedhsm.azure.net", ":443", ":8443", "/", "/keys", "?x=1", "#f",
     "user@", "127.0.0.1", "[::1]", "%2e", "\\", " ", "\u0131", "xn--80ak6aa92e"]
)  # fmt: skip
vault_urls = st.one_of(
    st.text(max_size=320), st.lists(url_pieces, min_size=1, max_size=7).map("".join)
)


@settings(max_examples=examples(150))
@given(vault_urls)
@example("https://myvault.vault.azure.net/")
def test_any_text_as_a_vault_url_is_normalised_or_refused(value: str) -> None:
    try:
        url = validate_vault_url(value, allowed_suffixes=SUFFIXES)
    except InvalidAzureConfig as exc:
        assert str(exc)
    else:
        assert url.startswith("https://") and url.endswith(SUFFIXES)


@settings(max_examples=examples(100))
@given(st.text(max_size=140))
@example("3d2c5d0e-6d1a-4c53-9f63-0a4e9f1d2b7c")
def test_any_text_as_azure_names_and_ids_is_accepted_or_refused(value: str) -> None:
    for check in (validate_key_name, validate_tenant_id, validate_client_id):
        try:
            check(value)
        except InvalidAzureConfig as exc:
            assert str(exc)


hosts = st.one_of(
    st.text(max_size=80),
    st.ip_addresses().map(str),
    st.from_regex(r"\A[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,4}\.?\Z"),
    st.sampled_from(["[::1]", "::1", "kmip.example.com:5696", "https://kmip", "0x7f.1", "1.2.3"]),
)
ports = st.one_of(st.integers(-(2**40), 2**40), st.integers(0, 70000), st.booleans())
answers = st.lists(st.one_of(st.ip_addresses().map(str), st.text(max_size=20)), max_size=4)


@settings(max_examples=examples(100))
@given(host=hosts, port=ports, answer=answers)
def test_any_kmip_host_and_port_are_checked_or_refused(host: str, port: Any, answer: list) -> None:
    """The resolver's answer is hostile too: it comes from the customer's DNS."""
    try:
        KmipConfig(host=host, port=port)
        validate_host(host, port, resolve=lambda _h, _p: list(answer))
    except InvalidKmipConfig as exc:
        assert str(exc)


# PEM files.


# Split, so that no tracked file holds what looks like the start of a private key:
# every key these tests use is made when they run.
PEM_KEY_BEGIN = b"-----BEGIN " + b"PRIVATE KEY-----"


def _pem_like(label: str) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=300).map(
        lambda body: (
            f"-----BEGIN {label}-----\n".encode()
            + base64.encodebytes(body)
            + f"-----END {label}-----\n".encode()
        )
    )


def pems(valid: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=400),
        _pem_like("CERTIFICATE"),
        _pem_like("PRIVATE KEY"),
        _pem_like("ENCRYPTED PRIVATE KEY"),
        mutated(valid),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="module")
def kmip_material() -> dict[str, Any]:
    """A CA, and a client certificate and key it issued (EC: quick to parse)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("fuzz-ca"))
        .issuer_name(_name("fuzz-ca"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fuzz-client"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return {
        "ca_pem": ca.public_bytes(pem),
        "cert_pem": cert.public_bytes(pem),
        "key_pem": key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }


def test_the_reference_kmip_material_is_valid(kmip_material: dict[str, Any]) -> None:
    validate_client_material(**kmip_material, passphrase=None)


def test_a_certificate_with_a_damaged_key_algorithm_is_refused_as_damaged(
    kmip_material: dict[str, Any], azure_pem: bytes
) -> None:
    """Found by the property test below: one bit flipped in the curve's OID.

    cryptography reads the certificate, and only fails (UnsupportedAlgorithm, not
    a ValueError) when its public key is first used; that was a 500 on the
    KMIP and Azure forms.
    """
    p256 = bytes.fromhex("06082a8648ce3d030107")  # OID 1.2.840.10045.3.1.7
    der = x509.load_pem_x509_certificate(kmip_material["cert_pem"]).public_bytes(
        serialization.Encoding.DER
    )
    assert p256 in der
    damaged = der.replace(p256, p256[:-1] + b"\x06", 1)  # 1.2.840.10045.3.1.6: no such curve
    pem = x509.load_der_x509_certificate(damaged).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidKmipMaterial, match="could not be parsed"):
        validate_client_material(**{**kmip_material, "cert_pem": pem}, passphrase=None)
    # The Azure upload: the same damaged certificate with an RSA key that is not its own.
    azure_key = azure_pem[azure_pem.index(PEM_KEY_BEGIN) :]
    with pytest.raises(InvalidAzureConfig, match="could not be read"):
        validate_client_certificate(pem + azure_key)


def test_a_certificate_with_a_damaged_version_is_refused_as_damaged(
    kmip_material: dict[str, Any], azure_pem: bytes
) -> None:
    """Found by the property test below: one bit flipped in the CA's version field.

    cryptography refuses a version other than v1 or v3 with InvalidVersion,
    which is not a ValueError: that was a 500 on the KMIP and Azure forms.
    """
    v3 = bytes.fromhex("a003020102")  # [0] EXPLICIT INTEGER 2: X.509 v3
    for field in ("ca_pem", "cert_pem"):
        der = x509.load_pem_x509_certificate(kmip_material[field]).public_bytes(
            serialization.Encoding.DER
        )
        assert v3 in der
        damaged = der.replace(v3, v3[:-1] + b"\x05", 1)
        pem = (
            b"-----BEGIN CERTIFICATE-----\n"
            + base64.encodebytes(damaged)
            + b"-----END CERTIFICATE-----\n"
        )
        with pytest.raises(InvalidKmipMaterial, match="could not be parsed"):
            validate_client_material(**{**kmip_material, field: pem}, passphrase=None)
    azure_key = azure_pem[azure_pem.index(PEM_KEY_BEGIN) :]
    with pytest.raises(InvalidAzureConfig, match="could not be read"):
        validate_client_certificate(pem + azure_key)


def test_a_ca_file_with_stray_bytes_around_its_certificate_is_accepted(
    kmip_material: dict[str, Any],
) -> None:
    """Found by the property test below: a byte over 0x7F after the CA's PEM block.

    The CA file went to OpenSSL as text with U+FFFD in place of the byte, which
    it refused with a TypeError (a 500); now only the certificates go to it.
    """
    ca = b"# our CA \xe2\x80\x94 2026\n" + kmip_material["ca_pem"] + b"\x80"
    info = validate_client_material(**{**kmip_material, "ca_pem": ca}, passphrase=None)
    assert info.ca_subject == "CN=fuzz-ca"


@settings(max_examples=examples(60))
@given(data=st.data())
def test_any_kmip_pem_upload_is_accepted_or_refused_naming_the_file(
    kmip_material: dict[str, Any], data: st.DataObject
) -> None:
    damaged = data.draw(st.sampled_from(sorted(kmip_material)))
    files = dict(kmip_material)
    files[damaged] = data.draw(pems(kmip_material[damaged]))
    passphrase = data.draw(st.one_of(st.none(), st.binary(max_size=20)))
    try:
        validate_client_material(**files, passphrase=passphrase)
    except InvalidKmipMaterial as exc:
        assert str(exc) and exc.field in ("ca_cert", "client_cert", "client_key", "passphrase")


@pytest.fixture(scope="module")
def azure_pem() -> bytes:
    return make_client_certificate()


def test_the_reference_azure_certificate_is_valid(azure_pem: bytes) -> None:
    assert validate_client_certificate(azure_pem)


@settings(max_examples=examples(40))
@given(data=st.data())
def test_any_azure_certificate_upload_is_accepted_or_refused(
    azure_pem: bytes, data: st.DataObject
) -> None:
    pem = data.draw(pems(azure_pem))
    try:
        validate_client_certificate(pem)
    except InvalidAzureConfig as exc:
        assert str(exc)


# The forms around them: errors on the form, never an exception.


@settings(max_examples=examples(60))
@given(key_arn=arns, role_arn=st.one_of(st.just(""), arns))
def test_the_aws_form_validates_any_input(key_arn: str, role_arn: str) -> None:
    form = AwsKmsSourceForm({"key_arn": key_arn, "role_arn": role_arn})
    if not form.is_valid():
        assert form.errors


@settings(max_examples=examples(40))
@given(
    url=vault_urls,
    text=st.text(max_size=60),
    method=st.sampled_from(["secret", "certificate", "other", ""]),
    pem=st.one_of(st.none(), st.binary(max_size=300)),
)
def test_the_azure_form_validates_any_input(
    url: str, text: str, method: str, pem: bytes | None
) -> None:
    fields = {
        "vault_url": url,
        "key_name": text,
        "tenant_id": text,
        "client_id": text,
        "auth_method": method,
        "client_secret": text,
    }
    files = MultiValueDict(
        {"client_certificate": [SimpleUploadedFile("c.pem", pem)]} if pem is not None else {}
    )
    form = AzureKeyVaultSourceForm(fields, files)
    if not form.is_valid():
        assert form.errors


@settings(max_examples=examples(40))
@given(
    host=hosts,
    port=st.one_of(st.text(max_size=12), st.integers(-5, 70000).map(str)),
    pem=st.one_of(st.none(), st.binary(max_size=300), _pem_like("CERTIFICATE")),
)
def test_the_kmip_form_validates_any_input(host: str, port: str, pem: bytes | None) -> None:
    uploads: list[UploadedFile] = [SimpleUploadedFile("ca.pem", pem)] if pem is not None else []
    files = MultiValueDict({"ca_cert": uploads} if uploads else {})
    form = KmipSourceForm({"host": host, "port": port}, files)
    if not form.is_valid():
        assert form.errors
