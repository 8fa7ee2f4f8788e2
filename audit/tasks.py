from __future__ import annotations

from celery import shared_task

from audit.models import AuditChain, Outcome
from audit.services import Actor, audit_verify_chain, record

# The streaming tasks live with streaming; the worker looks for tasks here.
from audit.streaming.tasks import deliver, deliver_due

__all__ = ["deliver", "deliver_due", "verify_chains"]


@shared_task(name="audit.verify_chains")
def verify_chains() -> dict[str, str]:
    """Verify every chain and record the result in the vendor chain.

    Read-only apart from the one event it appends, so running it twice is harmless.
    """
    problems: dict[str, str] = {}
    for key in AuditChain.objects.values_list("key", flat=True):
        link = audit_verify_chain(key)
        if link is not None:
            problems[key] = str(link)
    record(
        tenant=None,
        actor=Actor.system("audit verifier"),
        action="audit.verify",
        outcome=Outcome.FAILURE if problems else Outcome.SUCCESS,
        details={"broken": problems},
    )
    return problems
