"""The orphan sweep (`objects.sweep_orphans`) killed with SIGKILL while it deletes.

Half of a tenant's stored versions lose their rows (as a write killed
between its blob and its row, or a failed delete, leaves them) and are noted
by a first sweep, past the grace period. The beat's sweep, which is also its
own resume, is then killed at random points while deleting them (marks over
the orphans deleted so far, from a printed seed) and run again on a fresh
worker. At every kill no named version is gone and the named objects read
back to their checksums; at the end every orphan is gone, every note too,
each named object verifies and the audit chains verify.
"""

from __future__ import annotations

import hashlib
import random
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from audit.services import Actor
from objects.locations import storage_for
from objects.models import Location, OrphanVersion, StoredObject, blob_name
from objects.services import objects_load, objects_sweep_orphans
from objects.tasks import sweep_orphans
from tenants.models import Tenant
from tenants.services import tenant_create
from tests.objects.conftest import random_blobs
from tests.support import invariants
from tests.support.faults import scale, seeded
from tests.support.kills import kill_repeatedly, spread_marks, task_on_worker

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

KILLS = scale(2, 10)
OBJECTS = scale(800, 4000)  # half of them become orphans
SYSTEM = Actor.system("tests")


def listed(tenant: Tenant) -> set[str]:
    return {o.key for o in storage_for(tenant, Location.SHARED).list()}


def named(tenant: Tenant) -> set[str]:
    return {
        blob_name(key, version)
        for key, version in StoredObject.objects.filter(tenant=tenant).values_list("key", "version")
    }


def check_named_kept(
    tenant: Tenant, checksums: dict[str, str], rng: random.Random, tally: invariants.Tally
) -> None:
    names = named(tenant)
    assert names <= listed(tenant), "the sweep deleted a version a row names"
    tally.add("no named version deleted", len(names))
    sample = dict(rng.sample(sorted(checksums.items()), 50))
    tally.add("named objects verify mid-sweep", invariants.objects_verify_some(tenant, sample))


def test_orphan_sweep_killed_midway_deletes_only_orphans(object_root: Path, tmp_path: Path) -> None:
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    blobs = random_blobs(OBJECTS, 256, 1024, seed=3)
    objects_load(tenant, blobs.items())
    rng = seeded("orphan sweep kills")
    lost = set(rng.sample(sorted(blobs), OBJECTS // 2))
    StoredObject.objects.filter(tenant=tenant, key__in=lost).delete()
    checksums = {k: hashlib.sha256(v).hexdigest() for k, v in blobs.items() if k not in lost}
    assert objects_sweep_orphans(tenant) == (len(lost), 0)  # noted only, within the grace
    notes = OrphanVersion.objects.filter(tenant=tenant)
    notes.update(first_seen=timezone.now() - timedelta(days=1))
    orphans = len(lost)
    tally = invariants.Tally()

    kills = kill_repeatedly(
        tmp_path,
        rng,
        name="orphan-sweep",
        marks=spread_marks(rng, KILLS, 1, orphans - max(20, orphans // 10)),
        total=orphans,
        job=task_on_worker(
            {"KEYWARD_OBJECT_ROOT": str(object_root), "KEYWARD_OBJECT_STORE": "filesystem"},
            first=lambda w: sweep_orphans.apply_async(queue=w.queue),
            resume=lambda w: sweep_orphans.apply_async(queue=w.queue),  # the beat's next run
        ),
        progress=lambda: orphans - notes.count(),
        finished=lambda: not notes.exists() and listed(tenant) == named(tenant),
        after_kill=lambda: check_named_kept(tenant, checksums, rng, tally),
    )

    kills.report()
    assert len(kills.landed) == KILLS and all(0 < n < orphans for n in kills.landed)
    assert listed(tenant) == named(tenant), "orphans left, or named versions gone"
    tally.add("orphans deleted", orphans)
    tally.add(
        "objects verify against their checksums", invariants.objects_verify(tenant, checksums)
    )
    tally.add("audit chains verify", invariants.audit_chains_verify())
    tally.report(f"orphan sweep, {KILLS} kills")
