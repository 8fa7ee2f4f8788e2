"""Field encryption through the envelope against raw AES-256-GCM, in one process.

Framework-free: imports crypto.envelope (and through it keys/__init__.py,
crypto.ciphertext and crypto.dekcache) and nothing of Django. Run from the
repository root:

    .venv/bin/python bench/bench_envelope.py            # the figures
    .venv/bin/python bench/bench_envelope.py --profile  # plus a cProfile of encrypt

Every rate is the best of REPEATS runs of OPS operations on 32-byte values;
raw and envelope runs are interleaved so that both see the same machine.

- raw: AESGCM.encrypt / decrypt with one key, a distinct random 12-byte nonce
  per call (drawn before the timed loop, so the baseline is AES-GCM alone) and
  associated data as long as the envelope's (header + binding). For reference,
  raw_encrypt_urandom_nonce_per_s draws each nonce with os.urandom(12) inside
  the loop; it is not the baseline of the ratios.
- field: Envelope.encrypt / decrypt through the public API, warm DEK cache,
  constant tenant state, a reserve callback that grants everything, and a
  realistic binding (tenant uuid, kind "user", field "email", record uuid).
- unwraps: loader calls during 1,000,000 encryptions round-robin over 100
  tenants with a 300 s TTL, from a warm cache and from a cold one.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from crypto.ciphertext import binding, header  # noqa: E402
from crypto.dekcache import DekCache, LoadedKey  # noqa: E402
from crypto.envelope import Envelope, TenantKeyState  # noqa: E402

OPS = 50_000
REPEATS = 5
VALUE_SIZE = 32
KIND, FIELD = "user", "email"
TTL = 300.0
TENANTS = 100
ENCRYPTIONS = 1_000_000
TARGET_ENCRYPT = 0.22
TARGET_DECRYPT = 0.30
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


def measure_rates() -> dict[str, float]:
    tenant, record = str(uuid.uuid4()), str(uuid.uuid4())
    value = os.urandom(VALUE_SIZE)
    env = make_envelope(ConstantStates(), RandomKeys())
    encrypt, decrypt = env.encrypt, env.decrypt
    blob = encrypt(tenant, KIND, FIELD, record, value)  # warms state, DEK cache, budget
    assert decrypt(tenant, KIND, FIELD, record, blob) == value

    aead = AESGCM(AESGCM.generate_key(256))
    aad = os.urandom(len(header(DEK_ID) + binding(tenant, KIND, FIELD, record)))
    nonces = [os.urandom(12) for _ in range(OPS)]
    raw_blob = aead.encrypt(nonces[0], value, aad)
    loop = range(OPS)

    def raw_encrypt() -> None:
        seal = aead.encrypt
        for nonce in nonces:
            seal(nonce, value, aad)

    def raw_encrypt_urandom() -> None:
        seal, urandom = aead.encrypt, os.urandom
        for _ in loop:
            seal(urandom(12), value, aad)

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

    runs = {
        "raw_encrypt_per_s": raw_encrypt,
        "field_encrypt_per_s": field_encrypt,
        "raw_decrypt_per_s": raw_decrypt,
        "raw_encrypt_urandom_nonce_per_s": raw_encrypt_urandom,
        "field_decrypt_per_s": field_decrypt,
    }
    best = dict.fromkeys(runs, 0.0)
    for _ in range(REPEATS):
        for name, run in runs.items():
            best[name] = max(best[name], rate(run, OPS))
    return best


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


def profile_encrypt() -> None:
    tenant, record = str(uuid.uuid4()), str(uuid.uuid4())
    value = os.urandom(VALUE_SIZE)
    env = make_envelope(ConstantStates(), RandomKeys())
    encrypt = env.encrypt
    encrypt(tenant, KIND, FIELD, record, value)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(OPS):
        encrypt(tenant, KIND, FIELD, record, value)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
    print("# cProfile of Envelope.encrypt, warm, sorted by own time:")
    for line in out.getvalue().splitlines():
        print(f"# {line}" if line.strip() else "#")


def main() -> None:
    django_loaded = [m for m in sys.modules if m == "django" or m.startswith("django.")]
    ours = sorted(m for m in sys.modules if m.split(".")[0] in {"keys", "tenants", "console"})
    print(f"# framework-free: {len(django_loaded)} django modules imported; ours: {ours}")

    best = measure_rates()
    for name in ("field_encrypt_per_s", "field_decrypt_per_s"):
        print(f"BENCH {name} {best[name]:.0f} ops/s")
    for name in ("raw_encrypt_per_s", "raw_decrypt_per_s"):
        print(f"BENCH {name} {best[name]:.0f} ops/s")
    # Not the baseline (the nonce draw is not AES-GCM's cost), for reference only:
    urandom_rate = best["raw_encrypt_urandom_nonce_per_s"]
    print(f"BENCH raw_encrypt_urandom_nonce_per_s {urandom_rate:.0f} ops/s")
    enc_ratio = best["field_encrypt_per_s"] / best["raw_encrypt_per_s"]
    dec_ratio = best["field_decrypt_per_s"] / best["raw_decrypt_per_s"]
    print(f"BENCH field_encrypt_vs_raw {enc_ratio:.3f} x")
    print(f"BENCH field_decrypt_vs_raw {dec_ratio:.3f} x")
    for what, ratio, target in (
        ("encrypt", enc_ratio, TARGET_ENCRYPT),
        ("decrypt", dec_ratio, TARGET_DECRYPT),
    ):
        verdict = "met" if ratio >= target else "MISSED"
        print(f"# field {what} vs raw: {ratio:.3f} x, target >= {target:.2f}: {verdict}")

    cold, warm = count_unwraps()
    print(f"BENCH unwraps_per_1m_encryptions {warm} calls")
    print(f"BENCH unwraps_per_1m_encryptions_cold {cold} calls")
    print(
        f"# unwraps: warm {'ok' if warm == 0 else 'UNEXPECTED'} (expected 0), "
        f"cold {'ok' if cold == TENANTS else 'UNEXPECTED'} (expected {TENANTS}, one per tenant)"
    )

    if "--profile" in sys.argv[1:]:
        profile_encrypt()


if __name__ == "__main__":
    main()
