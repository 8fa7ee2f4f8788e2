"""Object encryption (archive.segments) against raw AES-256-GCM, in one process.

Framework-free: imports archive.segments and archive.storage and nothing of
Django. Run from the repository root:

    .venv/bin/python bench/bench_objects.py            # the figures
    .venv/bin/python bench/bench_objects.py --profile  # plus a cProfile of encrypt

Every rate is the best of REPEATS runs over OBJECT_MB MiB of random plaintext;
raw and stream runs are interleaved so that both see the same machine.

- raw: AESGCM.encrypt / decrypt of the same bytes in 64 KiB calls with one key,
  nonces and associated data as long as the stream's drawn before the timed
  loop: AES-GCM alone, the floor that any segmented format pays.
- object: encrypt_stream / decrypt_stream through the public API, fed by a
  generator of 1 MiB chunks (a request body or a storage read), including the
  header, the HKDF subkey and the key lookup.
- store: the same object put into a FilesystemStorage in a temporary folder
  (encrypted on the way in) and read back (decrypted and checked against the
  plaintext SHA-256 on the way out), against a plain put and get of the same
  bytes in the same folder. Page cache, not disk: the folder is written,
  fsynced and read back at once.
"""

from __future__ import annotations

import cProfile
import hashlib
import io
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from archive.segments import (  # noqa: E402
    DEFAULT_SEGMENT_SIZE,
    Digest,
    ciphertext_size,
    decrypt_stream,
    encrypt_stream,
)
from archive.storage import FilesystemStorage  # noqa: E402

OBJECT_MB = 64
REPEATS = 5
CHUNK = 1024 * 1024
SEGMENT = DEFAULT_SEGMENT_SIZE
DEK_ID = 4_242
BINDING = b"tenant 3f1e0c9a-5b7d-4c52-9a61-0d8e2f4b7a10\x00objects/invoices/2024/0001.pdf"
TARGET = 0.80
MB = 1024 * 1024


def chunks_of(data: bytes, size: int = CHUNK) -> Iterator[bytes]:
    view = memoryview(data)
    for offset in range(0, len(data), size):
        yield bytes(view[offset : offset + size])


def drain(pieces: Iterable[bytes]) -> int:
    total = 0
    for piece in pieces:
        total += len(piece)
    return total


def mb_per_s(run: Callable[[], None], size: int) -> float:
    start = time.perf_counter()
    run()
    return size / MB / (time.perf_counter() - start)


def measure(data: bytes) -> dict[str, float]:
    size = len(data)
    dek = AESGCM.generate_key(256)
    blob = b"".join(encrypt_stream(chunks_of(data), dek=dek, dek_id=DEK_ID, binding=BINDING))
    assert len(blob) == ciphertext_size(size)
    assert b"".join(decrypt_stream(chunks_of(blob), key_for=lambda _: dek, binding=BINDING)) == (
        data
    )

    aead = AESGCM(AESGCM.generate_key(256))
    view = memoryview(data)
    segments = [view[o : o + SEGMENT] for o in range(0, size, SEGMENT)]
    nonces = [os.urandom(12) for _ in segments]
    aad = os.urandom(41)
    sealed = [aead.encrypt(n, s, aad) for n, s in zip(nonces, segments, strict=True)]

    def raw_encrypt() -> None:
        seal = aead.encrypt
        for nonce, segment in zip(nonces, segments, strict=True):
            seal(nonce, segment, aad)

    def raw_decrypt() -> None:
        open_ = aead.decrypt
        for nonce, segment in zip(nonces, sealed, strict=True):
            open_(nonce, segment, aad)

    # Chunks cut before the timed loops, as a request body or a storage read
    # hands them over; the stream's own copies and allocations are timed.
    plain_chunks = list(chunks_of(data))
    blob_chunks = list(chunks_of(blob))

    def object_encrypt() -> None:
        drain(encrypt_stream(iter(plain_chunks), dek=dek, dek_id=DEK_ID, binding=BINDING))

    def object_decrypt() -> None:
        drain(decrypt_stream(iter(blob_chunks), key_for=lambda _: dek, binding=BINDING))

    runs = {
        "raw_encrypt": raw_encrypt,
        "object_encrypt": object_encrypt,
        "raw_decrypt": raw_decrypt,
        "object_decrypt": object_decrypt,
    }
    best = dict.fromkeys(runs, 0.0)
    for _ in range(REPEATS):
        for name, run in runs.items():
            best[name] = max(best[name], mb_per_s(run, size))
    return best


def measure_store(data: bytes) -> dict[str, float]:
    """Put and get through a FilesystemStorage, encrypted and plain, in one folder."""
    size = len(data)
    dek = AESGCM.generate_key(256)
    expected = hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory(prefix="keyward-bench-") as folder:
        store = FilesystemStorage(Path(folder))
        store.ensure()

        def plain_put() -> None:
            store.put("plain/object", chunks_of(data))

        def plain_get() -> None:
            drain(store.get("plain/object"))

        def sealed_put() -> None:
            digest = Digest()
            pieces = encrypt_stream(
                digest.tee(chunks_of(data)), dek=dek, dek_id=DEK_ID, binding=BINDING
            )
            store.put("sealed/object", pieces, metadata={"sha256": "0" * 64})
            assert digest.hexdigest() == expected

        def sealed_get() -> None:
            digest = Digest()
            for piece in decrypt_stream(
                store.get("sealed/object"), key_for=lambda _: dek, binding=BINDING
            ):
                digest.update(piece)
            assert digest.hexdigest() == expected

        runs = {
            "plain_put": plain_put,
            "sealed_put": sealed_put,
            "plain_get": plain_get,
            "sealed_get": sealed_get,
        }
        best = dict.fromkeys(runs, 0.0)
        for _ in range(REPEATS):
            for name, run in runs.items():
                best[name] = max(best[name], mb_per_s(run, size))
    return best


def profile_encrypt(data: bytes) -> None:
    dek = AESGCM.generate_key(256)
    profiler = cProfile.Profile()
    profiler.enable()
    drain(encrypt_stream(chunks_of(data), dek=dek, dek_id=DEK_ID, binding=BINDING))
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    print("# cProfile of encrypt_stream, sorted by own time:")
    for line in out.getvalue().splitlines():
        print(f"# {line}" if line.strip() else "#")


def main() -> None:
    django_loaded = [m for m in sys.modules if m == "django" or m.startswith("django.")]
    print(f"# framework-free: {len(django_loaded)} django modules imported")
    data = os.urandom(OBJECT_MB * MB)
    print(f"# object of {OBJECT_MB} MiB, {SEGMENT // 1024} KiB segments, {CHUNK // MB} MiB chunks")

    best = measure(data)
    for name in ("object_encrypt", "object_decrypt", "raw_encrypt", "raw_decrypt"):
        print(f"BENCH {name}_mb_per_s {best[name]:.0f} MB/s")
    ratios = {what: best[f"object_{what}"] / best[f"raw_{what}"] for what in ("encrypt", "decrypt")}
    for what, ratio in ratios.items():
        print(f"BENCH object_{what}_vs_raw_gcm {ratio:.3f} x")
    for what, ratio in ratios.items():
        verdict = "met" if ratio >= TARGET else "MISSED"
        print(f"# object {what} vs raw AES-GCM: {ratio:.3f} x, target >= {TARGET:.2f}: {verdict}")

    store = measure_store(data)
    for name in ("sealed_put", "sealed_get", "plain_put", "plain_get"):
        print(f"BENCH store_{name}_mb_per_s {store[name]:.0f} MB/s")
    print(f"BENCH store_put_vs_plain {store['sealed_put'] / store['plain_put']:.3f} x")
    print(f"BENCH store_get_vs_plain {store['sealed_get'] / store['plain_get']:.3f} x")

    if "--profile" in sys.argv[1:]:
        profile_encrypt(data)


if __name__ == "__main__":
    main()
