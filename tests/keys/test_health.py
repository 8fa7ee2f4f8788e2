"""The key health check against LocalStack: revoked, degraded, rotation detected."""

from __future__ import annotations

import socket

import pytest

from audit.models import AuditEvent
from audit.services import Actor
from crypto.envelope import KeyRevoked
from keys.models import KekState, KekVersion, KeySource, SourceKind
from keys.runtime import reset_for_tests
from keys.services.health import key_health_check
from keys.services.sources import byok_enable, byok_enable_run, key_source_register, key_source_test
from keys.tasks import check_key_health
from records.services import record_fields
from tenants.models import ServiceState, Tenant
from tests.keys.test_aws_source import CUSTOMER_ACCOUNT, _aws  # noqa: F401  (autouse)
from tests.support.aws import create_kms_key

SYSTEM = Actor.system("tests")
ADMIN = Actor("user", "0", "key admin (tests)")


def enable_aws(tenant: Tenant, key_arn: str, role_arn: str = "") -> KeySource:
    source = key_source_register(
        tenant=tenant,
        kind=SourceKind.AWS_KMS,
        config={"key_arn": key_arn, "role_arn": role_arn, "external_id": "keyward-test"},
        actor=SYSTEM,
    )
    source = key_source_test(source=source, actor=SYSTEM)
    assert source.test_passed, source.test_results
    byok_enable(tenant=tenant, source=source, actor=ADMIN)
    return byok_enable_run(source_id=str(source.pk))


def state(tenant: Tenant) -> str:
    tenant.refresh_from_db()
    return tenant.state


def test_a_healthy_key_changes_nothing(byok) -> None:
    tenant = byok["acme"].tenant
    assert key_health_check(tenant=tenant) == "ok"
    assert state(tenant) == ServiceState.BYOK_ACTIVE


@pytest.mark.parametrize("cut", ["disable", "schedule_deletion"])
def test_a_disabled_or_deleted_key_revokes_and_nothing_decrypts(
    byok, cut, django_capture_on_commit_callbacks
) -> None:
    tenant, kms = byok["acme"].tenant, byok["kms"]
    if cut == "disable":
        kms.disable_key(KeyId=byok["key_arn"])
    else:
        kms.schedule_key_deletion(KeyId=byok["key_arn"], PendingWindowInDays=7)
    with django_capture_on_commit_callbacks(execute=True):  # publishes the new state
        assert check_key_health()[tenant.slug] == "revoked"
    assert state(tenant) == ServiceState.REVOKED
    event = AuditEvent.objects.get(tenant=tenant, action="key.revoked")
    assert event.outcome == "denied"
    reset_for_tests()
    row = byok["records"][0]
    with pytest.raises(KeyRevoked):
        record_fields(tenant, row)
    # Re-enabling the key does not restore by itself: an administrator restores.
    if cut == "disable":
        kms.enable_key(KeyId=byok["key_arn"])
    assert key_health_check(tenant=tenant) == "skipped"
    assert state(tenant) == ServiceState.REVOKED


def test_an_unreachable_kms_degrades_then_recovers(byok, settings) -> None:
    tenant = byok["acme"].tenant
    row = byok["records"][0]
    assert record_fields(tenant, row)  # the DEK is now cached in this process
    reachable = settings.KEYWARD_AWS_ENDPOINT_URL
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    settings.KEYWARD_AWS_ENDPOINT_URL = f"http://127.0.0.1:{closed}"
    source = KeySource.objects.get(tenant=tenant, kind=SourceKind.AWS_KMS)
    source.config = {**source.config, "probe": closed}  # a new provider with the new endpoint
    source.save()
    assert key_health_check(tenant=tenant) == "degraded"
    assert state(tenant) == ServiceState.DEGRADED
    assert record_fields(tenant, row)  # degraded is not revoked: cached keys keep serving
    settings.KEYWARD_AWS_ENDPOINT_URL = reachable
    source.config = {k: v for k, v in source.config.items() if k != "probe"}
    source.save()
    assert key_health_check(tenant=tenant) == "ok"
    assert state(tenant) == ServiceState.BYOK_ACTIVE
    assert AuditEvent.objects.filter(tenant=tenant, action="key.recovered").exists()


def test_an_alias_moved_to_another_key_pauses_for_confirmation(byok) -> None:
    tenant, kms = byok["acme"].tenant, byok["kms"]
    new_key = create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")
    kms.update_alias(AliasName=byok["alias"], TargetKeyId=new_key.rsplit("/", 1)[1])
    assert key_health_check(tenant=tenant) == "rotation_pending"
    assert state(tenant) == ServiceState.ROTATION_PENDING
    pending = KekVersion.objects.get(provider_version=new_key)
    assert pending.state == KekState.PENDING
    event = AuditEvent.objects.get(tenant=tenant, action="key.rotation_detected")
    assert event.details["new_version"] == new_key
    reset_for_tests()
    assert record_fields(tenant, byok["records"][0])  # reads keep working while paused
