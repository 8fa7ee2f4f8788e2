"""Sealed fields always name a DEK that exists: the database's statement-level checks.

Migration archive/0002 replaced the per-row foreign key with triggers; these
tests hold them to what the foreign key promised, on PostgreSQL (the suite's
database) and on SQLite (the embedded default, migrated in a subprocess).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.db import IntegrityError, connection, connections, transaction
from django.db.models import ProtectedError

from audit.services import Actor
from keys.models import DataKey, DekState
from records.bulk import insert_records
from records.models import Record, SealedFields
from records.services import records_create
from records.synthetic import synthetic_records
from tenants.models import Tenant
from tenants.services import tenant_create
from tests.support.embedded import sqlite_env

ROOT = Path(__file__).resolve().parents[2]
SYSTEM = Actor.system("tests")
NO_SUCH_DEK = 9_000_000_001


def tenant_with_records(slug: str, n: int = 3) -> Tenant:
    tenant = tenant_create(name=slug.title(), slug=slug, actor=SYSTEM)
    records_create(tenant=tenant, items=list(synthetic_records(n, prefix=f"{slug}-")))
    return tenant


def sealed_of(tenant: Tenant) -> list[tuple[int, int, bytes]]:
    return sorted(
        (s.record_id, s.dek_id, bytes(s.pii))
        for s in SealedFields.objects.filter(record__tenant=tenant)
    )


@pytest.mark.django_db
def test_sealed_fields_cannot_name_a_dek_that_does_not_exist() -> None:
    tenant = tenant_with_records("acme")
    before = sealed_of(tenant)
    record = Record.objects.filter(tenant=tenant).first()
    assert record is not None
    with pytest.raises(IntegrityError, match="do not exist"), transaction.atomic():
        SealedFields.objects.filter(pk=record.pk).update(dek_id=NO_SUCH_DEK)
    assert sealed_of(tenant) == before

    # A bulk write (COPY) is checked as a whole: one bad row refuses all of them.
    good, bad = (
        Record(tenant=tenant, kind="user", external_id="good"),
        Record(tenant=tenant, kind="user", external_id="bad"),
    )
    dek = DataKey.objects.get(tenant=tenant, state="active")
    good.sealed = SealedFields(dek_id=dek.pk, pii=b"x")
    bad.sealed = SealedFields(dek_id=NO_SUCH_DEK, pii=b"x")
    # The raw COPY cursor's errors pass through Django's wrapper too.
    with pytest.raises(IntegrityError, match=str(NO_SUCH_DEK)), transaction.atomic():
        insert_records([good, bad])
    assert not Record.objects.filter(external_id__in=["good", "bad"]).exists()
    assert sealed_of(tenant) == before


@pytest.mark.django_db
def test_a_dek_that_seals_records_cannot_be_deleted() -> None:
    tenant = tenant_with_records("acme")
    dek = DataKey.objects.get(tenant=tenant, state="active")
    with pytest.raises(ProtectedError):  # through the ORM
        dek.delete()
    for statement, params in [  # and behind its back
        ("DELETE FROM keys_datakey WHERE id = %s", [dek.pk]),
        ("UPDATE keys_datakey SET id = %s WHERE id = %s", [NO_SUCH_DEK, dek.pk]),
    ]:
        with (
            pytest.raises(IntegrityError, match="still seals records"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement, params)
    assert DataKey.objects.filter(pk=dek.pk).exists()


@pytest.mark.django_db
def test_a_dek_nothing_names_can_be_deleted() -> None:
    tenant = tenant_create(name="Empty", slug="empty", actor=SYSTEM)
    dek = DataKey.objects.get(tenant=tenant, state="active")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM keys_datakey WHERE id = %s", [dek.pk])
    assert not DataKey.objects.filter(pk=dek.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_dek_being_written_under_cannot_be_deleted_when_the_writer_commits() -> None:
    """The writer's statement holds the DEK (FOR KEY SHARE): the delete waits, then refuses."""
    tenant = tenant_with_records("acme", n=1)
    old = DataKey.objects.get(tenant=tenant, state="active")
    fresh = DataKey.objects.create(
        tenant=tenant,
        version=old.version + 1,
        wrapped=b"w",
        kek_version=old.kek_version,
        state=DekState.RETIRING,  # any DEK row will do; only its existence matters
    )
    record = Record.objects.get(tenant=tenant)
    written, outcome = threading.Event(), dict[str, str]()

    def delete_fresh() -> None:
        written.wait(10)
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SET LOCAL lock_timeout = '10s'")
                cursor.execute("DELETE FROM keys_datakey WHERE id = %s", [fresh.pk])
            outcome["deleted"] = "yes"
        except IntegrityError as exc:
            outcome["refused"] = str(exc)
        finally:
            connections.close_all()

    deleter = threading.Thread(target=delete_fresh)
    deleter.start()
    with transaction.atomic():
        SealedFields.objects.filter(pk=record.pk).update(dek_id=fresh.pk)
        written.set()
        deleter.join(0.5)
        assert deleter.is_alive(), "the delete did not wait for the writer"
    deleter.join(15)
    assert "still seals records" in outcome.get("refused", ""), outcome
    assert SealedFields.objects.get(pk=record.pk).dek_id == fresh.pk


def test_the_embedded_database_has_the_same_checks(tmp_path: Path) -> None:
    """`make run`'s SQLite database, migrated from scratch, refuses the same writes."""
    database = tmp_path / "keyward.sqlite3"
    env = sqlite_env(tmp_path)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
    )
    db = sqlite3.connect(database)
    # Only the triggers are under test: no tenant, record or KEK rows needed.
    db.execute("PRAGMA foreign_keys = OFF")
    with pytest.raises(sqlite3.IntegrityError, match="does not exist"):
        db.execute(
            "INSERT INTO archive_sealedfields (record_id, dek_id, pii) VALUES (1, ?, x'00')",
            [NO_SUCH_DEK],
        )
    db.execute(
        "INSERT INTO keys_datakey (id, tenant_id, version, wrapped, kek_version_id, state,"
        " created, encryption_count, encryptions_reserved) VALUES (7, 't', 1, x'00', 1,"
        " 'active', '2026-01-01', 0, 0)"
    )
    db.execute("INSERT INTO archive_sealedfields (record_id, dek_id, pii) VALUES (1, 7, x'00')")
    with pytest.raises(sqlite3.IntegrityError, match="does not exist"):
        db.execute("UPDATE archive_sealedfields SET dek_id = ? WHERE record_id = 1", [NO_SUCH_DEK])
    with pytest.raises(sqlite3.IntegrityError, match="still seals records"):
        db.execute("DELETE FROM keys_datakey WHERE id = 7")
    with pytest.raises(sqlite3.IntegrityError, match="still seals records"):
        db.execute("UPDATE keys_datakey SET id = 8 WHERE id = 7")
    db.execute("UPDATE archive_sealedfields SET pii = x'01' WHERE record_id = 1")  # allowed
    db.execute("DELETE FROM archive_sealedfields")
    db.execute("DELETE FROM keys_datakey WHERE id = 7")  # nothing names it any more
    db.close()
