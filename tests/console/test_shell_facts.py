"""The page shell's facts, read in one query, say what each app's own selector says."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import StreamDestination, StreamKind, StreamState
from audit.services import Actor, record
from audit.streaming.selectors import paused_stream
from console import shell
from console.live import FAST_SECONDS, SLOW_SECONDS, fingerprint_of, live_fingerprint, live_pace
from console.shell import ShellFacts, compiled, shell_facts, shell_query, statement_for
from keys.models import DataKey, DekState
from records.models import JobState, ReencryptionJob
from tenants.selectors import support_access_now
from tests.conftest import login
from tests.support.embedded import run_embedded
from tests.tenants.test_access import ask

pytestmark = pytest.mark.django_db


def agrees(tenant: Any) -> ShellFacts:
    with CaptureQueriesContext(connection) as run:
        facts = shell_facts(tenant)
    assert len(run) == 1
    assert fingerprint_of(tenant, facts.chain_position) == live_fingerprint(tenant)
    assert (FAST_SECONDS if facts.jobs_open else SLOW_SECONDS) == live_pace(tenant)
    assert facts.stream_paused == (paused_stream(tenant) is not None)
    assert facts.support_access == (support_access_now(tenant) is not None)
    return facts


def test_nothing_to_show(acme) -> None:
    facts = agrees(acme.tenant)
    assert facts == ShellFacts(facts.chain_position, False, False, False, False)


def test_the_chain_position_follows_every_event(acme) -> None:
    before = agrees(acme.tenant).chain_position
    assert before > 0  # the tenant's creation and its members are in the trail
    record(tenant=acme.tenant, actor=Actor.system("tests"), action="key.test")
    assert agrees(acme.tenant).chain_position == before + 1


def test_a_paused_stream(acme) -> None:
    destination = StreamDestination.objects.create(
        tenant=acme.tenant, kind=StreamKind.SYSLOG, host="siem.acme.test", port=6514
    )
    assert not agrees(acme.tenant).stream_paused  # active
    destination.state = StreamState.PAUSED
    destination.save()
    assert agrees(acme.tenant).stream_paused


def test_support_access_asked_and_granted(acme, globex, support) -> None:
    ask(globex.tenant, support)  # another tenant's request is not this one's banner
    assert not agrees(acme.tenant).support_access
    ask(acme.tenant, support)
    assert agrees(acme.tenant).support_access
    assert agrees(globex.tenant).support_access


def test_an_open_data_job_makes_the_poller_fast(acme) -> None:
    dek = DataKey.objects.get(tenant=acme.tenant, state=DekState.ACTIVE)
    job = ReencryptionJob.objects.create(tenant=acme.tenant, target_dek=dek)
    assert agrees(acme.tenant).jobs_open  # queued
    states = ((JobState.RUNNING, True), (JobState.DONE, False), (JobState.FAILED, False))
    for state, open_ in states:
        job.state = state
        job.save()
        assert agrees(acme.tenant).jobs_open is open_, state


def test_a_tenant_page_reads_the_shell_in_one_query(acme) -> None:
    client = login(acme.owner)
    client.get("/t/acme/")
    with CaptureQueriesContext(connection) as run:
        body = client.get("/t/acme/").content.decode()
    shell = [q["sql"] for q in run if "audit_auditchain" in q["sql"] and "EXISTS" in q["sql"]]
    assert len(shell) == 1, [q["sql"] for q in run]
    assert 'data-testid="live-poll"' in body


def test_the_statement_compiled_once_is_the_one_the_orm_builds(acme, globex) -> None:
    """Each tenant's parameters put where the probe's stand give exactly the ORM's own
    statement for that tenant: no parameter still names the probe, none is missed."""
    statement = statement_for()
    for tenant in (acme.tenant, globex.tenant):
        sql, params = compiled(shell_query(tenant))
        assert statement.sql == sql
        assert statement.bind(tenant.pk) == params
        assert str(tenant.pk) in map(str, params)
    probe = statement.probe
    assert any(str(p) in (str(probe), probe.hex) for p in statement.params)
    assert not {str(acme.tenant.pk), acme.tenant.pk.hex} & set(map(str, statement.params))


def test_one_tenants_facts_are_not_anothers(acme, globex) -> None:
    """The cached statement serves both tenants, each with its own answers."""
    destination = StreamDestination.objects.create(
        tenant=globex.tenant, kind=StreamKind.SYSLOG, host="siem.globex.test", port=6514
    )
    destination.state = StreamState.PAUSED
    destination.save()
    dek = DataKey.objects.get(tenant=acme.tenant, state=DekState.ACTIVE)
    ReencryptionJob.objects.create(tenant=acme.tenant, target_dek=dek)
    record(tenant=globex.tenant, actor=Actor.system("tests"), action="key.test")
    first, second = agrees(acme.tenant), agrees(globex.tenant)
    assert (first.jobs_open, first.stream_paused) == (True, False)
    assert (second.jobs_open, second.stream_paused) == (False, True)
    assert second.chain_position != first.chain_position


def test_the_facts_on_the_embedded_sqlite_database(tmp_path) -> None:
    """`make run`'s database keeps UUIDs as hex and times as text: the statement
    compiled once still answers what the selectors answer there, the database's
    clock included (a key 6 days from expiry warns, 40 days does not)."""
    found = run_embedded("tests.console.embedded_shell", tmp_path)
    assert found["vendor"] == "sqlite"
    for moment in ("before", "after", "expired"):
        for slug, seen in found[moment].items():
            assert seen["facts"] == seen["selectors"], (moment, slug)
            assert seen["same_statement"], (moment, slug)
    # expiring, stream paused, support access, a job open
    assert found["before"]["acme"]["facts"][1:] == [True, False, False, True]
    assert found["after"]["acme"]["facts"][1:] == [False, False, False, True]
    assert found["expired"]["acme"]["facts"][1:] == [False, False, False, True]
    assert found["before"]["globex"]["facts"][1:] == [False, True, True, False]


@pytest.mark.parametrize(
    "reads",
    [
        pytest.param(lambda t: {"key__gt": t.pk.hex[:8]}, id="the id in another form"),
        pytest.param(lambda t: {"key__gt": t.slug}, id="another field of the tenant"),
        pytest.param(lambda t: {"key__gt": str(t.state)}, id="the tenant's state"),
    ],
)
def test_a_statement_that_cannot_be_bound_once_is_refused(acme, monkeypatch, reads) -> None:
    """Were a selector to read more of the tenant than its id, or the id in a form
    the binding does not know, the shell would say so at its first page instead
    of showing every tenant the probe's answers."""
    real = shell.chain_length
    monkeypatch.setattr(shell, "chain_length", lambda t: real(t).filter(**reads(t)))
    shell.compile_statement.cache_clear()
    try:
        with pytest.raises(ImproperlyConfigured, match="more than the tenant's id"):
            shell_facts(acme.tenant)
    finally:
        monkeypatch.undo()
        shell.compile_statement.cache_clear()
    assert shell_facts(acme.tenant).chain_position > 0  # built again, as it should be
