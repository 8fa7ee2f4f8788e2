"""Synthetic devices and users, for the demo and the benchmarks."""

from __future__ import annotations

import random
from collections.abc import Iterator

from records.fields import NewRecord

_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Radia", "Linus", "Frances", "Donald"]
_LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Perlman", "Allen"]


def _sid(rng: random.Random) -> str:
    return (
        "S-1-5-21-"
        + "-".join(str(rng.randrange(10**9)) for _ in range(3))
        + f"-{rng.randrange(1000, 99999)}"
    )


def synthetic_records(n: int, *, seed: int = 7, prefix: str = "") -> Iterator[NewRecord]:
    rng = random.Random(seed)
    for i in range(n):
        if i % 2:
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            login = f"{first}.{last}{i}".lower()
            yield NewRecord(
                "user",
                f"{prefix}user-{i}",
                {
                    "sid": _sid(rng),
                    "name": login,
                    "entra_name": f"{first} {last}",
                    "email": f"{login}@example.com",
                    "distinguished_name": f"CN={first} {last},OU=Staff,DC=example,DC=com",
                    "full_name": f"{first} {last}",
                    "cloud_sid": _sid(rng),
                    "user_principal_name": f"{login}@example.onmicrosoft.com",
                    "onprem_sid": _sid(rng),
                },
            )
        else:
            host = f"LT-{rng.randrange(16**6):06X}"
            yield NewRecord(
                "device",
                f"{prefix}device-{i}",
                {
                    "sid": _sid(rng),
                    "name": host,
                    "distinguished_name": f"CN={host},OU=Laptops,DC=example,DC=com",
                    "bios_serial": f"BIOS{rng.randrange(10**10):010d}",
                    "chassis_serial": f"CH{rng.randrange(10**10):010d}",
                    "machine_serial": f"MS{rng.randrange(10**10):010d}",
                    "hardware_product_id": f"{rng.randrange(16**8):08X}",
                    "public_ip": f"203.0.113.{rng.randrange(1, 255)}",
                    "local_admins": "Administrator;helpdesk",
                },
            )
