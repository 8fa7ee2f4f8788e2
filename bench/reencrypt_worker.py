"""A Celery worker for bench_reencrypt.py, on a queue of its own.

    reencrypt_worker.py QUEUE crypto|plain

With `plain`, the re-sealing step passes ciphertexts through unchanged (the
baseline: the same job, batches and SQL without cryptography) and the old DEK
is not retired, in this process only; production code has no such switch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
queue, mode = sys.argv[1], sys.argv[2]
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
os.environ.setdefault("KEYWARD_MODE", "embedded")
# What the worker sends (the job's parts) comes back to this queue.
os.environ["KEYWARD_CELERY_QUEUE"] = queue

import django  # noqa: E402

django.setup()

from console.celery import app  # noqa: E402
from records import reencrypt, reencryption  # noqa: E402
from records.reencrypt import Row  # noqa: E402


def passthrough(
    tenant_id: str, rows: Sequence[Row], target_id: int
) -> tuple[list[int], list[bytes]]:
    # The blobs as read, as reencrypt_rows takes them: no copy either side.
    return [row[0] for row in rows], [row[4] for row in rows]


if mode == "plain":
    reencrypt.reencrypt_rows = passthrough
    # The rows it relabels are still sealed under the old DEK: keep that DEK
    # usable, so that the API goes on reading them and the real run can follow.
    reencryption.dek_retire_unused = lambda *, tenant: []
elif mode != "crypto":
    sys.exit(f"mode must be crypto or plain, not {mode!r}")

app.worker_main(
    [
        "worker", "--pool", "solo", "--queues", queue, "--loglevel", "INFO",
        "--hostname", f"{mode}-{os.getpid()}@%h", "--without-mingle", "--without-gossip",
    ]
)  # fmt: skip
