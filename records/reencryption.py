"""Re-encryption jobs: every record (and, through the consumers, every object)
under an older DEK is rewritten under the current one, so old DEKs can retire.

The job is a row (`ReencryptionJob`) cut into parts (`ReencryptionPart`): the
record-id range of the rows under older DEKs, split into ranges of equal
width, each with its own checkpoint. Each part is a Celery task
(`records.tasks`), so as many workers as parts share one job; the hot loop is
in `records.reencrypt`.

How many parts (`part_count`): KEYWARD_REENCRYPT_PARTS at most, and no more
than leaves each at least KEYWARD_REENCRYPT_PART_BATCHES batches of the rows
to move (the DEK counters give their number exactly). A part has fixed costs
that rows do not share: a task's round trip, a pass that starts with one
batch in flight and drains to one, a second worker's new connection with its
batch table and statistics. Against a part of two or three batches they were
a fifth of the job's time: 200,000 rows in 8 parts moved at 74k rows/s on two
workers, in 2 parts at 94k.

Why key ranges rather than rewriting the table and swapping it in:

- A rewrite-and-swap has to replay every write made while it copies (a
  trigger and a log table, or a lock on the table while it swaps), for all
  tenants of the shared table, not only the one rotating; and it holds a
  second copy of the table until the swap. A key range needs none of that: it
  updates rows in place with the same optimistic check as before (a row
  whose xmin moved since it was read is left alone), so the API goes on
  reading and writing the tenant's records throughout, and a crash leaves
  committed batches and their checkpoints, never a half-built table.
- Ranges are disjoint and cover (first record, last record] of the tenant
  when the job was cut, each exactly once (`split_range`); a part reads the
  tenant's records of its range and rewrites those under an older DEK. Rows
  written after that are written under the current DEK by the application
  and need no move. Whatever a part leaves behind (a row changed between its
  read and its write, a row still sealed by a process that had not yet seen
  the rotation) is found by the final sweep over the whole id range, which
  runs when the last part is done and the DEK counters still count rows
  under an older DEK.
- Equal widths cost two probes of the tenant's record index to compute,
  however large the table; uneven ranges (ids are shared by all tenants)
  even out because a large job has more parts than workers, and a worker
  that finishes early takes the next part.

A part runs and commits like the whole job did before: batches with their
progress in one transaction, its checkpoint the end of the longest run of
committed batches, so a part killed anywhere resumes after its checkpoint,
neither skipping nor rewriting a committed row. The job is done when every
part is finished and the sweep has found nothing left.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.http import HttpRequest
from django.utils import timezone

from audit.models import Outcome
from audit.services import Actor, record
from crypto.ciphertext import CiphertextError
from crypto.envelope import EnvelopeError
from keys.consumers import DataUnavailable, reencrypt_pass
from keys.errors import KeyActionRefused
from keys.models import DataKey, DekState
from keys.providers.base import KeyProviderError
from keys.services.deks import NOT_ROTATABLE, dek_retire_unused
from records.models import JobState, ReencryptionJob, ReencryptionPart
from records.reencrypt import ReencryptionPass, older_deks
from records.selectors import record_counts_by_dek, record_id_span
from tenants.models import Tenant
from tenants.states import ServicePaused

CONSUMER = "records"
# Enqueued by name: the task module imports this one, not the reverse.
RUN_REENCRYPTION = "records.run_reencryption"
RUN_REENCRYPTION_PART = "records.run_reencryption_part"
# Job errors that end it as failed, with the reason shown to the tenant.
JOB_ERRORS = (KeyProviderError, EnvelopeError, CiphertextError, DataUnavailable, ServicePaused)


@transaction.atomic
def reencryption_start(
    *, tenant: Tenant, actor: Actor, request: HttpRequest | None = None
) -> ReencryptionJob:
    locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
    if locked.state in NOT_ROTATABLE or locked.is_paused:
        raise KeyActionRefused(
            f"Re-encryption is on hold while the tenant is {locked.get_state_display()}."
        )
    open_job = ReencryptionJob.objects.filter(
        tenant=locked, state__in=[JobState.QUEUED, JobState.RUNNING]
    ).first()
    if open_job is not None:
        return open_job
    target = DataKey.objects.get(tenant=locked, state=DekState.ACTIVE)
    job = ReencryptionJob.objects.create(
        tenant=locked, target_dek=target, total=_rows_to_move(locked, target)
    )
    record(
        tenant=locked,
        actor=actor,
        action="records.reencrypt",
        target=f"DEK v{target.version}",
        details={"records": job.total, "job": str(job.pk)},
        request=request,
    )
    transaction.on_commit(lambda: current_app.send_task(RUN_REENCRYPTION, args=[str(job.pk)]))
    return job


def split_range(after_id: int, until_id: int, parts: int) -> list[tuple[int, int]]:
    """(after, until] ranges of equal width covering (after_id, until_id] exactly once.

    Fewer than `parts` when the range holds fewer ids than that; none when empty.
    """
    width = until_id - after_id
    count = max(0, min(parts, width))
    bounds = [after_id + width * n // count for n in range(count)] + [until_id] if count else []
    return list(pairwise(bounds))


def part_count(rows: int) -> int:
    """Parts for a job with `rows` rows to move (see the module's docstring)."""
    per_part = settings.KEYWARD_REENCRYPT_PART_BATCHES * settings.KEYWARD_REENCRYPT_BATCH
    return max(1, min(settings.KEYWARD_REENCRYPT_PARTS, rows // per_part))


def _rows_to_move(tenant: Tenant, target: DataKey) -> int:
    """Rows under the tenant's older DEKs, exactly, from the DEK counters."""
    counts = record_counts_by_dek(tenant)
    return sum(counts.get(dek_id, 0) for dek_id in older_deks(tenant, target))


def reencryption_split(*, job_id: str) -> list[int]:
    """Cut a job into its parts (once) and return the ids of those not finished.

    An empty list means there is nothing left to give to workers: the job has
    ended, or every part is finished and the job is finished here.
    """
    job = ReencryptionJob.objects.select_related("tenant", "target_dek").get(pk=job_id)
    if job.state in (JobState.DONE, JobState.FAILED):
        return []
    if job.target_dek.state != DekState.ACTIVE:
        _reencryption_failed(job, ROTATED_MEANWHILE)
        return []
    with transaction.atomic():
        locked = ReencryptionJob.objects.select_for_update().get(pk=job.pk)
        if not locked.parts.exists():
            rows = _rows_to_move(job.tenant, job.target_dek)
            # The tenant's whole span: its records under the current DEK in
            # between are read and passed over.
            span = record_id_span(job.tenant.pk) if rows else None
            # A job started before parts existed resumes after its own checkpoint.
            ranges = (
                split_range(max(span[0] - 1, locked.last_record_id), span[1], part_count(rows))
                if span
                else []
            )
            ReencryptionPart.objects.bulk_create(
                ReencryptionPart(
                    job=locked, number=n, after_id=after, until_id=until, last_record_id=after
                )
                for n, (after, until) in enumerate(ranges)
            )
            # From here on the job's checkpoint is the final sweep's.
            locked.last_record_id = 0
            locked.state = JobState.RUNNING
            locked.save(update_fields=["last_record_id", "state"])
        left = list(locked.parts.filter(finished=False).values_list("pk", flat=True))
    if not left:
        _guarded(job, lambda: _reencryption_finish(job))
    return left


def reencryption_run_part(*, part_id: int) -> ReencryptionJob:
    """Run (or resume) one part of a job; the worker that finishes the last part
    finishes the job."""
    part = ReencryptionPart.objects.select_related("job__tenant", "job__target_dek").get(pk=part_id)
    job = part.job
    if job.state in (JobState.DONE, JobState.FAILED):
        return job
    if job.target_dek.state != DekState.ACTIVE:
        return _reencryption_failed(job, ROTATED_MEANWHILE)
    return _guarded(job, lambda: _run_part(job, part))


def reencryption_run(*, job_id: str) -> ReencryptionJob:
    """Run (or resume) a whole re-encryption job in this process, part after part.

    The Celery task gives the parts to as many workers instead
    (`records.tasks.run_reencryption`); this is the same work in one place.
    """
    for part_id in reencryption_split(job_id=job_id):
        job = reencryption_run_part(part_id=part_id)
        if job.state != JobState.RUNNING:
            return job
    return ReencryptionJob.objects.get(pk=job_id)


ROTATED_MEANWHILE = "The data key was rotated while the job waited; start re-encryption again."


def _guarded(job: ReencryptionJob, work: Callable[[], ReencryptionJob]) -> ReencryptionJob:
    try:
        return work()
    except JOB_ERRORS as exc:
        return _reencryption_failed(job, f"Re-encryption stopped: {exc}")


def _reencryption_failed(job: ReencryptionJob, error: str) -> ReencryptionJob:
    """End a job that cannot go on, so that a new one can start; record why."""
    with transaction.atomic():
        locked = ReencryptionJob.objects.select_for_update().get(pk=job.pk)
        if locked.state in (JobState.DONE, JobState.FAILED):
            return locked
        locked.state = JobState.FAILED
        locked.error = error
        locked.finished = timezone.now()
        locked.save(update_fields=["state", "error", "finished"])
        record(
            tenant=locked.tenant,
            actor=Actor.system("re-encryption"),
            action="records.reencrypt.failed",
            outcome=Outcome.FAILURE,
            reason=error,
        )
    return locked


def _run_part(job: ReencryptionJob, part: ReencryptionPart) -> ReencryptionJob:
    """Re-encrypt the part's range after its checkpoint; finish the job if it was the last.

    1. Batches commit with the part's progress and checkpoint, and the job's
       count, in one transaction (`save`).
    2. Then, under the job's row lock, the part is marked finished; the caller
       that sees no unfinished part left finishes the job. Killed in between,
       the job is finished by the next `reencryption_split`.
    """
    ReencryptionJob.objects.filter(pk=job.pk, state=JobState.QUEUED).update(state=JobState.RUNNING)
    tenant, target = job.tenant, job.target_dek

    def save(rewritten: int, checkpoint: int) -> bool:
        # In the batch's transaction. Batches commit out of order, so the
        # checkpoint only ever moves forward. The job's row is updated last:
        # its lock, shared by every part, is held only until the commit.
        ReencryptionPart.objects.filter(pk=part.pk).update(
            done=F("done") + rewritten,
            last_record_id=Greatest(F("last_record_id"), Value(checkpoint)),
        )
        return (
            ReencryptionJob.objects.filter(pk=job.pk, state=JobState.RUNNING).update(
                done=F("done") + rewritten
            )
            == 1
        )

    # A part delivered again once finished (its worker died before finishing
    # the job) has nothing to read: it only checks whether the job is done.
    if not part.finished:
        after = ReencryptionPart.objects.values_list("last_record_id", flat=True).get(pk=part.pk)
        run = ReencryptionPass(
            tenant=tenant, target=target, after_id=after, until_id=part.until_id, save=save
        )
        run.run()
        if run.halted:
            return ReencryptionJob.objects.get(pk=job.pk)
    with transaction.atomic():
        locked = ReencryptionJob.objects.select_for_update().get(pk=job.pk)
        ReencryptionPart.objects.filter(pk=part.pk).update(finished=True)
        last = not locked.parts.filter(finished=False).exists()
    return _reencryption_finish(job) if last else ReencryptionJob.objects.get(pk=job.pk)


def _reencryption_finish(job: ReencryptionJob) -> ReencryptionJob:
    """Once every part is finished: sweep up what the parts left, then retire.

    1. Rows still under an older DEK (changed while a part read them, or
       written by a process that had not yet seen the rotation) are
       re-encrypted by passes over the whole id range, with the job's own
       checkpoint (at most three passes).
    2. The tenant's objects under older DEKs are rewritten under the current
       one, one object per transaction (`objects_reencrypt_pass`).
    3. When no record and no object remains under an older DEK, those DEKs are
       retired and their wrapped bytes destroyed.
    """
    tenant, target = job.tenant, job.target_dek

    def save(rewritten: int, checkpoint: int) -> bool:
        return (
            ReencryptionJob.objects.filter(pk=job.pk, state=JobState.RUNNING).update(
                done=F("done") + rewritten,
                last_record_id=Greatest(F("last_record_id"), Value(checkpoint)),
            )
            == 1
        )

    for _ in range(3):
        # The counters say exactly how many rows are left (retiring a DEK
        # checks its rows once more, through the tenant's records).
        if not _rows_to_move(tenant, target):
            break
        after = ReencryptionJob.objects.values_list("last_record_id", flat=True).get(pk=job.pk)
        run = ReencryptionPass(tenant=tenant, target=target, after_id=after, save=save)
        run.run()
        if run.halted:
            return ReencryptionJob.objects.get(pk=job.pk)
        ReencryptionJob.objects.filter(pk=job.pk).update(last_record_id=0)
    # The other data (objects) is rewritten under the current DEK too, or the
    # older DEKs it uses could never be retired.
    others = reencrypt_pass(tenant, target, skip=CONSUMER)
    retired = dek_retire_unused(tenant=tenant)
    with transaction.atomic():
        job = ReencryptionJob.objects.select_for_update().get(pk=job.pk)
        if job.state != JobState.RUNNING:
            return job
        job.state = JobState.DONE
        job.finished = timezone.now()
        job.save(update_fields=["state", "finished"])
        record(
            tenant=tenant,
            actor=Actor.system("re-encryption"),
            action="records.reencrypt.done",
            target=f"DEK v{job.target_dek.version}",
            details={
                "records": job.done,
                **{name: result.rewritten for name, result in others.items()},
                **{f"{name}_not_reencrypted": r.left[:20] for name, r in others.items()},
                "retired_versions": retired,
            },
        )
    return job
