"""The beat's health round against LocalStack: one call per distinct key, right per tenant.

Tenants here are put on their AWS KMS key directly (source, KEK version, data
keys under it, state), the state enabling BYOK leaves behind: the round only
reads it, and enabling each tenant through the key store would only make the
test slower.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from audit.models import AuditEvent
from audit.services import Actor
from keys.models import (
    DataKey,
    KekState,
    KekVersion,
    KeyHealthCheck,
    KeySource,
    SourceKind,
    SourceState,
)
from keys.providers.aws_kms import AwsKmsProvider
from keys.services.health import _spread, key_health_check, key_health_round
from keys.tasks import check_key_health
from tenants.models import ServiceState, Tenant
from tenants.services import tenant_create
from tests.keys.test_aws_source import CUSTOMER_ACCOUNT, _aws  # noqa: F401  (autouse)
from tests.support.aws import boto_client, create_kms_key
from tests.support.faults import seeded

SYSTEM = Actor.system("tests")


def on_key(
    slug: str, key_arn: str, state: str = ServiceState.BYOK_ACTIVE, in_use: str = ""
) -> Tenant:
    """A tenant whose data keys are under `in_use` (default `key_arn`), through an AWS source."""
    tenant = tenant_create(name=slug.title(), slug=slug, actor=SYSTEM)
    KeySource.objects.filter(tenant=tenant, kind=SourceKind.LOCAL).update(state=SourceState.RETIRED)
    source = KeySource.objects.create(
        tenant=tenant,
        kind=SourceKind.AWS_KMS,
        state=SourceState.ACTIVE,
        config={"key_arn": key_arn, "role_arn": "", "external_id": "keyward-test"},
    )
    version = KekVersion.objects.create(
        source=source, provider_version=in_use or key_arn, state=KekState.ACTIVE
    )
    DataKey.objects.filter(tenant=tenant).update(kek_version=version)
    Tenant.objects.filter(pk=tenant.pk).update(state=state)
    tenant.refresh_from_db()
    return tenant


class Calls:
    """Health calls that reached LocalStack, counted at the provider boundary."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.lock = threading.Lock()
        self.times: list[float] = []
        real_health = AwsKmsProvider.health
        calls = self

        def counted_health(provider: AwsKmsProvider) -> Any:
            with calls.lock:
                calls.times.append(time.monotonic())
            return real_health(provider)

        monkeypatch.setattr(AwsKmsProvider, "health", counted_health)

    def take(self) -> int:
        """Calls since the last look."""
        with self.lock:
            taken, self.times = len(self.times), []
        return taken


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    return Calls(monkeypatch)


def state_of(tenant: Tenant) -> str:
    return Tenant.objects.get(pk=tenant.pk).state


def test_tenants_sharing_a_key_share_one_call_per_round(db: None, calls: Calls) -> None:
    keys = [create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1") for _ in range(3)]
    tenants = [on_key(f"share-{i}", keys[i % 3]) for i in range(7)]
    watched = on_key("share-paused", keys[0], state=ServiceState.ROTATION_PENDING)
    calls.take()
    found = check_key_health()
    assert calls.take() == 3  # the distinct keys, not the 8 tenants
    assert {found[t.slug] for t in [*tenants, watched]} == {"ok"}
    check_key_health()
    assert calls.take() == 3
    runs = dict(KeyHealthCheck.objects.values_list("tenant__slug", "runs"))
    assert runs == {t.slug: 2 for t in [*tenants, watched]}  # each tenant's own finding


def test_a_disabled_shared_key_revokes_every_tenant_on_it(db: None, calls: Calls) -> None:
    shared, other = (create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1") for _ in range(2))
    active = on_key("cut-active", shared)
    paused = on_key("cut-paused", shared, state=ServiceState.ROTATION_PENDING)
    degraded = on_key("cut-degraded", shared, state=ServiceState.DEGRADED)
    spared = on_key("cut-spared", other)
    boto_client("kms", CUSTOMER_ACCOUNT).disable_key(KeyId=shared)
    calls.take()
    found = key_health_round()
    assert calls.take() == 2
    for tenant in (active, paused, degraded):
        assert found[tenant.slug] == "revoked"
        assert state_of(tenant) == ServiceState.REVOKED
        assert AuditEvent.objects.filter(tenant=tenant, action="key.revoked").count() == 1
    assert found[spared.slug] == "ok" and state_of(spared) == ServiceState.BYOK_ACTIVE


def test_a_moved_shared_alias_is_decided_per_tenant(db: None, calls: Calls) -> None:
    kms = boto_client("kms", CUSTOMER_ACCOUNT)
    old = create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")
    name = f"alias/keyward-shared-{uuid.uuid4().hex[:12]}"  # LocalStack outlives the test
    kms.create_alias(AliasName=name, TargetKeyId=old.rsplit("/", 1)[1])
    alias = f"arn:aws:kms:eu-west-1:{CUSTOMER_ACCOUNT}:{name}"
    active = on_key("alias-active", alias, in_use=old)
    degraded = on_key("alias-degraded", alias, state=ServiceState.DEGRADED, in_use=old)
    paused = on_key("alias-paused", alias, state=ServiceState.ROTATION_PENDING, in_use=old)
    assert key_health_round()[degraded.slug] == "ok"  # answers again: recovered
    assert state_of(degraded) == ServiceState.BYOK_ACTIVE
    new = create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")
    kms.update_alias(AliasName=name, TargetKeyId=new.rsplit("/", 1)[1])
    calls.take()
    found = key_health_round()
    assert calls.take() == 1
    for tenant in (active, degraded):
        assert found[tenant.slug] == "rotation_pending"
        assert state_of(tenant) == ServiceState.ROTATION_PENDING
        event = AuditEvent.objects.get(tenant=tenant, action="key.rotation_detected")
        assert event.details["new_version"] == new
        assert KekVersion.objects.filter(
            source__tenant=tenant, provider_version=new, state=KekState.PENDING
        ).exists()
    assert found[paused.slug] == "ok"  # paused already: only a cut-off changes it
    assert not AuditEvent.objects.filter(tenant=paused, action="key.rotation_detected").exists()


def test_an_unreachable_shared_key_store_degrades_with_one_call(
    db: None, settings: Any, calls: Calls
) -> None:
    key = create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")
    tenants = [on_key(f"away-{i}", key) for i in range(3)]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    settings.KEYWARD_AWS_ENDPOINT_URL = f"http://127.0.0.1:{closed}"
    calls.take()
    found = key_health_round()
    assert calls.take() == 1
    for tenant in tenants:
        assert found[tenant.slug] == "degraded"
        assert state_of(tenant) == ServiceState.DEGRADED
        finding = KeyHealthCheck.objects.get(tenant=tenant)
        assert finding.result == "degraded" and "unreachable" in finding.message


def test_one_tenants_check_still_asks_its_key(db: None, calls: Calls) -> None:
    key = create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1")
    one, other = on_key("single-one", key), on_key("single-other", key)
    calls.take()
    assert key_health_check(tenant=one) == "ok"
    assert calls.take() == 1
    assert not KeyHealthCheck.objects.filter(tenant=other).exists()  # only the one asked for


def test_the_calls_of_a_round_are_spread_not_a_burst(db: None, calls: Calls) -> None:
    keys = [create_kms_key(CUSTOMER_ACCOUNT, "eu-west-1") for _ in range(12)]
    for i, key in enumerate(keys):
        on_key(f"spread-{i}", key)
    calls.take()
    window = 1.5
    started = time.monotonic()
    found = key_health_round(spread=window, rng=seeded("health spread"))
    took = time.monotonic() - started
    assert Counter(found.values()) == {"ok": 12}
    asked = list(calls.times)
    assert len(asked) == 12
    # Twelve moments drawn uniformly over the window: all within a quarter of
    # it has a chance of about 3 in a million; a burst is all within a blink.
    assert max(asked) - min(asked) >= window / 4, [round(t - started, 3) for t in asked]
    assert took >= window / 4


def test_a_round_spreads_over_at_most_a_quarter_of_the_interval(settings: Any) -> None:
    settings.KEYWARD_HEALTH_CHECK_SECONDS = 60
    assert _spread(2_000) == pytest.approx(15.0)  # 10,000 tenants on 2,000 keys
    assert _spread(1) == pytest.approx(0.01)  # one key: nothing to spread
    settings.KEYWARD_HEALTH_CHECK_SECONDS = 5
    assert _spread(2_000) == pytest.approx(1.25)
