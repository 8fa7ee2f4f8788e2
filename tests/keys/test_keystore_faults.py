"""A customer's key store that misbehaves during health checks, through a fault proxy.

Against LocalStack, PyKMIP's server (mutual TLS) and the Key Vault test server:
a store that stalls, refuses, goes down or breaks a request makes the tenant
degraded, never revoked; data keys cached in the process keep serving until
their TTL; the next check after the store returns recovers the tenant by
itself; and a round over many tenants on one unreachable store reaches it a
bounded number of times (the circuit of its endpoint).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from audit.models import AuditEvent
from keys.models import KeySource
from keys.registry import endpoint_of
from keys.runtime import envelope
from keys.services.health import key_health_check
from keys.tasks import check_key_health
from records.models import Record
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from tenants.models import ServiceState, Tenant
from tenants.services import tenant_create
from tests.keys.faultstores import STORES, proxied_store, state
from tests.keys.test_health import SYSTEM, enable_aws
from tests.support.faults import FULL, scale, seeded

pytestmark = [
    pytest.mark.faults,
    pytest.mark.filterwarnings("ignore:ssl.PROTOCOL_TLS is deprecated:DeprecationWarning"),
]

# What each fault makes of a health check. A connection cut between two calls
# is survived without a trace (the next call opens a new one); the others are
# an outage for the check that meets them.
OUTCOMES = {
    "refuse": "degraded",
    "down": "degraded",
    "stall": "degraded",
    "trip": "degraded",  # the request is lost mid-way, then every connection refused
    "cut": "ok",
    "slow": "ok",  # latency well under the timeouts
}
# A stall waits out the timeouts and retries (2 s here; AWS makes three attempts):
# bounded, whatever the store does.
STALL_BOUND_SECONDS = 15.0


def inject(proxy: Any, fault: str) -> None:
    if fault == "refuse":  # a store restarted behind a firewall: connections reset, new refused
        proxy.refuse()
        proxy.cut()
    elif fault == "down":
        proxy.down()
    elif fault == "stall":
        proxy.stall()
    elif fault == "trip":
        proxy.trip_after(chunks=1)
    elif fault == "cut":
        proxy.cut()
    else:
        proxy.add_latency(0.05)


def fresh(row: Record) -> Record:
    return Record.objects.select_related("sealed").get(pk=row.pk)


@pytest.mark.parametrize("kind", STORES)
def test_a_failing_store_degrades_never_revokes_serves_from_cache_and_recovers(
    kind: str, acme: Any, request: Any, settings: Any
) -> None:
    rng = seeded(f"health faults {kind}")
    if FULL:
        faults = list(OUTCOMES) * 4
        rng.shuffle(faults)
    else:  # a stall (the slowest) and two others, a different two each run
        faults = ["stall", *rng.sample([f for f in OUTCOMES if f != "stall"], 2)]
    tenant = acme.tenant
    records = records_create(tenant=tenant, items=list(synthetic_records(4)))
    with proxied_store(kind, request, settings) as store:
        store.enable(acme)
        assert state(tenant) == ServiceState.BYOK_ACTIVE
        # The longest TTL: stalls on a busy machine must not outlast the cache
        # (serving until the TTL and no longer is the next test's).
        Tenant.objects.filter(pk=tenant.pk).update(dek_cache_ttl=3600)
        envelope().forget(str(tenant.pk))
        expected = record_fields(tenant, fresh(records[0]))  # the DEK is now cached here
        # So is the DEK new records are written under (a data key of its own
        # when Enable moved the tenant).
        records_create(tenant=tenant, items=list(synthetic_records(1, prefix="warm-")))
        store.short_timeouts()
        degraded = 0
        for fault in faults:
            inject(store.proxy, fault)
            started = time.monotonic()
            found = key_health_check(tenant=tenant)
            elapsed = time.monotonic() - started
            print(f"{kind} {fault}: {found} in {elapsed:.2f} s")
            assert found == OUTCOMES[fault], (fault, found)
            assert elapsed < STALL_BOUND_SECONDS, (fault, elapsed)
            if found == "degraded":
                degraded += 1
                assert state(tenant) == ServiceState.DEGRADED
                # Degraded is not revoked: the cached DEK reads and writes.
                assert record_fields(tenant, fresh(records[0])) == expected
                (written,) = records_create(
                    tenant=tenant,
                    items=list(synthetic_records(1, seed=degraded, prefix=f"d{degraded}-")),
                )
                assert record_fields(tenant, fresh(written))
            store.proxy.heal()
            assert key_health_check(tenant=tenant) == "ok", fault
            assert state(tenant) == ServiceState.BYOK_ACTIVE
        print(f"{kind}: faults injected {dict(store.proxy.faults)}")
    trail = list(
        AuditEvent.objects.filter(
            tenant=tenant, action__in=["key.degraded", "key.recovered", "key.revoked"]
        )
        .order_by("seq")
        .values_list("action", flat=True)
    )
    assert trail == ["key.degraded", "key.recovered"] * degraded
    assert degraded == sum(OUTCOMES[f] == "degraded" for f in faults)


def test_cached_keys_serve_until_their_ttl_then_stop_and_come_back_with_the_store(
    acme: Any, request: Any, settings: Any
) -> None:
    tenant = acme.tenant
    records = records_create(tenant=tenant, items=list(synthetic_records(2)))
    with proxied_store("aws_kms", request, settings) as store:
        store.enable(acme)
        # The TTL the customer chose is the bound on reading without the key
        # (10 s at least through the page); 2 s keeps the test short.
        Tenant.objects.filter(pk=tenant.pk).update(dek_cache_ttl=2)

        envelope().forget(str(tenant.pk))
        loaded = time.monotonic()
        expected = record_fields(tenant, fresh(records[0]))
        store.proxy.refuse()
        assert key_health_check(tenant=tenant) == "degraded"
        assert record_fields(tenant, fresh(records[0])) == expected
        assert time.monotonic() - loaded < 2, "the check must end inside the TTL"
        time.sleep(max(0.0, 2.2 - (time.monotonic() - loaded)))
        from keys.providers.base import KeyUnavailable

        with pytest.raises(KeyUnavailable):
            record_fields(tenant, fresh(records[0]))
        assert state(tenant) == ServiceState.DEGRADED
        store.proxy.heal()
        assert key_health_check(tenant=tenant) == "ok"
        assert record_fields(tenant, fresh(records[0])) == expected
    assert not AuditEvent.objects.filter(tenant=tenant, action="key.revoked").exists()


ROUND_FAULTS = ["refuse", "stall"] if FULL else ["refuse"]


@pytest.mark.parametrize("fault", ROUND_FAULTS)
def test_a_round_over_many_tenants_on_one_dead_store_reaches_it_a_bounded_number_of_times(
    fault: str, acme: Any, request: Any, settings: Any
) -> None:
    """The beat's round: the circuit of the endpoint opens after a few failures and
    the rest of the tenants fail at once; after the store returns one probe closes it."""
    settings.KEYWARD_KEY_STORE_CIRCUIT_FAILURES = 3
    settings.KEYWARD_KEY_STORE_BACKOFF_SECONDS = 2
    settings.KEYWARD_KEY_STORE_BACKOFF_MAX_SECONDS = 4
    n = scale(6, 60)
    attempts_per_call = 3  # botocore's total attempts for one AWS call
    with proxied_store("aws_kms", request, settings) as store:
        tenants = [acme.tenant]
        store.enable(acme)
        key_arn = str(KeySource.objects.get(tenant=acme.tenant, state="active").config["key_arn"])
        for i in range(1, n):  # the same AWS key: one key serves many encryption contexts
            tenant = tenant_create(name=f"Tenant {i}", slug=f"tenant-{i}", actor=SYSTEM)
            enable_aws(tenant, key_arn)
            tenants.append(tenant)
        store.short_timeouts()
        endpoints = {endpoint_of(KeySource.objects.get(tenant=t, state="active")) for t in tenants}
        assert len(endpoints) == 1, endpoints  # one store for everyone
        inject(store.proxy, fault)
        before = store.proxy.connections
        started = time.monotonic()
        found = check_key_health()
        elapsed = time.monotonic() - started
        attempts = store.proxy.connections - before
        assert set(found.values()) == {"degraded"}, found
        assert all(state(t) == ServiceState.DEGRADED for t in tenants)
        # A probe may go through each time a back-off ends during the round.
        probes = 1 + int(elapsed / (settings.KEYWARD_KEY_STORE_BACKOFF_SECONDS / 2))
        bound = attempts_per_call * (settings.KEYWARD_KEY_STORE_CIRCUIT_FAILURES + probes)
        print(f"{fault}: {n} tenants, {attempts} connection attempts in {elapsed:.1f} s")
        assert attempts <= bound, (attempts, bound)
        assert attempts < attempts_per_call * n  # what every tenant asking would have cost
        store.proxy.heal()
        deadline = time.monotonic() + 15
        rounds = 0
        while time.monotonic() < deadline:
            rounds += 1
            if set(check_key_health().values()) == {"ok"}:
                break
            time.sleep(0.5)
        assert all(state(t) == ServiceState.BYOK_ACTIVE for t in tenants), rounds
    for tenant in tenants:
        actions = list(
            AuditEvent.objects.filter(tenant=tenant, action__startswith="key.")
            .exclude(action__in=["key.health_check_requested"])
            .order_by("seq")
            .values_list("action", flat=True)
        )
        assert actions[-2:] == ["key.degraded", "key.recovered"], actions
        assert "key.revoked" not in actions
