from __future__ import annotations

import time
from pathlib import Path

import pytest

from audit.models import AuditEvent
from audit.services import Actor, record
from audit.tasks import verify_chains
from tenants.models import Tenant
from tests.support.worker import celery_worker


def test_verify_chains_records_its_result(db: None) -> None:
    tenant = Tenant.objects.create(name="T", slug="t")
    record(tenant=tenant, actor=Actor.system(), action="test.one")
    assert verify_chains() == {}
    event = AuditEvent.objects.get(chain="vendor", action="audit.verify")
    assert event.outcome == "success"


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_the_task_end_to_end(tmp_path: Path) -> None:
    tenant = Tenant.objects.create(name="T", slug="t")
    record(tenant=tenant, actor=Actor.system(), action="test.one")
    log = tmp_path / "worker.log"
    with celery_worker(log) as worker:
        verify_chains.apply_async(queue=worker.queue)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if AuditEvent.objects.filter(chain="vendor", action="audit.verify").exists():
                break
            time.sleep(0.2)
        else:
            pytest.fail("the worker did not run the task in 60 s:\n" + log.read_text())
    event = AuditEvent.objects.get(chain="vendor", action="audit.verify")
    assert event.outcome == "success"
    assert event.actor_display == "audit verifier"
    assert "audit.verify_chains" in log.read_text()
