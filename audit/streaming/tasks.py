from __future__ import annotations

from celery import shared_task

from audit.streaming.delivery import due_destinations, stream_deliver


@shared_task(name="audit.stream_deliver")
def deliver(destination_id: str) -> int:
    """Idempotent: sends only what lies after the destination's cursor."""
    return stream_deliver(destination_id)


@shared_task(name="audit.stream_due")
def deliver_due() -> int:
    """Beat's round: a delivery task for each destination with events to send."""
    due = due_destinations()
    for destination_id in due:
        deliver.delay(destination_id)
    return len(due)
