"""Field encryption through the envelope against Tink and raw AES-256-GCM, in one process.

Framework-free: imports crypto.envelope (and through it keys/__init__.py,
crypto.ciphertext and crypto.dekcache) and nothing of Django. Run from the
repository root:

    .venv/bin/python bench/bench_envelope.py            # the figures
    .venv/bin/python bench/bench_envelope.py --profile  # plus a cProfile of encrypt/decrypt

The machine is shared, so every figure comes from ROUNDS (BENCH_ENVELOPE_ROUNDS)
interleaved rounds of OPS (BENCH_ENVELOPE_OPS) operations on 32-byte values:
in each round every contender runs once, back to back, so a ratio is taken
between runs a few milliseconds apart. Rates are medians over the rounds,
ratios the median of the per-round ratios.

- tink: what a user would pick instead, Tink's AEAD primitive (PyPI `tink`,
  C++ underneath) from an AES256_GCM keyset, encrypt/decrypt with associated
  data as long as the envelope's. It has one key for everything: no tenants,
  no epoch check, no binding to a record, no encryption count.
  scripts/bench.sh installs it (constraints.txt pins it); it is never a
  runtime dependency. Without it, no ratio to Tink is printed and the
  benchmark exits non-zero.
- raw: AESGCM.encrypt / decrypt with one key, a distinct random 12-byte nonce
  per call drawn before the timed loop, so the baseline is AES-GCM alone.
- field: Envelope.encrypt / decrypt through the public API, warm DEK cache,
  constant tenant state, a reserve callback that grants everything, and a
  realistic binding (tenant uuid, kind "user", field "email", record uuid).
- field_*_many: Envelope.encrypt_many / decrypt_many over a page of PAGE
  records of one tenant, each with its own record id, per record.
- unwraps: loader calls during 1,000,000 encryptions round-robin over 100
  tenants with a 300 s TTL, from a warm cache and from a cold one.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from crypto.ciphertext import binding, header  # noqa: E402
from crypto.dekcache import DekCache, LoadedKey  # noqa: E402
from crypto.envelope import Envelope, TenantKeyState  # noqa: E402

OPS = int(os.environ.get("BENCH_ENVELOPE_OPS", "20000"))
ROUNDS = int(os.environ.get("BENCH_ENVELOPE_ROUNDS", "15"))
PAGE = 100  # records per encrypt_many / decrypt_many call: the API's default page
VALUE_SIZE = 32
KIND, FIELD = "user", "email"
TTL = 300.0
TENANTS = 100
ENCRYPTIONS = 1_000_000
TARGET_VS_TINK = 1.0
TARGET_MANY_VS_TINK = 1.5
DEK_ID = 4_242


class ConstantStates:
    """Every tenant is active, at epoch 1, writing under its own current DEK."""

    def __init__(self, dek_ids: dict[str, int] | None = None) -> None:
        self.dek_ids = dek_ids or {}

    def fetch(self, tenant_id: str) -> TenantKeyState:
        return TenantKeyState(epoch=1, current_dek_id=self.dek_ids.get(tenant_id, DEK_ID))


class RandomKeys:
    """A loader that 'unwraps' a random DEK per (tenant, DEK id) and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self._material: dict[tuple[str, int], bytes] = {}

    def __call__(self, tenant_id: str, dek_id: int) -> LoadedKey:
        self.calls += 1
        material = self._material.setdefault((tenant_id, dek_id), AESGCM.generate_key(256))
        return LoadedKey(material, TTL)


def grant_all(tenant_id: str, dek_id: int, wanted: int) -> int:
    return wanted


def never_exhausted(tenant_id: str, dek_id: int) -> None:
    raise AssertionError("the benchmark's reserve callback grants everything")


def make_envelope(states: ConstantStates, keys: RandomKeys) -> Envelope:
    return Envelope(
        cache=DekCache(keys),
        states=states,
        reserve=grant_all,
        on_exhausted=never_exhausted,
    )


def rate(run: Callable[[], None], ops: int) -> float:
    start = time.perf_counter()
    run()
    return ops / (time.perf_counter() - start)


def tink_aead() -> Any:
    """Tink's AEAD primitive on a fresh AES256_GCM keyset, or None when tink is not installed."""
    try:
        # A benchmark-only dependency: absent from the runtime, so imported here.
        import tink
        from tink import aead
    except ImportError:
        return None
    aead.register()
    handle = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM)
    return handle.primitive(aead.Aead)


def measure_rates(tink: Any) -> tuple[dict[str, float], dict[str, float]]:
    """(median rate per contender, median per-round ratio per figure)."""
    tenant = str(uuid.uuid4())
    records = [str(uuid.uuid4()) for _ in range(PAGE)]
    record = records[0]
    value = os.urandom(VALUE_SIZE)
    env = make_envelope(ConstantStates(), RandomKeys())
    encrypt, decrypt = env.encrypt, env.decrypt
    encrypt_many, decrypt_many = env.encrypt_many, env.decrypt_many
    blob = encrypt(tenant, KIND, FIELD, record, value)  # warms state, DEK cache, budget
    assert decrypt(tenant, KIND, FIELD, record, blob) == value
    page = [(KIND, FIELD, r, value) for r in records]
    sealed_page = [
        (KIND, FIELD, r, b) for r, b in zip(records, encrypt_many(tenant, page), strict=True)
    ]
    assert decrypt_many(tenant, sealed_page) == [value] * PAGE
    pages = range(OPS // PAGE)

    aead = AESGCM(AESGCM.generate_key(256))
    aad = os.urandom(len(header(DEK_ID) + binding(tenant, KIND, FIELD, record)))
    nonces = [os.urandom(12) for _ in range(OPS)]
    raw_blob = aead.encrypt(nonces[0], value, aad)
    loop = range(OPS)

    def raw_encrypt() -> None:
        seal = aead.encrypt
        for nonce in nonces:
            seal(nonce, value, aad)

    def raw_decrypt() -> None:
        open_, nonce = aead.decrypt, nonces[0]
        for _ in loop:
            open_(nonce, raw_blob, aad)

    def field_encrypt() -> None:
        for _ in loop:
            encrypt(tenant, KIND, FIELD, record, value)

    def field_decrypt() -> None:
        for _ in loop:
            decrypt(tenant, KIND, FIELD, record, blob)

    def field_encrypt_many() -> None:
        for _ in pages:
            encrypt_many(tenant, page)

    def field_decrypt_many() -> None:
        for _ in pages:
            decrypt_many(tenant, sealed_page)

    runs: dict[str, Callable[[], None]] = {
        "raw_encrypt": raw_encrypt,
        "raw_decrypt": raw_decrypt,
        "field_encrypt": field_encrypt,
        "field_decrypt": field_decrypt,
        "field_encrypt_many": field_encrypt_many,
        "field_decrypt_many": field_decrypt_many,
    }
    ratios = {
        "field_encrypt_vs_raw": ("field_encrypt", "raw_encrypt"),
        "field_decrypt_vs_raw": ("field_decrypt", "raw_decrypt"),
    }
    if tink is not None:
        tink_blob = tink.encrypt(value, aad)

        def tink_encrypt() -> None:
            seal = tink.encrypt
            for _ in loop:
                seal(value, aad)

        def tink_decrypt() -> None:
            open_ = tink.decrypt
            for _ in loop:
                open_(tink_blob, aad)

        runs["tink_encrypt"] = tink_encrypt
        runs["tink_decrypt"] = tink_decrypt
        ratios |= {
            "field_encrypt_vs_tink": ("field_encrypt", "tink_encrypt"),
            "field_decrypt_vs_tink": ("field_decrypt", "tink_decrypt"),
            "field_encrypt_many_vs_tink": ("field_encrypt_many", "tink_encrypt"),
            "field_decrypt_many_vs_tink": ("field_decrypt_many", "tink_decrypt"),
        }
    ops = {name: (len(pages) * PAGE if name.endswith("_many") else OPS) for name in runs}
    samples: dict[str, list[float]] = {name: [] for name in runs}
    per_round: dict[str, list[float]] = {name: [] for name in ratios}
    for _ in range(ROUNDS):
        this = {name: rate(run, ops[name]) for name, run in runs.items()}
        for name, value_ in this.items():
            samples[name].append(value_)
        for name, (ours, theirs) in ratios.items():
            per_round[name].append(this[ours] / this[theirs])
    rates = {name: statistics.median(values) for name, values in samples.items()}
    return rates, {name: statistics.median(values) for name, values in per_round.items()}


def count_unwraps() -> tuple[int, int]:
    """Loader calls over 1M encryptions on 100 tenants: (from cold, then warm)."""
    tenants = [str(uuid.uuid4()) for _ in range(TENANTS)]
    states = ConstantStates({t: 10_000 + i for i, t in enumerate(tenants)})
    keys = RandomKeys()
    env = make_envelope(states, keys)
    encrypt = env.encrypt
    record = str(uuid.uuid4())
    value = os.urandom(VALUE_SIZE)
    order = tenants * (ENCRYPTIONS // TENANTS)

    def run() -> int:
        before = keys.calls
        for tenant in order:
            encrypt(tenant, KIND, FIELD, record, value)
        return keys.calls - before

    cold = run()  # the cache starts empty: one unwrap per tenant
    warm = run()  # everything is cached and nowhere near its TTL
    return cold, warm


def profile() -> None:
    tenant, record = str(uuid.uuid4()), str(uuid.uuid4())
    value = os.urandom(VALUE_SIZE)
    env = make_envelope(ConstantStates(), RandomKeys())
    encrypt, decrypt = env.encrypt, env.decrypt
    blob = encrypt(tenant, KIND, FIELD, record, value)
    decrypt(tenant, KIND, FIELD, record, blob)
    for name, call in (
        ("encrypt", lambda: encrypt(tenant, KIND, FIELD, record, value)),
        ("decrypt", lambda: decrypt(tenant, KIND, FIELD, record, blob)),
    ):
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(OPS):
            call()
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
        print(f"# cProfile of Envelope.{name}, warm, sorted by own time:")
        for line in out.getvalue().splitlines():
            print(f"# {line}" if line.strip() else "#")


def main() -> int:
    django_loaded = [m for m in sys.modules if m == "django" or m.startswith("django.")]
    ours = sorted(m for m in sys.modules if m.split(".")[0] in {"keys", "tenants", "console"})
    print(f"# framework-free: {len(django_loaded)} django modules imported; ours: {ours}")

    tink = tink_aead()
    if tink is None:
        for stream in (sys.stdout, sys.stderr):
            print(
                "# TINK IS NOT INSTALLED: no figure against Tink can be measured "
                "(scripts/bench.sh installs it: .venv/bin/pip install -c constraints.txt tink)",
                file=stream,
            )
    print(f"# {ROUNDS} interleaved rounds of {OPS} operations; medians")
    rates, ratios = measure_rates(tink)
    for name in sorted(rates):
        print(f"BENCH {name}_per_s {rates[name]:.0f} ops/s")
    for name in sorted(ratios):
        print(f"BENCH {name} {ratios[name]:.3f} x")
    status = 0
    if tink is None:
        status = 1
    else:
        for name, target in (
            ("field_encrypt_vs_tink", TARGET_VS_TINK),
            ("field_decrypt_vs_tink", TARGET_VS_TINK),
            ("field_encrypt_many_vs_tink", TARGET_MANY_VS_TINK),
            ("field_decrypt_many_vs_tink", TARGET_MANY_VS_TINK),
        ):
            ratio = ratios[name]
            verdict = "met" if ratio >= target else "MISSED"
            print(f"# {name}: {ratio:.3f} x, target >= {target:.2f}: {verdict}")

    cold, warm = count_unwraps()
    print(f"BENCH unwraps_per_1m_encryptions {warm} calls")
    print(f"BENCH unwraps_per_1m_encryptions_cold {cold} calls")
    print(
        f"# unwraps: warm {'ok' if warm == 0 else 'UNEXPECTED'} (expected 0), "
        f"cold {'ok' if cold == TENANTS else 'UNEXPECTED'} (expected {TENANTS}, one per tenant)"
    )

    if "--profile" in sys.argv[1:]:
        profile()
    return status


if __name__ == "__main__":
    sys.exit(main())
