"""What every page of a tenant asks before its content, in one query.

Every page carries the live poller (the chain's length, whether a data job
runs) and three banners that are almost always absent (an uploaded key about
to expire, a paused audit stream, vendor support's access). Asked one by one
they were five round trips and about 4 ms of every page view; here each app's
own selector is a subquery of one SELECT, and only a banner that is there is
read again, whole, by that selector.

Building and compiling that SELECT through the ORM cost three times what the
database takes to answer it, on every page. So it is built once per process,
for a probe tenant that exists nowhere, with the database's own clock (`Now()`)
as the selectors' now: the tenant is then the statement's only variable, and
each page puts its tenant's id where the probe's stands, in whichever form
the statement carries it (the UUID; its text, as the audit chain's key; its
hex digits, as SQLite stores a UUID). The probe is a tenant with its id alone,
so a selector that reads any other field of it fails the first build, as does
one that carries the id in another form.
tests/console/test_shell_facts.py checks that this gives exactly the
statement the ORM builds for the tenant itself.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.models import Exists, QuerySet, Subquery
from django.db.models.functions import Now

from audit.selectors import chain_length
from audit.streaming.selectors import paused_streams
from keys.consumers import consumers, open_data_jobs
from keys.expiry import expiring_versions
from tenants.models import Tenant
from tenants.selectors import support_access_open


@dataclass(frozen=True)
class ShellFacts:
    chain_position: int
    jobs_open: bool
    key_expiring: bool
    stream_paused: bool
    support_access: bool


@dataclass(frozen=True)
class _Statement:
    sql: str
    params: tuple[Any, ...]
    probe: uuid.UUID

    def bind(self, tenant_id: uuid.UUID) -> tuple[Any, ...]:
        """The parameters with `tenant_id` where the probe's id stands, in each form."""
        probe = self.probe
        forms: dict[Any, Any] = {probe: tenant_id, str(probe): str(tenant_id)}
        forms[probe.hex] = tenant_id.hex  # how SQLite stores a UUID
        return tuple(forms.get(p, p) if isinstance(p, str | uuid.UUID) else p for p in self.params)


def shell_query(tenant: Tenant) -> QuerySet[Any]:
    """The one SELECT of the shell's facts, built by the ORM from each app's selector."""
    now = Now()
    jobs = {f"jobs_{n}": Exists(query) for n, query in enumerate(open_data_jobs(tenant))}
    return (
        Tenant.objects.filter(pk=tenant.pk)
        .order_by()
        .values(
            position=Subquery(chain_length(tenant)[:1]),
            key_expiring=Exists(expiring_versions(tenant, now=now)),
            stream_paused=Exists(paused_streams(tenant)),
            support_open=Exists(support_access_open(tenant, now=now)),
            **jobs,
        )[:1]
    )


def compiled(query: QuerySet[Any]) -> tuple[str, tuple[Any, ...]]:
    sql, params = query.query.get_compiler(connection=connection).as_sql()
    return sql, tuple(params)


def _probe(tenant_id: uuid.UUID) -> Tenant:
    """A tenant that is its id alone: any other field a selector reads is fetched
    from the database, where no such tenant is, and fails the build."""
    return Tenant.from_db(connection.alias, ["id"], [tenant_id])


@lru_cache(maxsize=4)
def compile_statement(vendor: str, with_jobs: tuple[Any, ...]) -> _Statement:
    """The statement for this database and these data consumers' open-jobs queries
    (they register at start); `cache_clear` forgets it."""
    probe = uuid.uuid4()
    try:
        sql, params = compiled(shell_query(_probe(probe)))
        statement = _Statement(sql, params, probe)
        # A selector that came to depend on the tenant's id in another form
        # would make a page show another tenant's answers, here the probe's:
        # refuse to serve rather than be wrong.
        other = uuid.uuid4()
        if compiled(shell_query(_probe(other))) != (sql, statement.bind(other)):
            raise ImproperlyConfigured("it carries the tenant's id in a form it cannot bind")
    except (Tenant.DoesNotExist, ImproperlyConfigured) as exc:
        raise ImproperlyConfigured(
            "the page shell's statement depends on more than the tenant's id; "
            f"console/shell.py cannot bind it once for every tenant ({exc})"
        ) from None
    return statement


def statement_for() -> _Statement:
    """The statement for the database in use and the data consumers registered."""
    with_jobs = tuple((c.name, c.open_jobs) for c in consumers() if c.open_jobs is not None)
    return compile_statement(connection.vendor, with_jobs)


def shell_facts(tenant: Tenant) -> ShellFacts:
    statement = statement_for()
    with connection.cursor() as cursor:
        cursor.execute(statement.sql, statement.bind(uuid.UUID(str(tenant.pk))))
        row = cursor.fetchone()
        names = [column[0] for column in cursor.description]
    if row is None:  # the tenant was deleted under the request
        return ShellFacts(0, False, False, False, False)
    facts = dict(zip(names, row, strict=True))
    return ShellFacts(
        chain_position=int(facts["position"] or 0),
        jobs_open=any(value for name, value in facts.items() if name.startswith("jobs_")),
        key_expiring=bool(facts["key_expiring"]),
        stream_paused=bool(facts["stream_paused"]),
        support_access=bool(facts["support_open"]),
    )
