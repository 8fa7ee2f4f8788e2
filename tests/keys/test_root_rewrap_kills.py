"""The vendor root-key rewrap (`manage.py rewrap_data_keys`) killed with SIGKILL.

The rewrap has no Celery task: an operator runs the command after
`rotate_root_key`, and runs it again if it died. So each run here is that
command in a process group of its own, killed at random points (marks over
the DEKs moved to the new root key version, from a printed seed) and then run
again. At every kill each tenant's DEKs are all under one root key version
(one transaction per tenant) and open; at the end every live DEK and lookup
key is under the new version, every record decrypts, each tenant's rewrap
and the run itself are recorded once, and the audit chains verify.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from audit.models import AuditEvent
from audit.services import Actor
from keys.models import DataKey, DekState, SourceKind
from keys.rootkey import local_provider
from keys.runtime import dek_context, reset_for_tests
from keys.selectors.sources import LIVE_DEK_STATES, active_source
from keys.services.deks import dek_rotate, kek_version_get_or_create
from keys.services.rootkeys import root_key_rotate
from records.indexkeys import forget_cached_keys
from records.services import records_create
from records.synthetic import synthetic_records
from tenants.models import Tenant
from tenants.services import tenant_create
from tests.support import invariants
from tests.support.faults import scale, seeded
from tests.support.kills import command_runs, kill_repeatedly, spread_marks

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

KILLS = scale(2, 10)
TENANTS = scale(8, 20)
OLD_DEKS = scale(60, 150)  # per tenant: enough work for a kill to land mid-run
SYSTEM = Actor.system("tests")


@pytest.fixture(autouse=True)
def _own_root_key_file(settings: Any, tmp_path: Path) -> Any:
    """A root key file for this test alone: a rotation must not reach other tests."""
    settings.KEYWARD_ROOT_KEY_FILE = str(tmp_path / "root" / "root-keys.json")
    reset_for_tests()
    forget_cached_keys()
    yield
    reset_for_tests()
    forget_cached_keys()


def tenant_with_history(n: int) -> Tenant:
    """A vendor-managed tenant with many decrypt-only DEKs (as after years of
    rotations; made directly, the rotation itself is not what is tested) and
    records under the current one."""
    tenant = tenant_create(name=f"Root {n}", slug=f"root-{n}", actor=SYSTEM)
    source = active_source(tenant)
    provider = local_provider()
    first = DataKey.objects.get(tenant=tenant).version
    rows = []
    for version in range(first + 1, first + 1 + OLD_DEKS):
        wrapped = provider.wrap(os.urandom(32), dek_context(str(tenant.pk), version))
        rows.append(
            DataKey(
                tenant=tenant,
                version=version,
                wrapped=wrapped.blob,
                kek_version=kek_version_get_or_create(source, wrapped.version),
                state=DekState.RETIRING,
            )
        )
    DataKey.objects.bulk_create(rows)
    dek_rotate(tenant=tenant, actor=SYSTEM, reason="current key after the old ones")
    records_create(tenant=tenant, items=list(synthetic_records(5, seed=n)))
    return tenant


def one_version_each(tenants: list[Tenant], tally: invariants.Tally) -> None:
    """One transaction per tenant: a tenant is wholly old or wholly new, and opens."""
    for tenant in tenants:
        live = DataKey.objects.filter(tenant=tenant, state__in=LIVE_DEK_STATES)
        versions = set(live.values_list("kek_version__provider_version", flat=True))
        assert len(versions) == 1, f"{tenant.slug} is half moved: {versions}"
    tally.add("DEKs open mid-rewrap", sum(invariants.deks_unwrap(t) for t in tenants))


def test_root_key_rewrap_killed_midway_finishes_once(settings: Any, tmp_path: Path) -> None:
    tenants = [tenant_with_history(n) for n in range(TENANTS)]
    before = {t.pk: invariants.snapshot_records(t) for t in tenants}
    deks = {t.pk: DataKey.objects.filter(tenant=t).count() for t in tenants}
    root_key_rotate(actor=SYSTEM)
    newest = local_provider().current_version()
    vendor = DataKey.objects.filter(
        kek_version__source__kind=SourceKind.LOCAL, state__in=LIVE_DEK_STATES
    )
    total = vendor.count()
    rng = seeded("root key rewrap kills")
    tally = invariants.Tally()
    done = AuditEvent.objects.filter(tenant=None, action="kek.root_rewrap")

    kills = kill_repeatedly(
        tmp_path,
        rng,
        name="root-rewrap",
        marks=spread_marks(rng, KILLS, 1, total - max(3 * OLD_DEKS, total // 4)),
        total=total,
        job=command_runs(
            ["rewrap_data_keys"], {"KEYWARD_ROOT_KEY_FILE": str(settings.KEYWARD_ROOT_KEY_FILE)}
        ),
        progress=lambda: vendor.filter(kek_version__provider_version=newest).count(),
        finished=done.exists,
        after_kill=lambda: one_version_each(tenants, tally),
    )

    kills.report()
    assert len(kills.landed) == KILLS and all(0 < n < total for n in kills.landed)
    reset_for_tests()
    for tenant in tenants:
        tally.add("DEKs under the KEK version the state says",
                  invariants.deks_settled(tenant, deks[tenant.pk]))  # fmt: skip
        tally.add("lookup keys under the same KEK version", invariants.index_keys_settled(tenant))
        tally.add(
            "records decrypt unchanged", invariants.records_decrypt(tenant, before[tenant.pk])
        )
        tally.add("rewrapped once", invariants.events_once(tenant, "kek.rewrap", target=newest))
    tally.add("the run recorded once", invariants.events_once(None, "kek.root_rewrap"))
    tally.add("audit chains verify", invariants.audit_chains_verify())
    tally.add("no tenant left in a transient state", invariants.none_transient())
    tally.report(f"root key rewrap, {KILLS} kills")
