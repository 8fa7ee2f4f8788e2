"""Object encryption (crypto.segments) against raw AES-256-GCM, in one process.

Framework-free: imports crypto.segments and objects.storage and nothing of
Django. Run from the repository root:

    .venv/bin/python bench/bench_objects.py            # the figures
    .venv/bin/python bench/bench_objects.py --profile  # plus a cProfile of encrypt

Every rate is the best of REPEATS runs over OBJECT_MB MiB of random plaintext;
raw and stream runs are interleaved so that both see the same machine.

- raw: AESGCM.encrypt / decrypt of the same bytes in 64 KiB calls with one key,
  nonces and associated data as long as the stream's drawn before the timed
  loop: AES-GCM alone, the floor that any segmented format pays.
- object: encrypt_stream / decrypt_stream through the public API, including
  the header, the HKDF subkey and the key lookup. Encrypt is fed 1 MiB chunks
  (a request body); decrypt the pieces a storage read hands over, which end at
  a segment's record (`aligned_reads`, about 1 MiB). Decrypt from plain 1 MiB
  pieces, which cut one record in sixteen, is printed beside it.
- migrate: KEYWARD_BENCH_MIGRATE_MB (default 1024) MiB of 4 MiB objects moved
  between two FilesystemStorage folders under data/ (a real disk, fsync per
  object): decrypted under the old DEK, hashed, re-encrypted under a new DEK
  and checked against the manifest, against a plain copy of the same files
  through the same storage. See measure_migrate.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from bench.summary import bound  # noqa: E402
from crypto.segments import (  # noqa: E402
    DEFAULT_SEGMENT_SIZE,
    Digest,
    aligned_reads,
    ciphertext_size,
    decrypt_stream,
    encrypt_stream,
)
from objects.storage import FilesystemStorage, ReadSizes  # noqa: E402

OBJECT_MB = 64
REPEATS = 5
CHUNK = 1024 * 1024
SEGMENT = DEFAULT_SEGMENT_SIZE
DEK_ID = 4_242
BINDING = b"tenant 3f1e0c9a-5b7d-4c52-9a61-0d8e2f4b7a10\x00objects/invoices/2024/0001.pdf"
TARGET = bound("object_encrypt_vs_raw_gcm")
MIGRATE_TARGET = bound("migrate_vs_plain_copy")
MIGRATE_REPEATS = 3
WORKERS = int(os.environ.get("KEYWARD_BENCH_MIGRATE_WORKERS", "2"))
READS = ReadSizes(*aligned_reads(SEGMENT))  # what objects.services reads with
MB = 1024 * 1024


def chunks_of(data: bytes, size: int = CHUNK) -> Iterator[bytes]:
    view = memoryview(data)
    for offset in range(0, len(data), size):
        yield bytes(view[offset : offset + size])


def pieces_as_read(blob: bytes) -> list[bytes]:
    """The blob as a storage read cuts it for decryption (objects.services.OBJECT_READS)."""
    first, rest = aligned_reads(SEGMENT)
    return [blob[:first]] + [blob[o : o + rest] for o in range(first, len(blob), rest)]


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
    blob_chunks = pieces_as_read(blob)
    unaligned_chunks = list(chunks_of(blob))

    def object_encrypt() -> None:
        drain(encrypt_stream(iter(plain_chunks), dek=dek, dek_id=DEK_ID, binding=BINDING))

    def object_decrypt() -> None:
        drain(decrypt_stream(iter(blob_chunks), key_for=lambda _: dek, binding=BINDING))

    def object_decrypt_unaligned() -> None:
        drain(decrypt_stream(iter(unaligned_chunks), key_for=lambda _: dek, binding=BINDING))

    runs = {
        "raw_encrypt": raw_encrypt,
        "object_encrypt": object_encrypt,
        "raw_decrypt": raw_decrypt,
        "object_decrypt": object_decrypt,
        "object_decrypt_unaligned": object_decrypt_unaligned,
    }
    best = dict.fromkeys(runs, 0.0)
    for _ in range(REPEATS):
        for name, run in runs.items():
            best[name] = max(best[name], mb_per_s(run, size))
    return best


def measure_migrate(total_mb: int) -> dict[str, float]:
    """Move objects from one filesystem location to another, re-encrypted and plain.

    1. Setup (untimed): 4 MiB objects of random plaintext, encrypted
       under the old DEK bound to the shared location's key, each with its
       plaintext SHA-256 in the manifest and in its metadata.
    2. migrate: for each object, get from the source, decrypt (old DEK), hash,
       encrypt (new DEK, bound to the dedicated location), put into the
       destination, head it and check the checksum against the manifest.
    3. plain copy: get and put the same ciphertext bytes, head it and compare
       the size: the floor of any move between the two folders.
    Both move WORKERS objects at a time (threads: fsync, SHA-256 and AES-GCM on
    whole segments release the GIL). The destination is emptied between runs;
    the source is never deleted.
    """
    object_mb = 4
    count = max(1, total_mb // object_mb)
    old_dek, new_dek = AESGCM.generate_key(256), AESGCM.generate_key(256)
    old_id, new_id = 1, 2
    ring = {old_id: old_dek, new_id: new_dek}
    size = count * object_mb * MB
    (ROOT / "data").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="keyward-bench-", dir=ROOT / "data") as folder:
        shared = FilesystemStorage(Path(folder) / "shared")
        dedicated = FilesystemStorage(Path(folder) / "dedicated")
        plain = FilesystemStorage(Path(folder) / "plain")
        for store in (shared, dedicated, plain):
            store.ensure()
        manifest: dict[str, str] = {}
        for i in range(count):
            key = f"tenants/acme/objects/{i:05d}"
            data = os.urandom(object_mb * MB)
            manifest[key] = hashlib.sha256(data).hexdigest()
            sealed = encrypt_stream(
                chunks_of(data), dek=old_dek, dek_id=old_id, binding=b"shared\x00" + key.encode()
            )
            shared.put(key, sealed, metadata={"sha256": manifest[key]})
        del data

        def migrate() -> None:
            with ThreadPoolExecutor(WORKERS) as pool:
                list(pool.map(migrate_one, manifest.items()))

        def migrate_one(item: tuple[str, str]) -> None:
            key, checksum = item
            digest = Digest()
            opened = decrypt_stream(
                shared.get(key, sizes=READS),
                key_for=ring.__getitem__,
                binding=b"shared\x00" + key.encode(),
            )
            sealed = encrypt_stream(
                digest.tee(opened),
                dek=new_dek,
                dek_id=new_id,
                binding=b"dedicated\x00" + key.encode(),
            )
            # The checksum comes from the manifest; the plaintext that streamed
            # through must match it (a real mover would delete and stop).
            dedicated.put(key, sealed, metadata={"sha256": checksum})
            assert digest.hexdigest() == checksum
            stored = dedicated.head(key)
            assert stored.metadata["sha256"] == checksum
            assert stored.size == ciphertext_size(object_mb * MB)

        def plain_copy() -> None:
            with ThreadPoolExecutor(WORKERS) as pool:
                list(pool.map(copy_one, manifest))

        def copy_one(key: str) -> None:
            stored = plain.put(key, shared.get(key))
            assert plain.head(key).size == stored.size

        def empty(store: FilesystemStorage) -> None:
            for item in list(store.list()):
                store.delete(item.key)

        best = {"plain_copy": 0.0, "migrate": 0.0}
        for _ in range(MIGRATE_REPEATS):
            for name, run, store in (
                ("plain_copy", plain_copy, plain),
                ("migrate", migrate, dedicated),
            ):
                empty(store)
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
    unaligned = best["object_decrypt_unaligned"] / best["raw_decrypt"]
    print(f"# object decrypt from plain 1 MiB pieces: {unaligned:.3f} x raw")
    for what, ratio in ratios.items():
        verdict = "met" if ratio >= TARGET else "MISSED"
        print(f"# object {what} vs raw AES-GCM: {ratio:.3f} x, target >= {TARGET:.2f}: {verdict}")

    if "--profile" in sys.argv[1:]:
        profile_encrypt(data)
    del data

    total_mb = int(os.environ.get("KEYWARD_BENCH_MIGRATE_MB", "1024"))
    moved = measure_migrate(total_mb)
    print(
        f"# migrate: {total_mb} MiB in 4 MiB objects between two folders under data/, "
        f"{WORKERS} objects at a time, best of {MIGRATE_REPEATS}"
    )
    # The pieces alone (no database, no checkpoints); bench_migrate.py measures the engine.
    print(f"BENCH migrate_pieces_mb_per_s {moved['migrate']:.0f} MB/s")
    print(f"BENCH migrate_pieces_plain_copy_mb_per_s {moved['plain_copy']:.0f} MB/s")
    ratio = moved["migrate"] / moved["plain_copy"]
    print(f"BENCH migrate_pieces_vs_plain_copy {ratio:.3f} x")
    verdict = "met" if ratio >= MIGRATE_TARGET else "MISSED"
    print(f"# migrate vs plain copy: {ratio:.3f} x, target >= {MIGRATE_TARGET:.2f}: {verdict}")


if __name__ == "__main__":
    main()
