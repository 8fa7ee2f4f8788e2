"""Live tenant pages: one small poll per open page, and a refresh of what it shows
when the tenant changed.

Every page of a tenant carries a poller (templates/console/_live.html) that
asks `/t/<slug>/live/?seen=<fingerprint>`: the same fingerprint is answered
204 No Content (htmx leaves the page alone); a new one is answered with a new
poller and the `kw-changed` event, on which the page's live region (banner
and content) is fetched again and swapped in place, without a reload.

The fingerprint is the tenant's state, its key epoch and the length of its
audit chain: every action, job end and state change of a tenant records an
event, so it moves with everything a page shows but progress counters, which
the progress sections follow on their own. The poll runs every second while
something moves (a key or data move, a re-encryption) and every 2 s
otherwise, so a change made elsewhere (another administrator, the health
check) shows within about 2 s; an unchanged answer is a 204 from one indexed
read, cheap enough for every open tab.
"""

from __future__ import annotations

from audit.selectors import chain_position
from keys.consumers import open_data_jobs
from tenants.display import display_of
from tenants.models import Tenant

FAST_SECONDS = 1
SLOW_SECONDS = 2


def fingerprint_of(tenant: Tenant, position: int) -> str:
    """The fingerprint, given the length of the tenant's chain."""
    return f"{tenant.state}.{tenant.key_epoch}.{position}"


def pace_of(tenant: Tenant, *, jobs_open: bool) -> int:
    """Seconds between polls: fast while the tenant's keys or data move."""
    return FAST_SECONDS if display_of(tenant).moving or jobs_open else SLOW_SECONDS


def live_fingerprint(tenant: Tenant) -> str:
    return fingerprint_of(tenant, chain_position(tenant))


def live_pace(tenant: Tenant) -> int:
    return pace_of(tenant, jobs_open=any(jobs.exists() for jobs in open_data_jobs(tenant)))
