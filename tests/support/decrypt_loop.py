"""A separate process that keeps decrypting one record and reports what happens.

Prints `ok` after each success and `denied <time> <error>` at the first
failure, then exits. Used to measure how fast a revoke reaches another
process. With a fourth argument `keep` it goes on after a failure, printing
`ok <time>` or `denied <time> <error>` for every attempt: to show that a
revoke stays enforced (across a Redis restart, for one).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# Run as a script, Python puts this folder first on the path, where kmip.py
# would shadow PyKMIP's `kmip` package: the project's root takes its place.
sys.path.pop(0)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

import django

django.setup()

from records.models import Record  # noqa: E402
from records.services import record_fields  # noqa: E402
from tenants.models import Tenant  # noqa: E402


def main(slug: str, uid: str, interval: float, keep: bool = False) -> None:
    tenant = Tenant.objects.get(slug=slug)
    record = Record.objects.get(uid=uid)
    while True:
        try:
            record_fields(tenant, record)
        except Exception as exc:
            print(f"denied {time.time():.6f} {type(exc).__name__}", flush=True)
            if not keep:
                return
        else:
            print(f"ok {time.time():.6f}" if keep else "ok", flush=True)
        time.sleep(interval)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:] == ["keep"])
