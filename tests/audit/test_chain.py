from __future__ import annotations

import threading
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, connections, transaction

from audit.models import AuditChain, AuditEvent
from audit.services import Actor, audit_verify_chain, chain_key, record
from tenants.models import Tenant


@pytest.fixture
def tenant(db: None) -> Tenant:
    return Tenant.objects.create(name="Initech", slug="initech")


def test_events_chain_by_hash(tenant: Tenant) -> None:
    first = record(tenant=tenant, actor=Actor.system(), action="test.one")
    second = record(tenant=tenant, actor=Actor.system(), action="test.two", details={"n": 1})
    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == "0" * 64
    assert second.prev_hash == first.hash
    assert audit_verify_chain(chain_key(tenant)) is None


def test_vendor_events_have_their_own_chain(tenant: Tenant) -> None:
    record(tenant=tenant, actor=Actor.system(), action="test.tenant")
    vendor = record(tenant=None, actor=Actor.system(), action="test.vendor")
    assert vendor.chain == "vendor"
    assert vendor.seq == 1


def test_an_event_rolled_back_with_its_transaction_leaves_no_gap(tenant: Tenant) -> None:
    record(tenant=tenant, actor=Actor.system(), action="test.kept")
    with pytest.raises(RuntimeError), transaction.atomic():
        record(tenant=tenant, actor=Actor.system(), action="test.rolled_back")
        raise RuntimeError
    again = record(tenant=tenant, actor=Actor.system(), action="test.kept")
    assert again.seq == 2
    assert audit_verify_chain(chain_key(tenant)) is None


@pytest.mark.django_db(transaction=True)
def test_parallel_writers_never_fork_or_gap_the_chain() -> None:
    assert connection.vendor == "postgresql"
    tenant = Tenant.objects.create(name="Parallel", slug="parallel")
    writers, per_writer = 8, 25
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_writer):
                record(tenant=tenant, actor=Actor.system(f"writer {n}"), action=f"test.w{i}")
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    seqs = list(AuditEvent.objects.filter(chain=chain_key(tenant)).values_list("seq", flat=True))
    assert sorted(seqs) == list(range(1, writers * per_writer + 1))
    hashes = AuditEvent.objects.filter(chain=chain_key(tenant)).values_list("prev_hash", flat=True)
    assert len(set(hashes)) == writers * per_writer  # no two events share a parent: no fork
    assert audit_verify_chain(chain_key(tenant)) is None
    assert AuditChain.objects.get(key=chain_key(tenant)).last_seq == writers * per_writer


def test_the_database_refuses_update_and_delete(tenant: Tenant) -> None:
    event = record(tenant=tenant, actor=Actor.system(), action="test.one")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(outcome="failure")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.get(pk=event.pk).outcome == "success"


def _behind_the_triggers_back(sql: str, params: list[str]) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no pending checks may block ALTER
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER USER")
        cursor.execute(sql, params)
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER USER")


def test_audit_verify_names_an_altered_row(tenant: Tenant) -> None:
    for i in range(5):
        record(tenant=tenant, actor=Actor.system(), action=f"test.e{i}")
    _behind_the_triggers_back(
        "UPDATE audit_auditevent SET reason = 'edited' WHERE chain = %s AND seq = 3",
        [chain_key(tenant)],
    )
    out = StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("audit_verify", "--tenant", "initech", stdout=out)
    assert excinfo.value.returncode == 1
    assert "BROKEN  initech: event #3: content does not match its hash (altered)" in out.getvalue()


def test_audit_verify_names_a_deleted_row(tenant: Tenant) -> None:
    for i in range(5):
        record(tenant=tenant, actor=Actor.system(), action=f"test.e{i}")
    _behind_the_triggers_back(
        "DELETE FROM audit_auditevent WHERE chain = %s AND seq = 2", [chain_key(tenant)]
    )
    link = audit_verify_chain(chain_key(tenant))
    assert link is not None and link.seq == 2 and "missing" in link.problem


def test_audit_verify_notices_a_cut_off_tail(tenant: Tenant) -> None:
    for i in range(3):
        record(tenant=tenant, actor=Actor.system(), action=f"test.e{i}")
    _behind_the_triggers_back(
        "DELETE FROM audit_auditevent WHERE chain = %s AND seq = 3", [chain_key(tenant)]
    )
    link = audit_verify_chain(chain_key(tenant))
    assert link is not None and link.seq == 3


def test_audit_verify_passes_every_intact_chain(tenant: Tenant) -> None:
    record(tenant=tenant, actor=Actor.system(), action="test.one")
    record(tenant=None, actor=Actor.system(), action="test.vendor")
    out = StringIO()
    call_command("audit_verify", stdout=out)
    assert "ok      initech" in out.getvalue()
    assert "ok      vendor" in out.getvalue()


def test_audit_verify_rejects_an_unknown_tenant(db: None) -> None:
    with pytest.raises(CommandError, match="No tenant with the slug 'nope'"):
        call_command("audit_verify", "--tenant", "nope")


def test_event_times_never_go_backwards_even_if_the_clock_does(tenant: Tenant, monkeypatch) -> None:
    from datetime import timedelta

    from django.utils import timezone

    first = record(tenant=tenant, actor=Actor.system(), action="test.one")
    earlier = first.time - timedelta(hours=1)
    monkeypatch.setattr(timezone, "now", lambda: earlier)  # a server whose clock stepped back
    second = record(tenant=tenant, actor=Actor.system(), action="test.two")
    assert second.time == first.time
    assert audit_verify_chain(chain_key(tenant)) is None


def test_audit_verify_notices_time_running_backwards(tenant: Tenant) -> None:
    for i in range(3):
        record(tenant=tenant, actor=Actor.system(), action=f"test.e{i}")
    _behind_the_triggers_back(
        "UPDATE audit_auditevent SET time = time - interval '1 day' WHERE chain = %s AND seq = 3",
        [chain_key(tenant)],
    )
    link = audit_verify_chain(chain_key(tenant))
    assert link is not None and link.seq == 3


def test_a_chain_from_before_last_time_is_held_to_its_newest_event(
    tenant: Tenant, monkeypatch
) -> None:
    """Migration 0005 fills the head's last time of a chain made before it existed,
    so the chain's next event cannot go below its newest one."""
    from datetime import timedelta
    from importlib import import_module

    from django.utils import timezone

    newest = record(tenant=tenant, actor=Actor.system(), action="test.one")
    AuditChain.objects.filter(key=chain_key(tenant)).update(last_time=None)  # as before 0003
    with connection.cursor() as cursor:
        cursor.execute(import_module("audit.migrations.0005_chain_last_time_filled").FILL)
    assert AuditChain.objects.get(key=chain_key(tenant)).last_time == newest.time
    monkeypatch.setattr(timezone, "now", lambda: newest.time - timedelta(hours=1))
    assert record(tenant=tenant, actor=Actor.system(), action="test.two").time == newest.time
