"""The lookup-key rebuild (`records.rebuild_blind_index`) killed with SIGKILL.

A rotation of a tenant's lookup key starts a new version that a task fills
with a lookup row per record and indexed field, from a checkpoint, then
switches to. The task is killed at random points (marks over the records
indexed so far, from a printed seed) and sent again to a fresh worker by the
beat's resume job (`records.resume_reencryptions`). At every kill the old
version still answers lookups and the new one holds rows exactly up to its
checkpoint; at the end the new version is active, holds one row per record
and field and finds every record, the old one and its rows are gone, every
record decrypts, the switch is recorded once and the audit chains verify.
"""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import pytest
from django.db.models import Count
from django.utils import timezone

from audit.services import Actor
from records.blindindex import INDEXED_FIELDS
from records.indexkeys import forget_cached_keys, index_key_rotate, records_lookup
from records.models import IndexKey, IndexKeyState, LookupRow, Record
from records.services import records_create
from records.synthetic import synthetic_records
from records.tasks import rebuild_blind_index, resume_reencryptions
from tenants.models import Tenant
from tenants.services import tenant_create
from tests.support import invariants
from tests.support.faults import scale, seeded
from tests.support.kills import kill_repeatedly, spread_marks, task_on_worker

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]

KILLS = scale(2, 10)
RECORDS = scale(3000, 20000)
BATCH = scale(100, 200)  # records per checkpoint
SYSTEM = Actor.system("tests")


def rows_by_record(tenant: Tenant, version: int, through: int | None = None) -> dict[int, int]:
    rows = LookupRow.objects.filter(tenant=tenant, version=version)
    if through is not None:
        rows = rows.filter(record_id__lte=through)
    return dict(rows.order_by().values_list("record_id").annotate(n=Count("pk")))


def lookups_find(
    tenant: Tenant, before: dict[str, dict[str, str]], rng: random.Random, sample: int = 20
) -> int:
    """Records looked up by each of their indexed fields, through the active version."""
    forget_cached_keys()
    uids = {str(u): pk for u, pk in Record.objects.filter(tenant=tenant).values_list("uid", "pk")}
    found = 0
    for uid in rng.sample(sorted(before), sample):
        for name, value in before[uid].items():
            if name in INDEXED_FIELDS and value:
                hits = records_lookup(tenant=tenant, field=name, value=value)
                assert uids[uid] in set(hits.values_list("pk", flat=True)), (uid, name)
                found += 1
    return found


def check_mid_rebuild(
    tenant: Tenant,
    key: IndexKey,
    old: dict[int, int],
    before: dict[str, dict[str, str]],
    rng: random.Random,
    tally: invariants.Tally,
) -> None:
    key.refresh_from_db()
    if key.state == IndexKeyState.BUILDING:
        # Rows and checkpoint commit together: rows exactly up to it, all of them.
        through = key.rebuilt_through
        assert not LookupRow.objects.filter(
            tenant=tenant, version=key.version, record_id__gt=through
        ).exists(), "rows past the checkpoint"
        done = rows_by_record(tenant, key.version)
        assert done == {r: n for r, n in old.items() if r <= through}, "rows missing or doubled"
        tally.add("rows match the checkpoint", 1)
    tally.add("lookups answer mid-rebuild", lookups_find(tenant, before, rng, sample=5))


def test_lookup_rebuild_killed_midway_finishes_once(tmp_path: Path) -> None:
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    records_create(tenant=tenant, items=list(synthetic_records(RECORDS)))
    before = invariants.snapshot_records(tenant)
    old_key = IndexKey.objects.get(tenant=tenant, state=IndexKeyState.ACTIVE)
    old = rows_by_record(tenant, old_key.version)
    assert len(old) == RECORDS
    key = index_key_rotate(tenant=tenant, actor=SYSTEM)
    assert key.state == IndexKeyState.BUILDING
    # Old enough for the beat's resume job to pick it up again.
    IndexKey.objects.filter(pk=key.pk).update(created=timezone.now() - timedelta(minutes=11))
    ids = list(Record.objects.filter(tenant=tenant).order_by("pk").values_list("pk", flat=True))
    rng = seeded("lookup rebuild kills")
    tally = invariants.Tally()

    def progress() -> int:
        through = IndexKey.objects.values_list("rebuilt_through", flat=True).get(pk=key.pk)
        return sum(1 for pk in ids if pk <= through) if through else 0

    def finished() -> bool:
        state = IndexKey.objects.values_list("state", flat=True).get(pk=key.pk)
        gone = not LookupRow.objects.filter(tenant=tenant, version=old_key.version).exists()
        return state == IndexKeyState.ACTIVE and gone

    kills = kill_repeatedly(
        tmp_path,
        rng,
        name="lookup-rebuild",
        marks=spread_marks(rng, KILLS, 1, RECORDS - max(3 * BATCH, RECORDS // 10)),
        total=RECORDS,
        job=task_on_worker(
            {"KEYWARD_API_INDEX_REBUILD_BATCH": str(BATCH)},
            first=lambda w: rebuild_blind_index.apply_async(args=(key.pk,), queue=w.queue),
            resume=lambda w: resume_reencryptions.apply_async(queue=w.queue),
        ),
        progress=progress,
        finished=finished,
        after_kill=lambda: check_mid_rebuild(tenant, key, old, before, rng, tally),
    )

    kills.report()
    assert len(kills.landed) == KILLS and all(0 < n < RECORDS for n in kills.landed)
    key.refresh_from_db()
    old_key.refresh_from_db()
    assert key.state == IndexKeyState.ACTIVE and key.rebuilt_through == ids[-1]
    assert old_key.state == IndexKeyState.RETIRED and bytes(old_key.wrapped) == b""
    new = rows_by_record(tenant, key.version)
    assert new == old, "not one row per record and field under the new version"
    tally.add("one lookup row per record and field", sum(new.values()))
    tally.add("lookups find every sampled record", lookups_find(tenant, before, rng))
    tally.add("lookup keys under the KEK version the state says",
              invariants.index_keys_settled(tenant))  # fmt: skip
    tally.add("records decrypt unchanged", invariants.records_decrypt(tenant, before))
    tally.add("switch recorded once", invariants.events_once(tenant, "blind_index.rebuilt"))
    tally.add("audit chains verify", invariants.audit_chains_verify())
    tally.report(f"lookup rebuild, {KILLS} kills")
