"""No plaintext DEK (or root key) reaches the database, logs, errors, reprs or Celery.

Runs the key operations of the suite, then scans a full database dump, the
captured logs, the raw Celery messages in Redis, exception messages and
reprs for every DEK in raw, hex and base64 form.
"""

from __future__ import annotations

import base64
import json
import logging
import subprocess

import pytest
import redis
from django.core.management import call_command

from audit.services import Actor
from crypto.ciphertext import CiphertextError
from keys.models import DataKey
from keys.rootkey import local_provider, root_key_file
from keys.runtime import dek_context, envelope, flush_counts, reset_for_tests
from keys.services.deks import dek_rotate
from records.models import Record
from records.reencryption import reencryption_start
from records.services import record_fields, records_create
from records.synthetic import synthetic_records
from records.tasks import run_reencryption
from tenants.services import tenant_create
from tests.support.worker import worker_database_url

PG_DUMP = "/usr/lib/postgresql/15/bin/pg_dump"
SYSTEM = Actor.system("tests")


def forms(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        secret.hex().upper().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret),
        base64.b64encode(secret).rstrip(b"="),
    ]


def plaintext_deks() -> list[bytes]:
    provider = local_provider()
    found = []
    for dek in DataKey.objects.select_related("kek_version").exclude(wrapped=b""):
        found.append(
            provider.unwrap(
                bytes(dek.wrapped),
                dek_context(str(dek.tenant_id), dek.version),
                dek.kek_version.provider_version,
            )
        )
    return found


def root_keys() -> list[bytes]:
    document = json.loads(root_key_file().path.read_text())
    return [base64.b64decode(k) for k in document["keys"].values()]


@pytest.mark.django_db(transaction=True)
def test_no_plaintext_key_escapes(caplog, settings) -> None:
    caplog.set_level(logging.DEBUG)
    settings.KEYWARD_REENCRYPT_BATCH = 100
    reset_for_tests()
    secrets_seen: list[bytes] = []
    texts: list[str] = []

    tenant = tenant_create(name="Leaky", slug="leaky", actor=SYSTEM)
    records = records_create(tenant=tenant, items=list(synthetic_records(150)))
    secrets_seen += plaintext_deks()
    dek_rotate(tenant=tenant, actor=SYSTEM, reason="test")
    reset_for_tests()
    records_create(tenant=tenant, items=list(synthetic_records(50, prefix="b-")))
    secrets_seen += plaintext_deks()
    job = reencryption_start(tenant=tenant, actor=SYSTEM)  # enqueues a Celery message
    run_reencryption.apply(args=(str(job.pk),))
    call_command("rotate_root_key", verbosity=0)
    call_command("rewrap_data_keys", verbosity=0)
    secrets_seen += plaintext_deks()
    flush_counts()
    for row in Record.objects.filter(tenant=tenant)[:20]:
        record_fields(tenant, row)

    # Errors: tampered and misplaced ciphertexts.
    row = Record.objects.get(pk=records[0].pk)
    pii = bytes(row.sealed.pii)
    for blob, record_id in [(pii[:-1] + bytes([pii[-1] ^ 1]), str(row.uid)), (pii, "x")]:
        try:
            envelope().decrypt(str(tenant.pk), row.kind, "pii", record_id, blob)
        except CiphertextError as exc:
            texts += [str(exc), repr(exc)]
    texts += [
        repr(envelope()),
        repr(envelope().cache),
        repr(local_provider()),
        repr(root_key_file()),
    ]
    texts += [repr(d) + str(d) for d in DataKey.objects.all()]
    texts += [repr(entry) for entry in envelope().cache._entries.values()]
    texts.append(caplog.text)
    texts += [str(r.args) for r in caplog.records]

    dump = subprocess.run(
        [PG_DUMP, "--data-only", worker_database_url()], capture_output=True, check=True
    ).stdout
    client = redis.Redis.from_url(settings.REDIS_URL)  # bytes replies (no decoding)
    messages: list[bytes] = []
    for key in client.keys("*"):
        if client.type(key) == b"list":
            messages += [
                m if isinstance(m, bytes) else m.encode() for m in client.lrange(key, 0, -1)
            ]
    broker = b"".join(messages)
    assert b"run_reencryption" in broker or b"records.run_reencryption" in broker

    haystacks = {"database dump": dump, "celery messages": broker}
    haystacks.update({f"text {i}": t.encode() for i, t in enumerate(texts)})
    needles = set(secrets_seen) | set(root_keys())
    assert len(secrets_seen) >= 3
    for secret in needles:
        for form in forms(secret):
            for where, haystack in haystacks.items():
                assert form not in haystack, f"a key leaked into the {where}"
    assert root_key_file().path.stat().st_size > 0
