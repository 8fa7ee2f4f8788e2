"""Re-encryption jobs: every record (and, through the consumers, every object)
under an older DEK is rewritten under the current one, so old DEKs can retire.

The job is a row (`ReencryptionJob`) with a checkpoint; the hot loop is in
`records.reencrypt`. Run as a Celery task (`records.tasks`).
"""

from __future__ import annotations

from celery import current_app
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
from records.models import JobState, ReencryptionJob
from records.reencrypt import ReencryptionPass
from records.selectors import records_not_under
from tenants.models import Tenant
from tenants.states import ServicePaused

CONSUMER = "records"
# Enqueued by name: the task module imports this one, not the reverse.
RUN_REENCRYPTION = "records.run_reencryption"


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
        tenant=locked, target_dek=target, total=records_not_under(locked, target).count()
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


def reencryption_run(*, job_id: str) -> ReencryptionJob:
    """Run (or resume) a re-encryption job to the end.

    1. Each batch re-encrypts the next records after the checkpoint and moves
       the checkpoint in the same transaction: killed anywhere, a rerun
       neither skips nor repeats a committed batch. On PostgreSQL two
       batches are re-sealed and written at once (`ReencryptionPass`).
    2. Rows changed while they were read are skipped by the write; a new pass
       from the start picks them up (at most three passes).
    3. The tenant's objects under older DEKs are rewritten under the current
       one, one object per transaction (`objects_reencrypt_pass`).
    4. When no record and no object remains under an older DEK, those DEKs are
       retired and their wrapped bytes destroyed.
    """
    job = ReencryptionJob.objects.select_related("tenant", "target_dek").get(pk=job_id)
    if job.state in (JobState.DONE, JobState.FAILED):
        return job
    if job.target_dek.state != DekState.ACTIVE:
        return _reencryption_failed(
            job, "The data key was rotated while the job waited; start re-encryption again."
        )

    try:
        return _reencryption_run(job)
    except (
        KeyProviderError,
        EnvelopeError,
        CiphertextError,
        DataUnavailable,
        ServicePaused,
    ) as exc:
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


def _reencryption_run(job: ReencryptionJob) -> ReencryptionJob:

    ReencryptionJob.objects.filter(pk=job.pk).update(state=JobState.RUNNING)
    tenant, target = job.tenant, job.target_dek

    def save(rewritten: int, checkpoint: int) -> bool:
        # In the batch's transaction. Batches commit out of order, so the
        # checkpoint only ever moves forward.
        return (
            ReencryptionJob.objects.filter(pk=job.pk, state=JobState.RUNNING).update(
                done=F("done") + rewritten,
                last_record_id=Greatest(F("last_record_id"), Value(checkpoint)),
            )
            == 1
        )

    for _ in range(3):
        after = ReencryptionJob.objects.values_list("last_record_id", flat=True).get(pk=job.pk)
        run = ReencryptionPass(tenant=tenant, target=target, after_id=after, save=save)
        run.run()
        if run.halted:
            return ReencryptionJob.objects.get(pk=job.pk)
        if not records_not_under(tenant, target).exists():
            break
        ReencryptionJob.objects.filter(pk=job.pk).update(last_record_id=0)
    # The other data (objects) is rewritten under the current DEK too, or the
    # older DEKs it uses could never be retired.
    others = reencrypt_pass(tenant, target, skip=CONSUMER)
    retired = dek_retire_unused(tenant=tenant)
    with transaction.atomic():
        job = ReencryptionJob.objects.select_for_update().get(pk=job.pk)
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
