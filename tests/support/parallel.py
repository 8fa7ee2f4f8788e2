"""Each pytest-xdist worker gets its own data folder and Redis database.

Loaded with `-p tests.support.parallel` (scripts/test.sh), so that it runs
before pytest-django imports the settings: the settings read KEYWARD_DATA_DIR
and REDIS_URL once, at import. The test database needs nothing here:
pytest-django already gives each worker its own (`test_keyward_gw0`, ...).
Without xdist, or in xdist's controller process, nothing changes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")

if _WORKER:
    number = int(_WORKER.removeprefix("gw"))
    base = Path(os.environ.get("KEYWARD_DATA_DIR", "data/test")).resolve()
    os.environ["KEYWARD_DATA_DIR"] = f"{base}-{_WORKER}"
    redis_url = os.environ.get("REDIS_URL", "")
    if redis_url:
        # redis://host:port/N: worker k uses database N + 1 + k, never the one
        # a run without xdist (or the servers' own users) would use.
        match = re.fullmatch(r"(?P<server>redis://[^/]+)(?:/(?P<db>\d+))?", redis_url)
        if match is None:
            raise RuntimeError(f"REDIS_URL is not redis://host:port/N: {redis_url!r}")
        os.environ["REDIS_URL"] = f"{match['server']}/{int(match['db'] or 0) + 1 + number}"
