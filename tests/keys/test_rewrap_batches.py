"""A confirmed rotation's rewrap with overlapping key-store calls (LocalStack's KMS).

Each data key must end wrapped exactly once under the new version, with no
more calls in flight than the bound, and a failure mid-batch keeps what moved.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from audit.models import AuditEvent
from audit.services import Actor
from keys.models import DataKey, KeySource, SourceKind
from keys.providers.aws_kms import AwsKmsProvider
from keys.providers.aws_kms import provider as aws_provider
from keys.providers.aws_kms.errors import AwsKeyAccessDenied
from keys.providers.base import KeyUnavailable
from keys.registry import provider_for
from keys.runtime import reset_for_tests
from keys.services.deks import dek_rotate
from keys.services.rotation import kek_confirm_rotation, kek_rewrap_run
from keys.usage import take_pending
from records.services import record_fields
from tenants.models import ServiceState, Tenant
from tests.keys.conftest import byok_with
from tests.keys.test_lifecycle_races import move_alias
from tests.support.faults import scale, seeded

pytestmark = pytest.mark.faults


class Wraps:
    """Counts each data key's moves under the new key (AWS KMS ReEncrypt, or Encrypt
    after Decrypt) and the most such calls in flight at once."""

    def __init__(self, fail_at: int = 0) -> None:
        self.lock = threading.Lock()
        self.done: Counter[str] = Counter()
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.fail_at = fail_at
        self.by: Counter[str] = Counter()  # "reencrypt" or "wrap"

    def counted(self, name: str, call: Any, context: Any) -> Any:
        with self.lock:
            self.calls += 1
            failing = self.calls == self.fail_at
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if failing:
                raise KeyUnavailable("injected: the key store dropped this call")
            result = call()
        finally:
            with self.lock:
                self.in_flight -= 1
        if result is not None and context.get("keyward:purpose") == "dek":  # not other keys
            with self.lock:
                self.done[context["keyward:dek"]] += 1
                self.by[name] += 1
        return result

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_wrap, real_reencrypt = AwsKmsProvider.wrap, AwsKmsProvider.reencrypt
        wraps = self

        def counted_wrap(provider: AwsKmsProvider, dek: bytes, context: Any) -> Any:
            return wraps.counted("wrap", lambda: real_wrap(provider, dek, context), context)

        def counted_reencrypt(
            provider: AwsKmsProvider, wrapped: bytes, context: Any, version: str, *, into: Any
        ) -> Any:
            return wraps.counted(
                "reencrypt",
                lambda: real_reencrypt(provider, wrapped, context, version, into=into),
                context,
            )

        monkeypatch.setattr(AwsKmsProvider, "wrap", counted_wrap)
        monkeypatch.setattr(AwsKmsProvider, "reencrypt", counted_reencrypt)


def assert_each_moved_once(tenant: Tenant, new_key: str, wraps: Wraps) -> None:
    """Every data key of the tenant is under `new_key`, moved by exactly one call."""
    deks = DataKey.objects.filter(tenant=tenant)
    assert set(deks.values_list("kek_version__provider_version", flat=True)) == {new_key}
    assert wraps.done == {str(v): 1 for v in deks.values_list("version", flat=True)}


def rotated(byok: Any, deks: int) -> tuple[Tenant, KeySource, str]:
    """`deks` data keys under the old key, the alias moved and the rotation confirmed."""
    tenant = byok["acme"].tenant
    for _ in range(deks - 1):
        dek_rotate(tenant=tenant, actor=Actor.system("tests"), reason="more keys")
    new_key = move_alias(byok)
    kek_confirm_rotation(tenant=tenant, actor=Actor.for_user(byok["acme"].owner))
    return tenant, KeySource.objects.get(tenant=tenant, kind=SourceKind.AWS_KMS), new_key


def test_each_dek_is_wrapped_once_with_calls_overlapping_within_the_bound(
    byok_role, settings, monkeypatch
) -> None:
    byok = byok_role
    settings.KEYWARD_KEK_REWRAP_CONCURRENCY = 4
    tenant, source, new_key = rotated(byok, 24)
    wraps = Wraps()
    wraps.install(monkeypatch)
    assert kek_rewrap_run(source_id=str(source.pk)) == "done"
    assert_each_moved_once(tenant, new_key, wraps)
    assert wraps.by == {"reencrypt": 24}  # inside KMS: one call per data key
    assert 1 < wraps.most_in_flight <= 4
    assert Tenant.objects.get(pk=tenant.pk).state == ServiceState.BYOK_ACTIVE
    assert AuditEvent.objects.filter(tenant=tenant, action="kek.rotation_done").count() == 1
    reset_for_tests()  # nothing cached: the records decrypt through the rewrapped DEK
    assert record_fields(tenant, byok["records"][0])


@pytest.mark.parametrize("principal", ["byok", "byok_role"])
def test_a_call_failing_mid_batch_keeps_what_moved_and_a_rerun_moves_the_rest_once(
    principal, request, settings, monkeypatch
) -> None:
    byok = request.getfixturevalue(principal)
    settings.KEYWARD_KEK_REWRAP_CONCURRENCY = 4
    count = scale(12, 40)
    tenant, source, new_key = rotated(byok, count)
    wraps = Wraps(fail_at=seeded("rewrap failure").randint(2, count - 1))
    wraps.install(monkeypatch)
    with pytest.raises(KeyUnavailable):
        kek_rewrap_run(source_id=str(source.pk))
    deks = DataKey.objects.filter(tenant=tenant)
    moved = deks.filter(kek_version__provider_version=new_key).count()
    assert 0 < moved < count  # written before the failure was raised
    assert moved == sum(wraps.done.values())  # every successful wrap was kept
    assert Tenant.objects.get(pk=tenant.pk).state == ServiceState.REWRAPPING
    assert kek_rewrap_run(source_id=str(source.pk)) == "done"
    assert_each_moved_once(tenant, new_key, wraps)
    assert AuditEvent.objects.filter(tenant=tenant, action="kek.rotation_done").count() == 1


def test_a_rotation_inside_one_key_source_never_brings_a_dek_here(
    byok_role, settings, monkeypatch
) -> None:
    """KMS ReEncrypt moves every data key and index key: not one is decrypted to Keyward."""
    byok = byok_role
    tenant, source, new_key = rotated(byok, 6)
    real_unwrap = AwsKmsProvider.unwrap

    def no_unwrap(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a key was unwrapped during the rewrap")

    monkeypatch.setattr(AwsKmsProvider, "unwrap", no_unwrap)
    assert kek_rewrap_run(source_id=str(source.pk)) == "done"
    monkeypatch.setattr(AwsKmsProvider, "unwrap", real_unwrap)
    deks = DataKey.objects.filter(tenant=tenant)
    assert set(deks.values_list("kek_version__provider_version", flat=True)) == {new_key}
    reset_for_tests()
    for record in byok["records"]:
        assert record_fields(tenant, record)


def _kms_answers(monkeypatch: pytest.MonkeyPatch, operation: str, code: str) -> list[str]:
    """Every KMS `operation` Keyward sends gets AWS's `code` error instead of going out
    (injected in botocore, between Keyward and LocalStack); returns the calls refused."""
    refused: list[str] = []
    real_client = AwsKmsProvider._client

    def refuse(**kwargs: Any) -> Any:
        refused.append(operation)
        http = SimpleNamespace(status_code=400, headers={})
        return http, {
            "Error": {"Code": code, "Message": f"injected {code}"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }

    def client(provider: AwsKmsProvider, service: str, region: str, **kwargs: Any) -> Any:
        made = real_client(provider, service, region, **kwargs)
        made.meta.events.register(
            f"before-call.kms.{operation}", refuse, unique_id=f"refuse-{operation}"
        )
        return made

    monkeypatch.setattr(AwsKmsProvider, "_client", client)
    return refused


def test_a_key_policy_without_reencrypt_rotates_with_decrypt_and_encrypt(
    byok_role, settings, monkeypatch
) -> None:
    """A policy written before kms:ReEncrypt* was asked for: the rotation still
    completes, each provider trying ReEncrypt once before it falls back."""
    settings.KEYWARD_KEK_REWRAP_CONCURRENCY = 1
    settings.KEYWARD_KEK_REWRAP_BATCH = 4
    byok = byok_role
    tenant, source, new_key = rotated(byok, 10)
    refused = _kms_answers(monkeypatch, "ReEncrypt", "AccessDeniedException")
    wraps = Wraps()
    wraps.install(monkeypatch)
    assert kek_rewrap_run(source_id=str(source.pk)) == "done"
    assert_each_moved_once(tenant, new_key, wraps)
    assert wraps.by == {"wrap": 10}
    assert len(refused) == 1  # the provider is reused: it asks once
    reset_for_tests()
    assert record_fields(tenant, byok["records"][0])


@pytest.mark.parametrize(
    "code", ["DisabledException", "NotFoundException", "IncorrectKeyException"]
)
def test_any_refusal_of_reencrypt_leaves_the_verdict_to_decrypt_and_encrypt(
    byok_role, settings, monkeypatch, code
) -> None:
    """A refused ReEncrypt is not a failed rotation: Decrypt and Encrypt run, and
    say what is wrong if anything is (here nothing: the key is fine). A refusal
    about one key does not stop the provider from asking for the next."""
    settings.KEYWARD_KEK_REWRAP_CONCURRENCY = 1
    tenant, source, new_key = rotated(byok_role, 3)
    refused = _kms_answers(monkeypatch, "ReEncrypt", code)
    wraps = Wraps()
    wraps.install(monkeypatch)
    assert kek_rewrap_run(source_id=str(source.pk)) == "done"
    assert_each_moved_once(tenant, new_key, wraps)
    assert wraps.by == {"wrap": 3}
    assert len(refused) >= 3  # every data key asked, and its index keys


def test_a_denied_reencrypt_is_believed_for_an_hour(byok_role, monkeypatch) -> None:
    source = KeySource.objects.get(tenant=byok_role["acme"].tenant, kind=SourceKind.AWS_KMS)
    provider = provider_for(source)
    version = byok_role["key_arn"]
    assert provider.can_reencrypt(version, provider)
    provider.reencrypt_refused(AwsKeyAccessDenied("injected", "DisabledException"))
    assert provider.can_reencrypt(version, provider)  # about that key, not the policy
    provider.reencrypt_refused(AwsKeyAccessDenied("injected", "AccessDeniedException"))
    assert not provider.can_reencrypt(version, provider)
    later = time.monotonic() + 3601
    monkeypatch.setattr(aws_provider, "time", SimpleNamespace(monotonic=lambda: later))
    assert provider.can_reencrypt(version, provider)


def test_moving_keys_between_stores_never_asks_for_a_reencrypt(acme, aws_env, monkeypatch) -> None:
    """Enable (the vendor's key to AWS KMS): the stores differ, so no ReEncrypt is
    sent, counted or charged against the circuit; Decrypt and Encrypt are."""

    def no_reencrypt(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("ReEncrypt asked between two key stores")

    monkeypatch.setattr(AwsKmsProvider, "reencrypt", no_reencrypt)
    take_pending()  # what came before is not this test's
    byok = byok_with(acme, "")
    counted = {(kind, outcome) for (_, _, kind, outcome) in take_pending()}
    assert ("wrap", "ok") in counted
    assert not {c for c in counted if c[0] == "reencrypt"}
    assert DataKey.objects.filter(tenant=byok["acme"].tenant).exists()


def test_a_throttled_reencrypt_fails_the_batch_for_a_retry(
    byok_role, settings, monkeypatch
) -> None:
    settings.KEYWARD_KEK_REWRAP_CONCURRENCY = 1
    tenant, source, new_key = rotated(byok_role, 3)
    _kms_answers(monkeypatch, "ReEncrypt", "ThrottlingException")
    with pytest.raises(KeyUnavailable, match=r"ReEncrypt .* ThrottlingException"):
        kek_rewrap_run(source_id=str(source.pk))
    assert Tenant.objects.get(pk=tenant.pk).state == ServiceState.REWRAPPING
    assert not DataKey.objects.filter(tenant=tenant, kek_version__provider_version=new_key).exists()
