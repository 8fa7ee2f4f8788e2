"""The closing table of `make bench`: every target, the figure measured, met or missed.

scripts/bench.sh pipes the whole run's output here. Each target names a
`BENCH` line (a glob when one target covers several lines, such as every
audit viewer scenario) and the bound the product promises; a line that no
benchmark printed is reported as not measured, never as met.
"""

from __future__ import annotations

import fnmatch
import operator
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

LINE = re.compile(
    r"^BENCH (?P<name>[a-z0-9_]+) (?P<value>-?[0-9.]+(?:e[-+]?[0-9]+)?) (?P<unit>.*)$"
)


@dataclass(frozen=True)
class Target:
    pattern: str
    compare: str  # ">=" or "<="
    bound: float
    what: str

    def met(self, value: float) -> bool:
        check: Callable[[float, float], bool] = operator.ge if self.compare == ">=" else operator.le
        return check(value, self.bound)


TARGETS = (
    Target("field_encrypt_vs_tink", ">=", 1.0, "field encrypt against Tink's AEAD"),
    Target("field_decrypt_vs_tink", ">=", 1.0, "field decrypt against Tink's AEAD"),
    Target("field_encrypt_many_vs_tink", ">=", 1.5, "batch encrypt against Tink per call"),
    Target("field_decrypt_many_vs_tink", ">=", 1.5, "batch decrypt against Tink per call"),
    Target("ingest_vs_bare", ">=", 0.6, "single creates against the bare stack"),
    Target("reencrypt_rows_per_s", ">=", 250_000, "re-encryption, rows/s on two workers"),
    Target("reencrypt_vs_nocrypto", ">=", 0.8, "re-encryption against the job without crypto"),
    Target("kek_rewrap_deks_per_s", ">=", 1_000, "confirmed rotation, DEKs rewrapped/s"),
    Target("kek_rewrap_with_1m_records_ratio", "<=", 1.1, "rotation time with 1M records"),
    Target("health_checks_per_s", ">=", 500, "health checks/s at 10,000 tenants"),
    Target("keys_page_p95_ms", "<=", 150, "Keys page p95, 1,000 DEKs"),
    Target("data_page_p95_ms", "<=", 150, "Data page p95, 1M records"),
    Target("overview_page_p95_ms", "<=", 150, "Overview page p95"),
    Target("support_console_p95_ms", "<=", 150, "support console p95, 10,000 tenants"),
    Target("object_put_rss_mib", "<=", 64, "RSS growth, 1 GiB upload"),
    Target("object_get_rss_mib", "<=", 64, "RSS growth, 1 GiB download"),
    Target("migrate_vs_plain_copy", ">=", 0.95, "object move against a plain copy"),
    Target("object_encrypt_vs_raw_gcm", ">=", 0.95, "object segments against raw AES-GCM"),
    Target("object_decrypt_vs_raw_gcm", ">=", 0.95, "object segments against raw AES-GCM"),
    Target("audit_*_p95", "<=", 10, "audit viewer p95 at 1M events, each scenario"),
)


def bound(pattern: str) -> float:
    """The bound of the target `pattern`: what each benchmark prints its own verdict
    against, so that its line and this table never disagree."""
    return next(target.bound for target in TARGETS if target.pattern == pattern)


def figures(lines: Iterable[str]) -> dict[str, tuple[float, str]]:
    """The last value of each BENCH line (a benchmark run twice reports its last run)."""
    found: dict[str, tuple[float, str]] = {}
    for line in lines:
        match = LINE.match(line.strip())
        if match:
            found[match["name"]] = (float(match["value"]), match["unit"].strip())
    return found


def table(found: dict[str, tuple[float, str]]) -> list[str]:
    rows = [f"{'target':<34} {'figure':>14}  {'aim':<10} verdict", "-" * 72]
    for target in TARGETS:
        names = sorted(n for n in found if fnmatch.fnmatchcase(n, target.pattern))
        aim = f"{target.compare} {target.bound:g}"
        if not names:
            rows.append(f"{target.pattern:<34} {'-':>14}  {aim:<10} NOT MEASURED ({target.what})")
            continue
        for name in names:
            value, unit = found[name]
            verdict = "met" if target.met(value) else "MISSED"
            shown = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
            rows.append(f"{name:<34} {shown:>10} {unit:<3} {aim:<10} {verdict} ({target.what})")
    return rows


def main() -> int:
    found = figures(sys.stdin)
    print("== targets")
    for row in table(found):
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
