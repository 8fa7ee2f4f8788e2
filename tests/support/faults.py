"""How hard the fault, crash and hostile-input tests push: `make test` or `make faults`.

`make test` must stay under twenty minutes on two cores, so each fault test
runs a short version there (a few kills, a few injected faults). `make faults`
sets KEYWARD_TEST_FAULTS=full and runs every test marked `faults` at the size
the reliability figures quote (at least ten kills per task). Seeds are printed
by the tests themselves so that a failure in either run can be replayed.
"""

from __future__ import annotations

import os
import random

FULL = os.environ.get("KEYWARD_TEST_FAULTS", "short") == "full"


def scale(short: int, full: int) -> int:
    """`short` in `make test`, `full` in `make faults`."""
    return full if FULL else short


def seeded(name: str) -> random.Random:
    """A random source whose seed is printed (and can be forced to replay a failure).

    KEYWARD_TEST_SEED=<n> replays a run; without it each run picks its own.
    """
    forced = os.environ.get("KEYWARD_TEST_SEED")
    seed = int(forced) if forced else random.SystemRandom().randrange(2**32)
    print(f"{name}: seed {seed} (replay with KEYWARD_TEST_SEED={seed})")
    return random.Random(seed)
