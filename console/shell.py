"""What every page of a tenant asks before its content, in one query.

Every page carries the live poller (the chain's length, whether a data job
runs) and three banners that are almost always absent (an uploaded key about
to expire, a paused audit stream, vendor support's access). Asked one by one
they were five round trips and about 4 ms of every page view; here each app's
own selector is a subquery of one SELECT, and only a banner that is there is
read again, whole, by that selector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from django.db.models import Exists, Subquery

from audit.selectors import chain_length
from audit.streaming.selectors import paused_streams
from keys.consumers import open_data_jobs
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


def shell_facts(tenant: Tenant) -> ShellFacts:
    jobs = {f"jobs_{n}": Exists(query) for n, query in enumerate(open_data_jobs(tenant))}
    row = cast(
        "dict[str, Any] | None",
        Tenant.objects.filter(pk=tenant.pk)
        .values(
            position=Subquery(chain_length(tenant)[:1]),
            key_expiring=Exists(expiring_versions(tenant)),
            stream_paused=Exists(paused_streams(tenant)),
            support_open=Exists(support_access_open(tenant)),
            **jobs,
        )
        .first(),
    )
    if row is None:  # the tenant was deleted under the request
        return ShellFacts(0, False, False, False, False)
    return ShellFacts(
        chain_position=int(row["position"] or 0),
        jobs_open=any(row[name] for name in jobs),
        key_expiring=row["key_expiring"],
        stream_paused=row["stream_paused"],
        support_access=row["support_open"],
    )
