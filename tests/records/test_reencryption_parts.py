"""Re-encryption cut into record-id parts: coverage, concurrent writes, kills per part."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from django.db import connection

import records.reencrypt
from audit.services import Actor
from crypto.ciphertext import dek_id_of
from keys.models import DataKey, DekState
from keys.runtime import envelope, reset_for_tests
from keys.services.deks import dek_rotate
from records.fields import PII_FIELD
from records.models import JobState, Record, ReencryptionJob, ReencryptionPart, SealedFields
from records.pii import encode_fields
from records.reencryption import (
    part_count,
    reencryption_run,
    reencryption_run_part,
    reencryption_split,
    reencryption_start,
    split_range,
)
from records.services import record_delete, record_fields, records_create
from records.synthetic import synthetic_records
from records.tasks import run_reencryption
from tenants.models import Tenant
from tenants.services import tenant_create
from tests.support.faults import scale, seeded
from tests.support.worker import celery_worker

pytestmark = pytest.mark.faults

SYSTEM = Actor.system("tests")


@pytest.fixture(autouse=True)
def _fresh_envelope():
    reset_for_tests()
    yield
    reset_for_tests()


@pytest.fixture(autouse=True)
def _small_parts(settings):
    # These jobs are small: a part of one batch is allowed, so that they get
    # the parts they ask for (part_count's own test covers the minimum).
    settings.KEYWARD_REENCRYPT_PART_BATCHES = 1


def snapshot(tenant: Tenant) -> dict[str, dict[str, str]]:
    return {
        str(r.uid): record_fields(tenant, r)
        for r in Record.objects.filter(tenant=tenant).select_related("sealed")
    }


def current_dek(tenant: Tenant) -> DataKey:
    return DataKey.objects.get(tenant=tenant, state=DekState.ACTIVE)


def interleaved_job(
    *, rounds: int, ours: int, theirs: int, after: int
) -> tuple[Tenant, ReencryptionJob]:
    """A tenant's records in `rounds` runs of `ours`, its ids interleaved with
    another tenant's runs of `theirs`; a rotation, `after` records under the new
    DEK; and a job for the `rounds * ours` rows to move."""
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    other = tenant_create(name="Globex", slug="globex", actor=SYSTEM)
    for n in range(rounds):
        records_create(tenant=tenant, items=list(synthetic_records(ours, prefix=f"{n}-")))
        records_create(tenant=other, items=list(synthetic_records(theirs, prefix=f"{n}-")))
    dek_rotate(tenant=tenant, actor=SYSTEM, reason="test")
    envelope().forget(str(tenant.pk))
    records_create(tenant=tenant, items=list(synthetic_records(after, prefix="new-")))
    job = ReencryptionJob.objects.create(
        tenant=tenant, target_dek=current_dek(tenant), total=rounds * ours
    )
    return tenant, job


def test_split_ranges_cover_every_id_once() -> None:
    rng = seeded("split ranges")
    cases = [(0, 1, 8), (0, 3, 8), (5, 6, 1), (7, 7, 4), (0, 10**12, 256)]
    cases += [
        (a, a + rng.randrange(0, 5000), rng.randrange(1, 300))
        for a in (rng.randrange(0, 10**9) for _ in range(200))
    ]
    for after, until, parts in cases:
        ranges = split_range(after, until, parts)
        assert len(ranges) == min(parts, until - after)
        if until == after:
            continue
        # Contiguous, none empty, from the first id to the last: each id in one range.
        assert ranges[0][0] == after and ranges[-1][1] == until
        assert all(a < b for a, b in ranges)
        assert all(ranges[n][1] == ranges[n + 1][0] for n in range(len(ranges) - 1))
        widths = [b - a for a, b in ranges]
        assert max(widths) - min(widths) <= 1  # equal widths


@pytest.mark.django_db(transaction=True)
def test_a_jobs_parts_hold_every_old_row_exactly_once(settings) -> None:
    settings.KEYWARD_REENCRYPT_PARTS = 5
    settings.KEYWARD_REENCRYPT_BATCH = 20  # a part of one batch: 20 rows at least
    tenant, job = interleaved_job(rounds=4, ours=37, theirs=11, after=9)
    left = reencryption_split(job_id=str(job.pk))
    parts = list(ReencryptionPart.objects.filter(job=job))
    assert sorted(left) == sorted(p.pk for p in parts) and len(parts) == 5
    old = list(
        SealedFields.objects.filter(record__tenant=tenant)
        .exclude(dek=current_dek(tenant))
        .values_list("record_id", flat=True)
    )
    assert len(old) == 148
    for record_id in old:
        assert sum(p.after_id < record_id <= p.until_id for p in parts) == 1
    # The parts span the tenant's records, those written after the rotation too.
    ours = list(Record.objects.filter(tenant=tenant).values_list("id", flat=True))
    assert max(ours) > max(old)
    assert parts[0].after_id == min(ours) - 1 and parts[-1].until_id == max(ours)
    assert reencryption_split(job_id=str(job.pk)) == left  # cut once, not again
    job = reencryption_run(job_id=str(job.pk))
    assert job.state == JobState.DONE and job.done == 148
    assert sum(ReencryptionPart.objects.filter(job=job).values_list("done", flat=True)) == 148


def test_part_count_gives_each_part_its_minimum_of_batches(settings) -> None:
    settings.KEYWARD_REENCRYPT_BATCH = 100
    settings.KEYWARD_REENCRYPT_PART_BATCHES = 10  # a part: 1,000 rows at least
    settings.KEYWARD_REENCRYPT_PARTS = 8
    cases = {0: 1, 1: 1, 999: 1, 1_000: 1, 1_999: 1, 2_000: 2, 7_999: 7, 8_000: 8, 10**9: 8}
    assert {rows: part_count(rows) for rows in cases} == cases
    settings.KEYWARD_REENCRYPT_PARTS = 3
    assert part_count(10**9) == 3


@pytest.mark.django_db(transaction=True)
def test_a_small_job_is_cut_into_fewer_parts(settings) -> None:
    """The rows to move, counted by the DEK counters (the tenant's only: another
    tenant's rows interleave), decide how many parts there are."""
    settings.KEYWARD_REENCRYPT_BATCH = 100
    settings.KEYWARD_REENCRYPT_PART_BATCHES = 2  # a part: 200 rows at least
    settings.KEYWARD_REENCRYPT_PARTS = 8
    _, job = interleaved_job(rounds=3, ours=210, theirs=300, after=500)
    reencryption_split(job_id=str(job.pk))
    assert ReencryptionPart.objects.filter(job=job).count() == 3  # 630 // 200
    job = reencryption_run(job_id=str(job.pk))
    assert job.state == JobState.DONE and job.done == 630


@pytest.mark.django_db(transaction=True)
def test_a_job_with_nothing_to_move_has_no_parts_and_is_done() -> None:
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    records_create(tenant=tenant, items=list(synthetic_records(5)))
    job = ReencryptionJob.objects.create(tenant=tenant, target_dek=current_dek(tenant), total=0)
    assert reencryption_split(job_id=str(job.pk)) == []
    job.refresh_from_db()
    assert job.state == JobState.DONE and not job.parts.exists()


@pytest.mark.django_db(transaction=True)
def test_reencryption_is_complete_under_concurrent_writes(settings, monkeypatch) -> None:
    """Two workers on the parts while the application creates, changes, deletes
    and (a process that has not seen the rotation yet) writes under the old DEK."""
    rng = seeded("re-encryption under writes")
    settings.KEYWARD_REENCRYPT_BATCH = 100
    settings.KEYWARD_REENCRYPT_PARTS = 4
    # A process that has not seen the rotation writes under the old DEK for at
    # most its key-state interval; the grace period keeps that DEK from
    # retiring meanwhile. This test's late writer keeps on far longer.
    settings.KEYWARD_DEK_RETIRE_GRACE_SECONDS = 3600
    n = scale(1500, 20000)
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    records_create(tenant=tenant, items=list(synthetic_records(n, prefix="0-")))
    old_blobs = {
        s.record_id: (s.dek_id, bytes(s.pii))
        for s in SealedFields.objects.filter(dek__tenant=tenant)
    }
    dek_rotate(tenant=tenant, actor=SYSTEM, reason="test")
    envelope().forget(str(tenant.pk))
    expected = snapshot(tenant)
    target = current_dek(tenant)
    job = reencryption_start(tenant=tenant, actor=SYSTEM)
    part_ids = reencryption_split(job_id=str(job.pk))

    # Every row a batch really rewrote, found by its new ciphertext (random
    # nonces: no other write produces the same bytes).
    real = records.reencrypt.write_batch
    lock = threading.Lock()
    rewritten: list[int] = []

    def tracking(batch, target):
        count = real(batch, target)
        mine = dict(zip(batch.ids, batch.values, strict=True))
        written = [
            pk
            for pk, pii in SealedFields.objects.filter(
                record_id__in=batch.ids, dek=target
            ).values_list("record_id", "pii")
            if bytes(pii) == mine[pk]
        ]
        assert len(written) == count
        with lock:
            rewritten.extend(written)
        return count

    monkeypatch.setattr(records.reencrypt, "write_batch", tracking)
    records_by_id = {r.pk: r for r in Record.objects.filter(tenant=tenant)}
    old_ids = sorted(records_by_id)
    stop = threading.Event()
    touched: set[int] = set()  # old rows the application deleted or rewrote
    late: set[int] = set()  # rows written again under the old DEK
    errors: list[BaseException] = []

    def application() -> None:
        try:
            made = 0
            while not stop.is_set():
                # By id: a deleted instance's pk is None, so it cannot say it was touched.
                chosen = rng.choice(old_ids)
                if chosen in touched or chosen in late:
                    continue
                record = records_by_id[chosen]
                action = rng.choice(["create", "change", "delete", "late"])
                if action == "create":
                    items = list(synthetic_records(1, seed=made, prefix=f"during-{made}-"))
                    (row,) = records_create(tenant=tenant, items=items)
                    expected[str(row.uid)] = record_fields(tenant, row)
                    made += 1
                elif action == "change":
                    fields = {"name": f"changed {record.pk}", "email": f"{record.pk}@example.com"}
                    blob = envelope().encrypt(
                        str(tenant.pk), record.kind, PII_FIELD, str(record.uid),
                        encode_fields(fields),
                    )  # fmt: skip
                    SealedFields.objects.filter(pk=record.pk).update(
                        dek_id=dek_id_of(blob), pii=blob
                    )
                    expected[str(record.uid)] = fields
                    touched.add(record.pk)
                elif action == "delete":
                    touched.add(record.pk)  # before: a deleted instance has no pk
                    record_delete(tenant=tenant, record=record, actor=SYSTEM)
                    del expected[str(record.uid)]
                else:
                    dek_id, blob = old_blobs[record.pk]
                    SealedFields.objects.filter(pk=record.pk).update(dek_id=dek_id, pii=blob)
                    late.add(record.pk)
                time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    queue = list(part_ids)

    def worker() -> None:  # takes the next part, as a Celery worker would
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    part_id = queue.pop(0)
                reencryption_run_part(part_id=part_id)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    writer = threading.Thread(target=application)
    writer.start()
    time.sleep(0.05)
    workers = [threading.Thread(target=worker) for _ in range(2)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    stop.set()
    writer.join()
    assert not errors, errors
    job.refresh_from_db()
    assert job.state == JobState.DONE
    assert touched and late, "the application must write while the job runs"
    # Nothing written twice (but a row put back under the old DEK after it
    # moved), and the job counted exactly what it wrote.
    twice = {pk for pk, times in Counter(rewritten).items() if times > 1}
    assert twice <= late
    assert len(rewritten) == job.done
    parts_done = ReencryptionPart.objects.filter(job=job).values_list("done", flat=True)
    assert sum(parts_done) <= job.done
    assert set(old_ids) - touched - late <= set(rewritten)  # every untouched row moved
    # What is still under the old DEK was written there after the job passed
    # it: left for the next pass, under a DEK still there to read it.
    left = set(
        SealedFields.objects.filter(record__tenant=tenant)
        .exclude(dek=target)
        .values_list("record_id", flat=True)
    )
    assert left <= late
    assert DataKey.objects.get(tenant=tenant, version=1).state == DekState.RETIRING
    assert snapshot(tenant) == expected
    monkeypatch.setattr(records.reencrypt, "write_batch", real)
    second = reencryption_run(job_id=str(reencryption_start(tenant=tenant, actor=SYSTEM).pk))
    assert second.state == JobState.DONE and second.done == len(left)
    assert set(
        SealedFields.objects.filter(record__tenant=tenant).values_list("dek_id", flat=True)
    ) == {target.pk}
    assert snapshot(tenant) == expected


@pytest.mark.django_db(transaction=True)
def test_a_crash_in_each_part_resumes_from_that_parts_checkpoint(settings, monkeypatch) -> None:
    settings.KEYWARD_REENCRYPT_BATCH = 50
    settings.KEYWARD_REENCRYPT_PARTS = 3
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    records_create(tenant=tenant, items=list(synthetic_records(600)))
    dek_rotate(tenant=tenant, actor=SYSTEM, reason="test")
    envelope().forget(str(tenant.pk))
    before = snapshot(tenant)
    job = reencryption_start(tenant=tenant, actor=SYSTEM)
    reencryption_split(job_id=str(job.pk))
    bounds = list(ReencryptionPart.objects.filter(job=job).values_list("after_id", "until_id"))
    assert len(bounds) == 3
    real = records.reencrypt.write_batch
    for number in range(3):  # a crash in the third batch written of part `number`
        lock = threading.Lock()
        calls: list[int] = []  # first record id of each batch of that part written

        def crashing(
            batch, target, after=bounds[number][0], until=bounds[number][1], lock=lock, calls=calls
        ):
            with lock:  # two batches are written at once
                ours = after < batch.ids[0] <= until
                if ours:
                    calls.append(batch.ids[0])
                crash = ours and len(calls) == 3
            done = real(batch, target)
            if crash:
                raise RuntimeError("worker lost")  # after the batch's UPDATE, before commit
            return done

        monkeypatch.setattr(records.reencrypt, "write_batch", crashing)
        with pytest.raises(RuntimeError):
            reencryption_run(job_id=str(job.pk))
        part = ReencryptionPart.objects.get(job=job, number=number)
        assert not part.finished
        assert part.done in (100, 150)  # two committed, perhaps the one beside the crash
        moved = SealedFields.objects.filter(
            record_id__gt=part.after_id, record_id__lte=part.until_id, dek=job.target_dek
        )
        assert moved.count() == part.done  # progress and data committed together
        assert part.after_id < part.last_record_id < calls[2]
        assert not moved.filter(record_id__gte=calls[2], record_id__lt=calls[2] + 50).exists()
        # The earlier parts are finished, the later ones untouched.
        for other in ReencryptionPart.objects.filter(job=job).exclude(number=number):
            if other.number < number:
                assert other.finished and other.done == 200
            else:
                assert (other.done, other.last_record_id) == (0, other.after_id)
        job.refresh_from_db()
        assert job.done == 200 * number + part.done and job.state == JobState.RUNNING
    monkeypatch.setattr(records.reencrypt, "write_batch", real)
    job = reencryption_run(job_id=str(job.pk))
    assert job.state == JobState.DONE and job.done == 600  # nothing redone, nothing skipped
    assert list(ReencryptionPart.objects.filter(job=job).values_list("done", flat=True)) == [
        200,
        200,
        200,
    ]
    assert snapshot(tenant) == before


@pytest.mark.django_db(transaction=True)
def test_two_workers_killed_mid_job_finish_every_part_once_restarted(tmp_path: Path) -> None:
    rng = seeded("two workers killed")
    n = scale(4000, 40000)
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    records_create(tenant=tenant, items=list(synthetic_records(n)))
    dek_rotate(tenant=tenant, actor=SYSTEM, reason="test")
    envelope().forget(str(tenant.pk))
    before = snapshot(tenant)
    job = ReencryptionJob.objects.create(tenant=tenant, target_dek=current_dek(tenant), total=n)
    env = {
        "KEYWARD_REENCRYPT_BATCH": "100",
        "KEYWARD_REENCRYPT_PARTS": "4",
        "KEYWARD_REENCRYPT_PART_BATCHES": "1",
    }
    queue = f"test-{rng.randrange(16**8):08x}"
    kills = scale(1, 5)
    # Each round stops a quarter to a half of its share (n / (kills + 1)) of the
    # rows further on, so all the kills together stop before half the rows: each
    # lands before the end however the draws fall, with room for the rows moved
    # between seeing the stop and the kill.
    share = n // (kills + 1)
    for round_ in range(kills):
        with (
            celery_worker(tmp_path / f"a{round_}.log", env, queue) as first,
            celery_worker(tmp_path / f"b{round_}.log", env, queue) as second,
        ):
            run_reencryption.apply_async(args=(str(job.pk),), queue=queue)
            stop_at = job.done + rng.randrange(share // 4, share // 2)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                job.refresh_from_db()
                if job.done >= stop_at or job.state == JobState.DONE:
                    break
                time.sleep(0.01)
            first.kill()
            second.kill()
        job.refresh_from_db()
        assert job.state == JobState.RUNNING, "killed after the end; use more records"
        parts = list(ReencryptionPart.objects.filter(job=job))
        assert sum(p.done for p in parts) == job.done
        for part in parts:  # each part's progress is what it committed
            moved = SealedFields.objects.filter(
                record_id__gt=part.after_id, record_id__lte=part.until_id, dek=job.target_dek
            )
            assert moved.count() == part.done
            # Every row up to the part's checkpoint is moved (the ids are consecutive).
            upto = moved.filter(record_id__lte=part.last_record_id).count()
            assert upto == part.last_record_id - part.after_id
    with (
        celery_worker(tmp_path / "c.log", env, queue),
        celery_worker(tmp_path / "d.log", env, queue),
    ):
        run_reencryption.apply_async(args=(str(job.pk),), queue=queue)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.state == JobState.DONE:
                break
            time.sleep(0.1)
    assert job.state == JobState.DONE, (tmp_path / "c.log").read_text()[-3000:]
    assert job.done == n
    assert sum(ReencryptionPart.objects.filter(job=job).values_list("done", flat=True)) == n
    assert set(
        SealedFields.objects.filter(record__tenant=tenant).values_list("dek_id", flat=True)
    ) == {job.target_dek_id}
    assert snapshot(tenant) == before


@pytest.mark.django_db(transaction=True)
def test_a_finished_part_delivered_again_finishes_the_job(settings) -> None:
    """Its worker died after marking it finished, before finishing the job."""
    settings.KEYWARD_REENCRYPT_BATCH = 100
    settings.KEYWARD_REENCRYPT_PARTS = 2
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    records_create(tenant=tenant, items=list(synthetic_records(300)))
    dek_rotate(tenant=tenant, actor=SYSTEM, reason="test")
    envelope().forget(str(tenant.pk))
    before = snapshot(tenant)
    job = reencryption_start(tenant=tenant, actor=SYSTEM)
    first, second = reencryption_split(job_id=str(job.pk))
    assert reencryption_run_part(part_id=first).state == JobState.RUNNING
    # The second part marked finished with its rows not moved: the final
    # sweep must find them, so nothing depends on a part's own pass alone.
    ReencryptionPart.objects.filter(pk=second).update(finished=True)
    job = reencryption_run_part(part_id=second)
    assert job.state == JobState.DONE and job.done == 300
    assert ReencryptionPart.objects.get(pk=second).done == 0  # no second pass of its own
    assert set(
        SealedFields.objects.filter(record__tenant=tenant).values_list("dek_id", flat=True)
    ) == {current_dek(tenant).pk}
    assert snapshot(tenant) == before
    assert reencryption_split(job_id=str(job.pk)) == []  # a done job gives nothing out
