from __future__ import annotations

import os
import struct
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

import records.reencrypt
import records.reencryption
from audit.models import AuditEvent
from audit.services import Actor
from crypto.ciphertext import CiphertextMalformed, CiphertextUnauthentic, binding
from keys.models import DataKey, DekState
from keys.runtime import envelope, reset_for_tests
from keys.services.deks import dek_rotate
from objects.keyring import dek_material
from records.fields import PII_FIELD
from records.models import (
    DekRecordCount,
    JobState,
    Record,
    ReencryptionJob,
    ReencryptionPart,
    SealedFields,
)
from records.pii import decode_fields
from records.reencryption import reencryption_run, reencryption_start
from records.selectors import sealed_under
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from records.tasks import resume_reencryptions, run_reencryption
from tenants.models import Tenant
from tenants.services import tenant_create
from tests.conftest import login
from tests.support import invariants
from tests.support.embedded import run_embedded
from tests.support.faults import scale, seeded
from tests.support.kills import kill_repeatedly, spread_marks, task_on_worker

SYSTEM = Actor.system("tests")


@pytest.fixture(autouse=True)
def _fresh_envelope():
    reset_for_tests()
    yield
    reset_for_tests()


def tenant_with_old_data(slug: str, n: int, rotations: int = 1) -> Tenant:
    tenant = tenant_create(name=slug.title(), slug=slug, actor=SYSTEM)
    for r in range(rotations):
        records_create(tenant=tenant, items=list(synthetic_records(n, seed=r, prefix=f"{r}-")))
        dek_rotate(tenant=tenant, actor=SYSTEM, reason="test")
        envelope().forget(str(tenant.pk))
    return tenant


def snapshot(tenant: Tenant) -> dict[str, dict[str, str]]:
    return {
        str(r.uid): record_fields(tenant, r)
        for r in Record.objects.filter(tenant=tenant).select_related("sealed")
    }


def assert_all_under_current(tenant: Tenant) -> DataKey:
    current = DataKey.objects.get(tenant=tenant, state=DekState.ACTIVE)
    sealed = SealedFields.objects.filter(record__tenant=tenant)
    assert set(sealed.values_list("dek_id", flat=True)) == {current.pk}
    assert sealed.count() == Record.objects.filter(tenant=tenant).count()
    return current


@pytest.mark.django_db(transaction=True)
def test_reencryption_moves_everything_and_retires_old_deks(settings) -> None:
    settings.KEYWARD_REENCRYPT_BATCH = 100
    tenant = tenant_with_old_data("initech", 150, rotations=2)
    before = snapshot(tenant)
    job = reencryption_start(tenant=tenant, actor=SYSTEM)  # enqueues; run it here
    assert job.total == 300
    job = reencryption_run(job_id=str(job.pk))
    assert job.state == JobState.DONE and job.done == 300 and job.percent == 100
    assert_all_under_current(tenant)
    assert snapshot(tenant) == before
    retired = DataKey.objects.filter(tenant=tenant, state=DekState.RETIRED)
    assert sorted(retired.values_list("version", flat=True)) == [1, 2]
    assert all(bytes(d.wrapped) == b"" for d in retired)  # wrapped copies destroyed
    assert AuditEvent.objects.filter(tenant=tenant, action="dek.retire").count() == 2
    assert reencryption_run(job_id=str(job.pk)).done == 300  # rerunning a done job is a no-op


@pytest.mark.django_db(transaction=True)
def test_the_callers_thread_writes_batches_on_the_connection_it_keeps(
    settings, monkeypatch
) -> None:
    """Each pass runs one worker in the caller's thread, on its own connection
    (kept after the pass), and the others in threads of their own."""
    settings.KEYWARD_REENCRYPT_BATCH = 100
    settings.KEYWARD_REENCRYPT_PARTS = 3
    settings.KEYWARD_REENCRYPT_PART_BATCHES = 1
    tenant = tenant_with_old_data("initech", 900)
    connection.ensure_connection()
    caller = (threading.get_ident(), connection.connection.info.backend_pid)
    writers: list[tuple[int, int]] = []
    real = records.reencrypt.write_batch

    def watched(batch: records.reencrypt.Batch, target: DataKey) -> int:
        writers.append((threading.get_ident(), connection.connection.info.backend_pid))
        return real(batch, target)

    monkeypatch.setattr(records.reencrypt, "write_batch", watched)
    target = DataKey.objects.get(tenant=tenant, state=DekState.ACTIVE)
    job = ReencryptionJob.objects.create(tenant=tenant, target_dek=target, total=900)
    assert reencryption_run(job_id=str(job.pk)).done == 900
    assert caller in writers
    assert len(writers) >= 9  # 3 parts of 3 batches
    assert all(pid != caller[1] for thread, pid in writers if thread != caller[0])
    assert connection.connection.info.backend_pid == caller[1]  # still open
    assert_all_under_current(tenant)


@pytest.mark.django_db(transaction=True)
def test_a_crash_mid_job_resumes_from_the_checkpoint(settings, monkeypatch) -> None:
    settings.KEYWARD_REENCRYPT_BATCH = 50
    settings.KEYWARD_REENCRYPT_PARTS = 2  # 200 rows each, run one after the other here
    settings.KEYWARD_REENCRYPT_PART_BATCHES = 1
    tenant = tenant_with_old_data("initech", 400)
    before = snapshot(tenant)
    target = DataKey.objects.get(tenant=tenant, state="active")
    job = ReencryptionJob.objects.create(tenant=tenant, target_dek=target, total=400)
    real = records.reencrypt.write_batch
    lock = threading.Lock()
    calls: list[int] = []  # first record id of each batch written

    def crashing(batch, target):
        with lock:  # two batches are written at once
            calls.append(batch.ids[0])
            crash = len(calls) == 3
        done = real(batch, target)
        if crash:
            raise RuntimeError("worker lost")  # after the batch's UPDATE, before commit
        return done

    monkeypatch.setattr(records.reencrypt, "write_batch", crashing)
    with pytest.raises(RuntimeError):
        reencryption_run(job_id=str(job.pk))
    job.refresh_from_db()
    assert job.state == JobState.RUNNING
    # The two batches before the crash committed, and perhaps the one being
    # written beside it; the crashed one did not.
    assert job.done in (100, 150)
    moved = SealedFields.objects.filter(record__tenant=tenant, dek=target)
    assert moved.count() == job.done  # progress and data committed together
    first, second = ReencryptionPart.objects.filter(job=job)
    assert first.done == job.done and not first.finished
    assert 0 < first.last_record_id < calls[2]  # the checkpoint is before the lost batch
    assert (second.done, second.last_record_id) == (0, second.after_id)  # not started
    assert not moved.filter(record_id__gte=calls[2], record_id__lt=calls[2] + 50).exists()
    monkeypatch.setattr(records.reencrypt, "write_batch", real)
    job = reencryption_run(job_id=str(job.pk))
    assert job.done == 400  # nothing redone, nothing skipped
    assert [p.done for p in ReencryptionPart.objects.filter(job=job)] == [200, 200]
    assert_all_under_current(tenant)
    assert snapshot(tenant) == before


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("crash_after", ["reencrypt_pass", "dek_retire_unused"])
def test_a_crash_in_the_jobs_finish_resumes_and_completes(
    settings, monkeypatch, crash_after: str
) -> None:
    """Every row moved, then the worker is lost in the job's finish: after the
    other data's pass (before retiring), or after retiring (before the job is
    marked done). The rerun finishes: nothing moved twice, counted twice or
    retired twice."""
    settings.KEYWARD_REENCRYPT_BATCH = 50
    tenant = tenant_with_old_data("initech", 120)
    before = snapshot(tenant)
    old = DataKey.objects.get(tenant=tenant, version=1)
    target = DataKey.objects.get(tenant=tenant, state="active")
    job = ReencryptionJob.objects.create(tenant=tenant, target_dek=target, total=120)
    real = getattr(records.reencryption, crash_after)

    def crashing(*args, **kwargs):
        result = real(*args, **kwargs)
        raise RuntimeError(f"worker lost after {result!r}")  # the step had committed

    monkeypatch.setattr(records.reencryption, crash_after, crashing)
    with pytest.raises(RuntimeError, match="worker lost"):
        reencryption_run(job_id=str(job.pk))
    job.refresh_from_db()
    assert (job.state, job.done) == (JobState.RUNNING, 120)
    assert_all_under_current(tenant)
    old.refresh_from_db()
    assert (old.state == DekState.RETIRED) is (crash_after == "dek_retire_unused")

    monkeypatch.setattr(records.reencryption, crash_after, real)
    job = reencryption_run(job_id=str(job.pk))
    assert (job.state, job.done) == (JobState.DONE, 120)
    old.refresh_from_db()
    assert old.state == DekState.RETIRED and bytes(old.wrapped) == b""
    events = AuditEvent.objects.filter(tenant=tenant)
    assert events.filter(action="dek.retire").count() == 1
    assert events.filter(action="records.reencrypt.done").count() == 1
    assert snapshot(tenant) == before
    invariants.audit_chains_verify()


def test_the_checkpoint_covers_only_batches_committed_in_order() -> None:
    run = records.reencrypt.ReencryptionPass.__new__(records.reencrypt.ReencryptionPass)
    run._lock, run._start, run._run_end, run._committed = threading.Lock(), 7, -1, set()
    run._ends = [100, 200, 300, 400]
    assert run._checkpoint_with(1) == 7  # batch 0 still being written
    run._committed_batch(1)
    assert run._checkpoint_with(2) == 7
    assert run._checkpoint_with(0) == 200  # 0 commits: 0 and 1 are done
    run._committed_batch(0)
    assert run._checkpoint_with(3) == 200  # 2 is not committed
    run._committed_batch(2)
    assert run._checkpoint_with(3) == 400


@pytest.mark.faults
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_job_finishes_once_restarted(tmp_path: Path) -> None:
    """Killed at random points (one kill in `make test`, ten in `make faults`),
    each time sent again by the beat's resume job."""
    tenant = tenant_with_old_data("initech", 3000)
    before = snapshot(tenant)
    job = ReencryptionJob.objects.create(
        tenant=tenant, target_dek=DataKey.objects.get(tenant=tenant, state="active"), total=3000
    )
    # Old enough for the beat's resume job (records.resume_reencryptions).
    ReencryptionJob.objects.filter(pk=job.pk).update(created=timezone.now() - timedelta(minutes=11))
    rng = seeded("re-encryption kills")
    kills = scale(1, 10)

    def progress() -> int:
        job.refresh_from_db()
        return job.done

    def check_after_kill() -> None:
        job.refresh_from_db()
        assert job.state == JobState.RUNNING
        # Progress and data committed together (the checkpoint counts the rows moved).
        assert SealedFields.objects.filter(record__tenant=tenant, dek=job.target_dek).count() == (
            job.done
        )

    landed = kill_repeatedly(
        tmp_path,
        rng,
        name="reencryption",
        marks=spread_marks(rng, kills, 100, 2000),
        total=3000,
        job=task_on_worker(
            {"KEYWARD_REENCRYPT_BATCH": "100"},
            first=lambda w: run_reencryption.apply_async(args=(str(job.pk),), queue=w.queue),
            resume=lambda w: resume_reencryptions.apply_async(queue=w.queue),
        ),
        progress=progress,
        finished=lambda: ReencryptionJob.objects.get(pk=job.pk).state == JobState.DONE,
        after_kill=check_after_kill,
    )
    landed.report()
    # Marks end at 2,000: at least eight batches remain when the pause before
    # the kill starts (progress moves a batch at a time, on two threads). Even
    # so a kill may land after the last batch and before the job is marked done
    # (its final sweep and retire): a crash point of its own, which the restart
    # must finish. The finish itself is crashed on purpose in
    # test_a_crash_in_the_jobs_finish_resumes_and_completes.
    assert len(landed.landed) == kills and all(0 < n <= 3000 for n in landed.landed)
    job.refresh_from_db()
    assert job.done == 3000
    assert_all_under_current(tenant)
    assert snapshot(tenant) == before
    invariants.audit_chains_verify()


def test_keys_page_shows_real_figures(db) -> None:
    from tests.conftest import make_tenant

    acme = make_tenant("Acme", "acme")
    records_create(tenant=acme.tenant, items=list(synthetic_records(12)))
    body = login(acme.viewer).get(reverse("keys:overview", args=["acme"])).content.decode()
    assert "Vendor-managed key" in body
    assert "the key cache lifetime (5 minutes)" in body
    assert "<td>12</td>" in body  # records under DEK v1
    assert "Rotate data key now" not in body  # a viewer only reads


@pytest.mark.django_db(transaction=True)
def test_a_row_changed_while_being_read_is_not_overwritten(settings) -> None:
    from django.db import connections

    from crypto.ciphertext import dek_id_of
    from records.fields import PII_FIELD
    from records.pii import encode_fields

    settings.KEYWARD_REENCRYPT_BATCH = 50
    tenant = tenant_with_old_data("initech", 120)
    before = snapshot(tenant)
    victim = Record.objects.filter(tenant=tenant, kind="user").order_by("id")[10]
    target = DataKey.objects.get(tenant=tenant, state="active")
    job = ReencryptionJob.objects.create(tenant=tenant, target_dek=target, total=120)
    real = records.reencrypt.reencrypt_rows
    fired: list[bool] = []
    new_fields = {"name": "renamed", "email": "renamed@example.com"}

    def concurrent_write(tenant_id, rows, target_id):
        if not fired and any(row[0] == victim.pk for row in rows):
            fired.append(True)

            def write() -> None:  # the application saves new fields, committed at once
                blob = envelope().encrypt(
                    tenant_id, victim.kind, PII_FIELD, str(victim.uid), encode_fields(new_fields)
                )
                SealedFields.objects.filter(pk=victim.pk).update(dek_id=dek_id_of(blob), pii=blob)
                connections.close_all()

            thread = threading.Thread(target=write)
            thread.start()
            thread.join()
        return real(tenant_id, rows, target_id)

    records.reencrypt.reencrypt_rows = concurrent_write
    try:
        job = reencryption_run(job_id=str(job.pk))
    finally:
        records.reencrypt.reencrypt_rows = real
    assert fired and job.state == JobState.DONE
    assert job.done == 119  # the victim was read, but its stale re-sealed copy was dropped
    assert_all_under_current(tenant)
    after = snapshot(tenant)
    assert after.pop(str(victim.uid)) == new_fields  # the newer write survived
    assert after == {uid: f for uid, f in before.items() if uid != str(victim.uid)}


@pytest.mark.django_db(transaction=True)
def test_a_young_dek_is_retired_only_after_the_grace_period(settings) -> None:
    from datetime import timedelta

    from django.utils import timezone

    from keys.tasks import retire_unused_deks

    settings.KEYWARD_DEK_RETIRE_GRACE_SECONDS = 3600
    tenant = tenant_with_old_data("initech", 20)
    job = reencryption_start(tenant=tenant, actor=SYSTEM)
    assert reencryption_run(job_id=str(job.pk)).done == 20
    assert_all_under_current(tenant)
    old = DataKey.objects.get(tenant=tenant, version=1)
    assert old.state == DekState.RETIRING  # nothing depends on it, but it is too young
    assert retire_unused_deks() == 0
    DataKey.objects.filter(tenant=tenant, version=2).update(
        created=timezone.now() - timedelta(hours=2)
    )
    assert retire_unused_deks() == 1
    old.refresh_from_db()
    assert old.state == DekState.RETIRED and bytes(old.wrapped) == b""


# -- ciphertext formats: format 1 is read, format 2 is written ----------------------


def field_key(dek: bytes) -> bytes:
    """Format 2's key, computed here rather than by the code under test."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"keyward field key/2")
    return hkdf.derive(dek)


def parts(tenant: Tenant, record: Record, blob: bytes) -> tuple[bytes, bytes, bytes]:
    """(nonce, ciphertext and tag, associated data) of a record's sealed fields."""
    bound = binding(str(tenant.pk), record.kind, PII_FIELD, str(record.uid))
    return blob[9:21], blob[21:], blob[:9] + bound


def as_format_1(tenant: Tenant, record: Record, blob: bytes, dek: bytes) -> bytes:
    """The same fields sealed as format 1 was written: with the DEK itself as the key."""
    plain = AESGCM(field_key(dek)).decrypt(*parts(tenant, record, blob))
    head = struct.pack(">BQ", 1, int.from_bytes(blob[1:9], "big"))
    nonce = os.urandom(12)
    bound = binding(str(tenant.pk), record.kind, PII_FIELD, str(record.uid))
    return head + nonce + AESGCM(dek).encrypt(nonce, plain, head + bound)


def sealed_rows(tenant: Tenant) -> list[SealedFields]:
    rows = SealedFields.objects.filter(record__tenant=tenant).select_related("record")
    return list(rows.order_by("record_id"))


@pytest.mark.django_db(transaction=True)
def test_format_1_records_are_read_and_reencrypted_as_format_2(settings) -> None:
    settings.KEYWARD_REENCRYPT_BATCH = 50
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    records_create(tenant=tenant, items=list(synthetic_records(120, prefix="0-")))
    before = snapshot(tenant)
    old = DataKey.objects.get(tenant=tenant, state=DekState.ACTIVE)
    old_dek = dek_material(str(tenant.pk), old.pk)
    rows = sealed_rows(tenant)
    assert {bytes(s.pii)[0] for s in rows} == {2}  # new records are written as format 2
    legacy = rows[::2]  # every other row: each batch mixes both formats
    for s in legacy:
        s.pii = as_format_1(tenant, s.record, bytes(s.pii), old_dek)
    SealedFields.objects.bulk_update(legacy, ["pii"])
    envelope().forget(str(tenant.pk))
    assert snapshot(tenant) == before  # format 1 still reads through the envelope

    dek_rotate(tenant=tenant, actor=SYSTEM, reason="test")
    envelope().forget(str(tenant.pk))
    job = reencryption_run(job_id=str(reencryption_start(tenant=tenant, actor=SYSTEM).pk))
    assert job.state == JobState.DONE and job.done == 120
    current = assert_all_under_current(tenant)
    new_dek = dek_material(str(tenant.pk), current.pk)
    for s in sealed_rows(tenant):
        blob = bytes(s.pii)
        assert blob[0] == 2
        with pytest.raises(InvalidTag):  # the DEK itself is not the field key
            AESGCM(new_dek).decrypt(*parts(tenant, s.record, blob))
        AESGCM(field_key(new_dek)).decrypt(*parts(tenant, s.record, blob))
    assert snapshot(tenant) == before


@pytest.mark.django_db
def test_the_reencryption_loop_refuses_a_relabelled_format_byte() -> None:
    tenant = tenant_with_old_data("initech", 1)
    old = DataKey.objects.get(tenant=tenant, version=1)
    target = DataKey.objects.get(tenant=tenant, state=DekState.ACTIVE)
    (row,) = sealed_rows(tenant)
    record, v2 = row.record, bytes(row.pii)
    v1 = as_format_1(tenant, record, v2, dek_material(str(tenant.pk), old.pk))
    tenant_id = str(tenant.pk)

    def reencrypt(blob: bytes, dek_id: int = old.pk) -> bytes:
        rows = [(row.pk, str(record.uid), record.kind, dek_id, blob, None)]
        return records.reencrypt.reencrypt_rows(tenant_id, rows, target.pk)[1][0]

    fields = record_fields(tenant, record)
    for blob in (v1, v2):  # both formats open, and come out as format 2 under the target
        moved = reencrypt(blob)
        assert moved[0] == 2 and int.from_bytes(moved[1:9], "big") == target.pk
        plain = envelope().decrypt(tenant_id, record.kind, PII_FIELD, str(record.uid), moved)
        assert decode_fields(plain) == fields
    for relabelled in (bytes([1]) + v2[1:], bytes([2]) + v1[1:]):
        with pytest.raises(CiphertextUnauthentic):
            reencrypt(relabelled)
    with pytest.raises(CiphertextMalformed):  # a format no reader knows
        reencrypt(bytes([3]) + v2[1:])
    with pytest.raises(CiphertextMalformed):  # a blob that names another DEK than its row
        reencrypt(v2, dek_id=target.pk)


# -- rewriting in place: no index on the DEK, pages with room ---------------------


def test_the_embedded_database_reencrypts_through_the_tenants_records(tmp_path: Path) -> None:
    found = run_embedded("tests.records.embedded_reencryption", tmp_path)
    assert found["vendor"] == "sqlite"
    assert found["state"] == JobState.DONE and found["done"] == 30
    assert found["under_old_before"] is True and found["under_old_after"] is False
    assert found["old_state"] == DekState.RETIRED
    assert found["ours_under"] == [found["current"]]
    assert found["theirs_moved"] == 0  # the other tenant's interleaved rows: untouched
    assert found["same_fields"] is True


@pytest.mark.django_db
def test_sealed_fields_are_indexed_by_their_primary_key_alone() -> None:
    """An index on a column re-encryption changes would make every rewrite insert
    into it: no update could then stay on its page (HOT)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'archive_sealedfields'")
        indexes = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = 'archive_sealedfields'")
        options = cursor.fetchone()[0]
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'record_tenant_id'")
        (record_index,) = cursor.fetchone()
    assert len(indexes) == 1 and "(record_id)" in indexes[0]
    assert options == ["fillfactor=50"]
    assert record_index.endswith("(tenant_id, id)")


@pytest.mark.django_db
def test_a_batch_is_rewritten_in_place_without_index_entries() -> None:
    tenant = tenant_with_old_data("initech", 60)
    target = DataKey.objects.get(tenant=tenant, state=DekState.ACTIVE)
    with transaction.atomic():
        batch = records.reencrypt.read_batch(tenant=tenant, target=target, after_id=0)
        assert batch is not None and len(batch.ids) == 60
        assert records.reencrypt.write_batch(batch, target) == 60
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables "
                "WHERE relname = 'archive_sealedfields'"
            )
            assert cursor.fetchone() == (60, 60)  # every row rewritten in place
    assert_all_under_current(tenant)


@pytest.mark.django_db
def test_a_batch_is_read_through_the_tenants_records() -> None:
    """With another tenant's rows interleaved and under older DEKs of their own, the
    read walks this tenant's record index and looks up each row's sealed fields."""
    tenant = tenant_with_old_data("initech", 40)
    other = tenant_with_old_data("hooli", 40)
    target = DataKey.objects.get(tenant=tenant, state=DekState.ACTIVE)
    older = records.reencrypt.older_deks(tenant, target)
    with connection.cursor() as cursor:
        # The other tenant's table-full of rows after ours: what a shared table
        # holds, where reading every tenant's rows would show in the plan.
        cursor.execute(
            "INSERT INTO archive_record (uid, kind, external_id, created, tenant_id) "
            "SELECT gen_random_uuid(), 'user', 'bulk-' || n, now(), %s "
            "FROM generate_series(1, 20000) AS n",
            [other.pk],
        )
        cursor.execute(
            "INSERT INTO archive_sealedfields (record_id, dek_id, pii) "
            "SELECT id, %s, '\\x00' FROM archive_record WHERE external_id LIKE 'bulk-%%'",
            [DataKey.objects.get(tenant=other, version=1).pk],
        )
        cursor.execute("ANALYZE archive_record")
        cursor.execute("ANALYZE archive_sealedfields")
        cursor.execute(
            "EXPLAIN " + records.reencrypt._PG_SELECT, [tenant.pk, 0, 2**63 - 1, older, 100]
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "record_tenant_id" in plan and "archive_sealedfields_pkey" in plan, plan
    assert "Seq Scan" not in plan and "Hash" not in plan, plan
    rows = records.reencrypt.read_rows(tenant=tenant, older=older, after_id=0, size=100)
    ours = set(Record.objects.filter(tenant=tenant).values_list("id", flat=True))
    assert {row[0] for row in rows} == ours and other.pk != tenant.pk


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("theirs_between", "read"),
    [(0, "BETWEEN"), (60, "LATERAL")],  # our ids dense, or far between another tenant's
)
def test_whether_a_dek_seals_anything_is_confirmed_through_the_tenants_records(
    theirs_between: int, read: str
) -> None:
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    other = tenant_create(name="Hooli", slug="hooli", actor=SYSTEM)
    records_create(tenant=tenant, items=list(synthetic_records(4, prefix="a-")))
    if theirs_between:
        records_create(tenant=other, items=list(synthetic_records(theirs_between, prefix="t-")))
    records_create(tenant=tenant, items=list(synthetic_records(4, prefix="b-")))
    dek_rotate(tenant=tenant, actor=SYSTEM, reason="test")
    old = DataKey.objects.get(tenant=tenant, version=1)
    current = DataKey.objects.get(tenant=tenant, state=DekState.ACTIVE)
    assert sealed_under(old) and not sealed_under(current)
    # A counter that says none while a row is there: the records are read.
    last = Record.objects.filter(tenant=tenant).order_by("-id").first()
    SealedFields.objects.filter(record__tenant=tenant).exclude(record=last).update(dek=current)
    DekRecordCount.objects.filter(dek=old).update(records=0)
    with CaptureQueriesContext(connection) as queries:
        assert sealed_under(old)  # the tenant's last record, still under it
    assert len(queries) == 3  # the counters once, the tenant's span, the read
    assert read in queries.captured_queries[-1]["sql"]
    SealedFields.objects.filter(record=last).update(dek=current)
    DekRecordCount.objects.filter(dek=old).update(records=0)
    assert not sealed_under(old)
    if theirs_between:
        assert sealed_under(DataKey.objects.get(tenant=other, state=DekState.ACTIVE))
