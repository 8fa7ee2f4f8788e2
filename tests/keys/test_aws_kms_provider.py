"""AwsKmsProvider against the LocalStack that `make test` starts (no mocks of boto3).

The customer's keys live in ACCOUNT_ID; the provider acts as the vendor, another
account, and uses them by full ARN cross-account. What LocalStack cannot produce
(timeouts, refused connections, AccessDenied, throttling, 5xx) comes from real
sockets: a closed port, a listener that never answers, and a small HTTP server
that answers with AWS's error documents.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import boto3
import pytest

from keys.providers.aws_kms import (
    CHECK_ENABLED,
    CHECK_FOUND,
    CHECK_ROLE,
    CHECK_ROUND_TRIP,
    CHECK_SYMMETRIC,
    AwsKmsConfig,
    AwsKmsProvider,
    InvalidArn,
    InvalidExternalId,
    VendorCredentials,
    parse_kms_arn,
    parse_role_arn,
    validate_external_id,
)
from keys.providers.base import (
    KeyAccessDenied,
    KeyMaterialInvalid,
    KeyUnavailable,
    all_required_passed,
)
from keys.runtime import dek_context
from tests.support.aws import ACCOUNT_ID, REGION, aws_endpoint, boto_client, create_kms_key

VENDOR_ACCOUNT_ID = "999988887777"
VENDOR_SECRET = "vendor-secret-never-shown"
VENDOR = VendorCredentials(VENDOR_ACCOUNT_ID, VENDOR_SECRET)
CONTEXT = dek_context("5b0d7c1e-tenant-acme", 1)
ROLE_ARN = f"arn:aws:iam::{ACCOUNT_ID}:role/keyward/KeywardKeyAccess"
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
KEY_ARN = f"arn:aws:kms:eu-west-1:{ACCOUNT_ID}:key/{KEY_ID}"
ALL_CHECKS = [CHECK_FOUND, CHECK_ENABLED, CHECK_SYMMETRIC, CHECK_ROUND_TRIP]


def provider_for(key_arn: str, endpoint: str | None = None, **options: Any) -> AwsKmsProvider:
    config_options = {k: options.pop(k) for k in ("role_arn", "external_id") if k in options}
    options.setdefault("connect_timeout", 1)
    options.setdefault("read_timeout", 2)
    options.setdefault("max_attempts", 1)
    return AwsKmsProvider(
        AwsKmsConfig(key_arn, **config_options),
        endpoint_url=endpoint or aws_endpoint(),
        vendor_credentials=VENDOR,
        **options,
    )


@pytest.fixture
def customer() -> Any:
    """The customer's own KMS client: creates, disables and deletes their keys."""
    return boto_client("kms", ACCOUNT_ID)


def alias_arn(key_arn: str, name: str) -> str:
    return key_arn.split(":key/")[0] + f":alias/{name}"


def new_alias(customer: Any, key_arn: str) -> str:
    name = f"keyward-{uuid.uuid4().hex[:12]}"
    customer.create_alias(AliasName=f"alias/{name}", TargetKeyId=key_arn)
    return alias_arn(key_arn, name)


def by_name(results: list[Any]) -> dict[str, Any]:
    return {r.name: r for r in results}


def assert_not_run(results: list[Any], names: list[str]) -> None:
    checks = by_name(results)
    for name in names:
        assert not checks[name].passed
        assert checks[name].message.startswith("not run: "), checks[name].message


# -- ARN, role and external id rules -------------------------------------------


@pytest.mark.parametrize(
    ("arn", "kind", "region", "resource_id"),
    [
        (KEY_ARN, "key", "eu-west-1", KEY_ID),
        (
            f"arn:aws:kms:eu-west-1:{ACCOUNT_ID}:alias/keyward/prod_kek-1",
            "alias",
            "eu-west-1",
            "keyward/prod_kek-1",
        ),
        (
            f"arn:aws:kms:us-east-1:{ACCOUNT_ID}:key/mrk-1234abcd12ab34cd56ef1234567890ab",
            "key",
            "us-east-1",
            "mrk-1234abcd12ab34cd56ef1234567890ab",
        ),
        (
            f"arn:aws-us-gov:kms:us-gov-west-1:{ACCOUNT_ID}:key/{KEY_ID}",
            "key",
            "us-gov-west-1",
            KEY_ID,
        ),
        (f"arn:aws-cn:kms:cn-north-1:{ACCOUNT_ID}:alias/k", "alias", "cn-north-1", "k"),
    ],
)
def test_parse_kms_arn_accepts(arn: str, kind: str, region: str, resource_id: str) -> None:
    parsed = parse_kms_arn(arn)
    assert (parsed.arn, parsed.resource_type, parsed.region) == (arn, kind, region)
    assert parsed.resource_id == resource_id
    assert parsed.account == ACCOUNT_ID
    assert parsed.is_alias == (kind == "alias")
    assert parsed.alias_name == (f"alias/{resource_id}" if kind == "alias" else None)
    assert parsed.is_multi_region == resource_id.startswith("mrk-")


P = f"arn:aws:kms:eu-west-1:{ACCOUNT_ID}"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "the ARN is empty"),
        (KEY_ID, "not an ARN"),
        (f"arn:aws:kms:eu-west-1:{ACCOUNT_ID}", "not an ARN"),
        (f"arn:aws:kms:eu-west-1:11112222333:key/{KEY_ID}", "account id must be 12 digits"),
        (f"arn:aws:kms:eu-west-1:1111222233334:key/{KEY_ID}", "account id must be 12 digits"),
        (f"arn:aws:kms:eu-west-1:11112222333a:key/{KEY_ID}", "account id must be 12 digits"),
        (
            f"arn:aws-iso:kms:us-iso-east-1:{ACCOUNT_ID}:key/{KEY_ID}",
            "partition 'aws-iso' is not allowed",
        ),
        (f"arn:azure:kms:eu-west-1:{ACCOUNT_ID}:key/{KEY_ID}", "not an AWS partition"),
        (f"arn:aws:s3:eu-west-1:{ACCOUNT_ID}:key/{KEY_ID}", "service must be 'kms'"),
        (f"arn:aws:kms::{ACCOUNT_ID}:key/{KEY_ID}", "region is missing"),
        (f"arn:aws:kms:europe:{ACCOUNT_ID}:key/{KEY_ID}", "not an AWS region name"),
        (f"arn:aws:kms:EU-WEST-1:{ACCOUNT_ID}:key/{KEY_ID}", "not an AWS region name"),
        (
            f"arn:aws:kms:cn-north-1:{ACCOUNT_ID}:key/{KEY_ID}",
            "region 'cn-north-1' is not in partition 'aws'",
        ),
        (f"arn:aws-cn:kms:eu-west-1:{ACCOUNT_ID}:key/{KEY_ID}", "not in partition 'aws-cn'"),
        (f"{P}:key/not-a-uuid", "must be a key id"),
        (f"{P}:key/{KEY_ID.upper()}", "must be a key id"),
        (f"{P}:key/mrk-1234abcd", "mrk- followed by 32 hex digits"),
        (f"{P}:key/", "key id '' must be a key id"),
        (f"{P}:alias/aws/s3", "AWS managed key"),
        (f"{P}:alias/bad!name", "alias name 'bad!name' must be 1 to 250 characters"),
        (f"{P}:alias/" + "a" * 251, "must be 1 to 250 characters"),
        (f"{P}:alias/with space", "must not contain spaces"),
        (f" {P}:key/{KEY_ID}", "must not contain spaces"),
        (f"{P}:secret/{KEY_ID}", "must be key/<key id> or alias/<alias name>"),
        (f"{P}:{KEY_ID}", "must be key/<key id> or alias/<alias name>"),
    ],
)
def test_parse_kms_arn_names_the_problem(value: str, problem: str) -> None:
    with pytest.raises(InvalidArn, match=re.escape(problem)) as caught:
        parse_kms_arn(value)
    assert isinstance(caught.value, ValueError)
    assert len(str(caught.value)) < 400  # a long input is cut, not echoed whole


def test_allowed_partitions_is_a_setting() -> None:
    iso = f"arn:aws-iso:kms:us-iso-east-1:{ACCOUNT_ID}:key/{KEY_ID}"
    assert parse_kms_arn(iso, allowed_partitions=("aws", "aws-iso")).partition == "aws-iso"
    with pytest.raises(InvalidArn, match=r"partition 'aws-cn' is not allowed \(allowed: aws\)"):
        parse_kms_arn(
            f"arn:aws-cn:kms:cn-north-1:{ACCOUNT_ID}:key/{KEY_ID}", allowed_partitions=("aws",)
        )
    with pytest.raises(InvalidArn, match="not allowed"):
        AwsKmsConfig(iso)
    assert AwsKmsConfig(iso, allowed_partitions=("aws-iso",)).region == "us-iso-east-1"


def test_parse_role_arn() -> None:
    role = parse_role_arn(ROLE_ARN)
    assert (role.account, role.path, role.name) == (ACCOUNT_ID, "/keyward/", "KeywardKeyAccess")
    plain = parse_role_arn(f"arn:aws-us-gov:iam::{ACCOUNT_ID}:role/Keyward+Access=1,a.b@c-d_e")
    assert (plain.partition, plain.path, plain.name) == (
        "aws-us-gov",
        "/",
        "Keyward+Access=1,a.b@c-d_e",
    )

    bad = {
        f"arn:aws:iam:eu-west-1:{ACCOUNT_ID}:role/r": "has no region",
        f"arn:aws:iam::{ACCOUNT_ID[:-1]}:role/r": "account id must be 12 digits",
        f"arn:aws:iam::{ACCOUNT_ID}:user/bob": "must be role/<name>",
        f"arn:aws:iam::{ACCOUNT_ID}:role/": "must be role/<name>",
        f"arn:aws:iam::{ACCOUNT_ID}:role/" + "r" * 65: "must be role/<name>",
        f"arn:aws:iam::{ACCOUNT_ID}:role/bad*name": "must be role/<name>",
        f"arn:aws:sts::{ACCOUNT_ID}:role/r": "service must be 'iam'",
        f"arn:aws-iso:iam::{ACCOUNT_ID}:role/r": "partition 'aws-iso' is not allowed",
        "KeywardKeyAccess": "not an ARN",
    }
    for value, problem in bad.items():
        with pytest.raises(InvalidArn, match=problem):
            parse_role_arn(value)


def test_external_id_rules() -> None:
    for good in ("ab", "Keyward-acme:tenant/1=x,y@z.e_+", "a" * 1224):
        assert validate_external_id(good) == good
    for bad, problem in [
        ("a", "2 to 1224 characters long, not 1"),
        ("a" * 1225, "2 to 1224 characters long, not 1225"),
        ("has space", r"may only contain .* \(found ' '\)"),
        ("grüß", "may only contain"),
        ("semi;colon", "may only contain"),
    ]:
        with pytest.raises(InvalidExternalId, match=problem):
            validate_external_id(bad)


def test_config_validates_and_derives_the_region() -> None:
    config = AwsKmsConfig(KEY_ARN, role_arn=ROLE_ARN, external_id="acme-7f3e")
    assert config.region == "eu-west-1"
    assert config.account == ACCOUNT_ID
    assert "acme-7f3e" not in repr(config)
    with pytest.raises(InvalidArn, match="account id must be 12 digits"):
        AwsKmsConfig(KEY_ARN.replace(ACCOUNT_ID, "12345"))
    with pytest.raises(InvalidArn, match="only be assumed in its own partition"):
        AwsKmsConfig(KEY_ARN, role_arn=ROLE_ARN.replace("arn:aws:", "arn:aws-cn:"))
    with pytest.raises(InvalidExternalId, match="only used with a role ARN"):
        AwsKmsConfig(KEY_ARN, external_id="acme-7f3e")
    with pytest.raises(InvalidExternalId):
        AwsKmsConfig(KEY_ARN, role_arn=ROLE_ARN, external_id="x")


# -- wrap and unwrap against LocalStack ------------------------------------------


def test_the_vendor_is_another_account() -> None:
    identity = (
        boto3.session.Session(
            aws_access_key_id=VENDOR.access_key_id, aws_secret_access_key=VENDOR.secret_access_key
        )
        .client("sts", region_name=REGION, endpoint_url=aws_endpoint())
        .get_caller_identity()
    )
    assert identity["Account"] == VENDOR_ACCOUNT_ID != ACCOUNT_ID


def test_wrap_unwrap_round_trip_with_the_keyward_context() -> None:
    key_arn = create_kms_key(ACCOUNT_ID)
    provider = provider_for(key_arn)
    dek = b"\x07" * 32

    wrapped = provider.wrap(dek, CONTEXT)

    assert wrapped.version == key_arn
    assert dek not in wrapped.blob
    assert provider.unwrap(wrapped.blob, CONTEXT, wrapped.version) == dek
    assert provider.current_version() == key_arn


def test_unwrap_under_another_context_is_material_invalid() -> None:
    key_arn = create_kms_key(ACCOUNT_ID)
    provider = provider_for(key_arn)
    dek = bytes(range(32))
    wrapped = provider.wrap(dek, CONTEXT)

    for other in (dek_context("5b0d7c1e-tenant-globex", 1), dek_context("5b0d7c1e-tenant-acme", 2)):
        with pytest.raises(KeyMaterialInvalid, match="encryption context") as caught:
            provider.unwrap(wrapped.blob, other, wrapped.version)
        text = str(caught.value)
        assert "InvalidCiphertextException" in text
        for secret in (wrapped.blob.hex(), base64.b64encode(wrapped.blob).decode(), dek.hex()):
            assert secret not in text


def test_unwrap_is_pinned_to_the_recorded_key() -> None:
    provider = provider_for(create_kms_key(ACCOUNT_ID))
    wrapped = provider.wrap(b"k" * 32, CONTEXT)
    other_key = create_kms_key(ACCOUNT_ID)

    with pytest.raises(KeyMaterialInvalid, match="another KMS key"):
        provider.unwrap(wrapped.blob, CONTEXT, other_key)
    with pytest.raises(KeyMaterialInvalid, match="not an AWS KMS key version"):
        provider.unwrap(wrapped.blob, CONTEXT, "root-1")
    with pytest.raises(KeyMaterialInvalid, match="is an alias ARN"):
        provider.unwrap(wrapped.blob, CONTEXT, alias_arn(wrapped.version, "k"))


def test_disabled_key_denies_access(customer: Any) -> None:
    key_arn = create_kms_key(ACCOUNT_ID)
    provider = provider_for(key_arn)
    wrapped = provider.wrap(b"d" * 32, CONTEXT)

    customer.disable_key(KeyId=key_arn)

    with pytest.raises(KeyAccessDenied, match=r"DisabledException.*enable it"):
        provider.unwrap(wrapped.blob, CONTEXT, wrapped.version)
    with pytest.raises(KeyAccessDenied):
        provider.wrap(b"d" * 32, CONTEXT)
    state = provider.key_state()
    assert (state.state, state.enabled, state.pending_deletion) == ("Disabled", False, False)

    customer.enable_key(KeyId=key_arn)
    assert provider.unwrap(wrapped.blob, CONTEXT, wrapped.version) == b"d" * 32


def test_key_pending_deletion_denies_access(customer: Any) -> None:
    key_arn = create_kms_key(ACCOUNT_ID)
    provider = provider_for(key_arn)
    wrapped = provider.wrap(b"p" * 32, CONTEXT)

    customer.schedule_key_deletion(KeyId=key_arn, PendingWindowInDays=7)

    with pytest.raises(KeyAccessDenied, match=r"KMSInvalidStateException.*pending deletion"):
        provider.unwrap(wrapped.blob, CONTEXT, wrapped.version)
    state = provider.key_state()
    assert state.state == "PendingDeletion"
    assert state.pending_deletion and not state.enabled
    assert state.deletion_date is not None

    checks = by_name(provider.run_checks(CONTEXT))
    assert not checks[CHECK_ENABLED].passed
    assert "cancel the key deletion" in checks[CHECK_ENABLED].message.lower()
    assert_not_run(list(checks.values()), [CHECK_ROUND_TRIP])


def test_alias_resolves_and_follows_update_alias(customer: Any) -> None:
    first = create_kms_key(ACCOUNT_ID)
    second = create_kms_key(ACCOUNT_ID)
    alias = new_alias(customer, first)
    provider = provider_for(alias)

    assert provider.current_version() == first
    old = provider.wrap(b"a" * 32, CONTEXT)
    assert old.version == first
    state = provider.key_state()
    assert (state.arn, state.alias_target, state.key_arn) == (alias, first, first)
    facts = provider.describe().facts
    assert facts["Alias"] == "alias/" + alias.split(":alias/")[1]
    assert facts["Key ARN"] == first

    # The key id, not the ARN: LocalStack 4.10 stores an ARN given to UpdateAlias verbatim
    # and then cannot resolve the alias (real AWS accepts either).
    customer.update_alias(
        AliasName="alias/" + alias.split(":alias/")[1], TargetKeyId=second.rsplit("/", 1)[1]
    )

    assert provider.current_version() == second
    new = provider.wrap(b"b" * 32, CONTEXT)
    assert new.version == second
    # Wrapped DEKs stay pinned to the key that wrapped them.
    assert provider.unwrap(old.blob, CONTEXT, old.version) == b"a" * 32
    assert provider.unwrap(new.blob, CONTEXT, new.version) == b"b" * 32


def test_describe_a_key_arn() -> None:
    key_arn = create_kms_key(ACCOUNT_ID)
    description = provider_for(key_arn).describe()
    assert (description.kind, description.label) == ("aws_kms", "AWS KMS key")
    assert dict(description.facts) == {
        "Key ARN": key_arn,
        "Region": REGION,
        "Account": ACCOUNT_ID,
    }


# -- Save and Test -----------------------------------------------------------------


def test_checks_pass_for_a_good_key_and_alias(customer: Any) -> None:
    key_arn = create_kms_key(ACCOUNT_ID)
    for arn in (key_arn, new_alias(customer, key_arn)):
        results = provider_for(arn).run_checks(CONTEXT)
        assert [r.name for r in results] == ALL_CHECKS
        assert all_required_passed(results), results
        assert key_arn in by_name(results)[CHECK_FOUND].message
    assert "resolves to" in by_name(results)[CHECK_FOUND].message


def test_checks_for_a_disabled_key(customer: Any) -> None:
    key_arn = create_kms_key(ACCOUNT_ID)
    customer.disable_key(KeyId=key_arn)

    results = provider_for(key_arn).run_checks(CONTEXT)

    checks = by_name(results)
    assert [r.name for r in results] == ALL_CHECKS
    assert checks[CHECK_FOUND].passed
    assert not checks[CHECK_ENABLED].passed
    assert "enable the key in the AWS KMS console" in checks[CHECK_ENABLED].message
    assert checks[CHECK_SYMMETRIC].passed
    assert_not_run(results, [CHECK_ROUND_TRIP])
    assert not all_required_passed(results)


@pytest.mark.parametrize(
    ("spec", "usage", "says"),
    [
        ("RSA_2048", "ENCRYPT_DECRYPT", "asymmetric RSA key (RSA_2048, key usage ENCRYPT_DECRYPT)"),
        ("HMAC_256", "GENERATE_VERIFY_MAC", "HMAC key (HMAC_256, key usage GENERATE_VERIFY_MAC)"),
    ],
)
def test_checks_refuse_a_key_that_is_not_symmetric(
    customer: Any, spec: str, usage: str, says: str
) -> None:
    key_arn = customer.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["Arn"]

    results = provider_for(key_arn).run_checks(CONTEXT)

    checks = by_name(results)
    assert checks[CHECK_FOUND].passed and checks[CHECK_ENABLED].passed
    assert not checks[CHECK_SYMMETRIC].passed
    assert says in checks[CHECK_SYMMETRIC].message
    assert "key type Symmetric and key usage Encrypt and decrypt" in checks[CHECK_SYMMETRIC].message
    assert_not_run(results, [CHECK_ROUND_TRIP])


def test_checks_for_a_missing_alias() -> None:
    key_arn = create_kms_key(ACCOUNT_ID)
    missing = alias_arn(key_arn, f"nothing-{uuid.uuid4().hex[:8]}")

    results = provider_for(missing).run_checks(CONTEXT)

    assert [r.name for r in results] == ALL_CHECKS
    found = by_name(results)[CHECK_FOUND]
    assert not found.passed
    assert "alias not found" in found.message.lower()
    assert "create it or fix the ARN" in found.message
    assert_not_run(results, ALL_CHECKS[1:])
    with pytest.raises(KeyAccessDenied, match="NotFoundException"):
        provider_for(missing).current_version()


def test_checks_for_an_external_key_pending_import() -> None:
    key_arn = create_kms_key(ACCOUNT_ID, origin="EXTERNAL")

    results = provider_for(key_arn).run_checks(CONTEXT)

    checks = by_name(results)
    assert checks[CHECK_FOUND].passed
    assert not checks[CHECK_ENABLED].passed
    assert "import key material" in checks[CHECK_ENABLED].message.lower()
    assert_not_run(results, [CHECK_ROUND_TRIP])
    with pytest.raises(KeyAccessDenied, match="pending import"):
        provider_for(key_arn).wrap(b"x" * 32, CONTEXT)


# -- unreachable and stalling endpoints --------------------------------------------


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def stalling_url() -> Iterator[str]:
    """A listener that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_unreachable_endpoint_is_unavailable(closed_port_url: str) -> None:
    provider = provider_for(KEY_ARN, closed_port_url)
    started = time.monotonic()

    with pytest.raises(KeyUnavailable, match=r"could not connect to AWS KMS.*Connection refused"):
        provider.unwrap(b"\x01" * 100, CONTEXT, KEY_ARN)
    results = provider.run_checks(CONTEXT)

    assert time.monotonic() - started < 5  # fails fast, no long retries
    assert [r.name for r in results] == ALL_CHECKS
    found = by_name(results)[CHECK_FOUND]
    assert not found.passed
    assert closed_port_url in found.message and "Connection refused" in found.message
    assert_not_run(results, ALL_CHECKS[1:])
    assert "AWS KMS could not be reached" in results[-1].message


def test_a_kms_that_never_answers_times_out(stalling_url: str) -> None:
    provider = provider_for(KEY_ARN, stalling_url, read_timeout=0.5)

    started = time.monotonic()
    with pytest.raises(
        KeyUnavailable, match=r"did not answer Decrypt within the read timeout of 0.5 s"
    ):
        provider.unwrap(b"\x01" * 100, CONTEXT, KEY_ARN)
    assert time.monotonic() - started < 5  # the read timeout, not botocore's 60 s default

    started = time.monotonic()
    results = provider.run_checks(CONTEXT)
    assert time.monotonic() - started < 5  # the read timeout, not botocore's 60 s default
    assert "read timeout of 0.5 s" in by_name(results)[CHECK_FOUND].message
    assert_not_run(results, ALL_CHECKS[1:])


# -- the role in the customer's account --------------------------------------------


def test_assumes_the_role_and_caches_its_credentials() -> None:
    key_arn = create_kms_key(ACCOUNT_ID)
    provider = provider_for(key_arn, role_arn=ROLE_ARN, external_id="acme-7f3e-2c")
    assert provider.assumed_credentials is None

    wrapped = provider.wrap(b"r" * 32, CONTEXT)
    assert provider.unwrap(wrapped.blob, CONTEXT, wrapped.version) == b"r" * 32
    assert provider.current_version() == key_arn

    creds = provider.assumed_credentials
    assert creds is not None
    assert creds.access_key_id != VENDOR_ACCOUNT_ID
    assert provider.credential_refreshes == 1  # one AssumeRole for all four calls
    assert creds.role_session_name.startswith("keyward-")
    # The credentials are the role's: STS says who they are.
    caller = (
        boto3.session.Session(
            aws_access_key_id=creds.access_key_id,
            aws_secret_access_key=creds.secret_access_key,
            aws_session_token=creds.session_token,
        )
        .client("sts", region_name=REGION, endpoint_url=aws_endpoint())
        .get_caller_identity()
    )
    assert caller["Arn"] == (
        f"arn:aws:sts::{ACCOUNT_ID}:assumed-role/KeywardKeyAccess/{creds.role_session_name}"
    )

    results = provider.run_checks(CONTEXT)
    assert [r.name for r in results] == [CHECK_ROLE, *ALL_CHECKS]
    assert all_required_passed(results), results
    assert provider.credential_refreshes == 1

    for text in (repr(provider), repr(creds), repr(provider.config)):
        assert creds.secret_access_key not in text
        assert creds.session_token not in text
        assert VENDOR_SECRET not in text
        assert "acme-7f3e-2c" not in text


def test_role_credentials_are_assumed_once_across_threads() -> None:
    provider = provider_for(create_kms_key(ACCOUNT_ID), role_arn=ROLE_ARN)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            provider.wrap(b"t" * 32, CONTEXT)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert provider.credential_refreshes == 1


def test_role_credentials_are_renewed_shortly_before_expiry() -> None:
    # A refresh margin as long as the session: every use is "shortly before expiry".
    provider = provider_for(
        create_kms_key(ACCOUNT_ID),
        role_arn=ROLE_ARN,
        role_session_seconds=900,
        credential_refresh_margin=900,
    )
    provider.wrap(b"e" * 32, CONTEXT)
    first = provider.assumed_credentials
    provider.wrap(b"e" * 32, CONTEXT)
    assert provider.credential_refreshes == 2
    assert provider.assumed_credentials is not first


def test_repr_never_shows_credentials() -> None:
    provider = provider_for(KEY_ARN)
    assert VENDOR_SECRET not in repr(provider)
    assert VENDOR_SECRET not in repr(VENDOR)
    assert KEY_ARN in repr(provider)


# -- AWS errors LocalStack cannot produce, from a small HTTP server ----------------

_DESCRIBED = {
    "KeyMetadata": {
        "AWSAccountId": ACCOUNT_ID,
        "KeyId": KEY_ID,
        "Arn": KEY_ARN,
        "CreationDate": 1.7e9,
        "Enabled": True,
        "KeyUsage": "ENCRYPT_DECRYPT",
        "KeyState": "Enabled",
        "Origin": "AWS_KMS",
        "KeyManager": "CUSTOMER",
        "KeySpec": "SYMMETRIC_DEFAULT",
    }
}
_STS_DENIED = (
    '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
    "<Code>AccessDenied</Code><Message>User: arn:aws:iam::999988887777:user/vendor is not "
    "authorized to perform: sts:AssumeRole</Message></Error><RequestId>r-1</RequestId>"
    "</ErrorResponse>"
)


class FakeAws(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeAwsHandler)
        self.answers: dict[str, tuple[int, str]] = {}
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def kms_error(self, operation: str, status: int, code: str, message: str = "") -> None:
        self.answers[operation] = (status, json.dumps({"__type": code, "message": message}))


class _FakeAwsHandler(BaseHTTPRequestHandler):
    server: FakeAws

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        target = self.headers.get("X-Amz-Target", "")
        if target:
            operation = target.rsplit(".", 1)[-1]
            kind = "application/x-amz-json-1.1"
        else:
            operation = parse_qs(body.decode()).get("Action", [""])[0]
            kind = "text/xml"
        self.server.requests.append(operation)
        status, payload = self.server.answers.get(operation, (500, "{}"))
        data = payload.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_aws() -> Iterator[FakeAws]:
    server = FakeAws()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    thread.join()
    server.server_close()


def assert_shows_no_key(error: BaseException, blob: bytes) -> None:
    """Neither the message nor the repr of `error` carries the wrapped key, in hex
    or in base64 (as AWS would have been sent it)."""
    for shown in (str(error), repr(error)):
        assert blob.hex() not in shown
        assert base64.b64encode(blob).decode() not in shown


@pytest.mark.parametrize(
    ("status", "code", "raised"),
    [
        (400, "AccessDeniedException", KeyAccessDenied),
        (400, "DisabledException", KeyAccessDenied),
        (400, "KMSInvalidStateException", KeyAccessDenied),
        (400, "NotFoundException", KeyAccessDenied),
        (500, "KeyUnavailableException", KeyUnavailable),
        (400, "ThrottlingException", KeyUnavailable),
        (400, "LimitExceededException", KeyUnavailable),
        (500, "KMSInternalException", KeyUnavailable),
        (500, "DependencyTimeoutException", KeyUnavailable),
        (503, "ServiceUnavailable", KeyUnavailable),
        (502, "SomethingNew", KeyUnavailable),
        (400, "UnrecognizedClientException", KeyUnavailable),
        (400, "IncorrectKeyException", KeyMaterialInvalid),
        (400, "InvalidCiphertextException", KeyMaterialInvalid),
    ],
)
def test_aws_errors_map_onto_the_contract(
    fake_aws: FakeAws, status: int, code: str, raised: type[Exception]
) -> None:
    fake_aws.kms_error("Decrypt", status, code, "what AWS said")
    blob = b"\xa5" * 64
    with pytest.raises(raised, match=f"AWS KMS Decrypt on {KEY_ARN} failed with {code}") as caught:
        provider_for(KEY_ARN, fake_aws.url).unwrap(blob, CONTEXT, KEY_ARN)
    assert_shows_no_key(caught.value, blob)


@pytest.mark.parametrize(
    ("status", "code", "raised"),
    [
        (400, "AccessDeniedException", KeyAccessDenied),
        (400, "IncorrectKeyException", KeyMaterialInvalid),
        (400, "ThrottlingException", KeyUnavailable),
    ],
)
def test_reencrypt_errors_map_onto_the_contract_and_show_no_key(
    fake_aws: FakeAws, status: int, code: str, raised: type[Exception]
) -> None:
    fake_aws.kms_error("ReEncrypt", status, code, "what AWS said")
    blob = b"\xa5" * 64
    provider = provider_for(KEY_ARN, fake_aws.url)
    assert provider.can_reencrypt(KEY_ARN, provider)
    with pytest.raises(
        raised, match=f"AWS KMS ReEncrypt on {KEY_ARN} failed with {code}"
    ) as caught:
        provider.reencrypt(blob, CONTEXT, KEY_ARN, into=provider)
    assert_shows_no_key(caught.value, blob)
    assert fake_aws.requests == ["ReEncrypt"]


def test_reencrypt_is_offered_only_within_one_principal_and_region() -> None:
    provider = provider_for(KEY_ARN)
    assert provider.can_reencrypt(KEY_ARN, provider)
    other_region = KEY_ARN.replace("eu-west-1", "us-east-1")
    assert not provider.can_reencrypt(other_region, provider)
    assert not provider.can_reencrypt("not an arn", provider)
    with_role = provider_for(KEY_ARN, role_arn=ROLE_ARN, external_id="acme-7f3e")
    assert not provider.can_reencrypt(KEY_ARN, with_role)
    assert not with_role.can_reencrypt(KEY_ARN, provider)
    assert not provider.can_reencrypt(KEY_ARN, provider_for(KEY_ARN, "http://127.0.0.1:9"))


def test_retries_are_botocores_and_bounded(fake_aws: FakeAws) -> None:
    fake_aws.kms_error("Encrypt", 500, "KMSInternalException")
    with pytest.raises(KeyUnavailable, match="KMSInternalException"):
        provider_for(KEY_ARN, fake_aws.url, max_attempts=2).wrap(b"x" * 32, CONTEXT)
    assert fake_aws.requests == ["Encrypt", "Encrypt"]


def test_checks_explain_a_key_policy_that_denies(fake_aws: FakeAws) -> None:
    fake_aws.kms_error("DescribeKey", 400, "AccessDeniedException", "not authorized")
    results = provider_for(KEY_ARN, fake_aws.url).run_checks(CONTEXT)
    found = by_name(results)[CHECK_FOUND]
    assert not found.passed
    assert "add kms:DescribeKey, kms:Encrypt and kms:Decrypt" in found.message
    assert "key policy" in found.message
    assert_not_run(results, ALL_CHECKS[1:])

    fake_aws.answers["DescribeKey"] = (200, json.dumps(_DESCRIBED))
    fake_aws.kms_error("Encrypt", 400, "AccessDeniedException", "not authorized")
    checks = by_name(provider_for(KEY_ARN, fake_aws.url).run_checks(CONTEXT))
    assert checks[CHECK_FOUND].passed and checks[CHECK_SYMMETRIC].passed
    assert not checks[CHECK_ROUND_TRIP].passed
    assert (
        "denied kms:Encrypt" in checks[CHECK_ROUND_TRIP].message
        and "add kms:Encrypt and kms:Decrypt for the vendor's AWS principal to the key policy"
        in checks[CHECK_ROUND_TRIP].message
    )


def test_a_refused_assume_role_denies_access(fake_aws: FakeAws) -> None:
    fake_aws.answers["AssumeRole"] = (403, _STS_DENIED)
    provider = provider_for(KEY_ARN, fake_aws.url, role_arn=ROLE_ARN, external_id="acme-7f3e")

    with pytest.raises(KeyAccessDenied, match=r"AWS STS AssumeRole .* failed with AccessDenied"):
        provider.unwrap(b"\x01" * 64, CONTEXT, KEY_ARN)
    results = provider.run_checks(CONTEXT)

    assert [r.name for r in results] == [CHECK_ROLE, *ALL_CHECKS]
    role = results[0]
    assert not role.passed
    assert "trust policy" in role.message and "sts:ExternalId" in role.message
    assert "acme-7f3e" not in role.message
    assert_not_run(results, ALL_CHECKS)
    assert provider.assumed_credentials is None


def test_providers_of_one_vendor_identity_share_a_session_and_still_work() -> None:
    """A session per provider cost a fresh worker minutes on its first round of 2,000 keys."""
    first, second = (provider_for(create_kms_key(ACCOUNT_ID)) for _ in range(2))
    assert first._base_session() is second._base_session()
    other = AwsKmsProvider(
        AwsKmsConfig(KEY_ARN),
        endpoint_url=aws_endpoint(),
        vendor_credentials=VendorCredentials("111111111111", "another vendor secret"),
    )
    assert other._base_session() is not first._base_session()
    # Clients made from the shared session at once, from many threads, all work.
    results: list[bool] = []

    def use(provider: AwsKmsProvider) -> None:
        wrapped = provider.wrap(b"\x01" * 32, CONTEXT)
        results.append(provider.unwrap(wrapped.blob, CONTEXT, wrapped.version) == b"\x01" * 32)

    providers = [provider_for(create_kms_key(ACCOUNT_ID)) for _ in range(6)]
    threads = [threading.Thread(target=use, args=(p,)) for p in providers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [True] * len(providers)
