"""Records per DEK come from counters the database keeps (records.models.DekRecordCount):
they must equal a real count after every kind of write."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.db.models import Count

from audit.services import Actor
from keys.consumers import counts_by_dek
from keys.models import DataKey, DekState
from keys.runtime import envelope, reset_for_tests
from keys.services.deks import dek_rotate
from records.models import DekRecordCount, Record, SealedFields
from records.reencryption import reencryption_run, reencryption_start
from records.selectors import record_counts_by_dek, records_overview
from records.services import record_delete, records_create
from records.synthetic import synthetic_records
from tenants.models import Tenant
from tenants.services import tenant_create

SYSTEM = Actor.system("tests")


@pytest.fixture(autouse=True)
def _fresh_envelope():
    reset_for_tests()
    yield
    reset_for_tests()


def counted(tenant: Tenant) -> dict[int, int]:
    """The count the counters stand in for: every sealed row, grouped by DEK."""
    rows = (
        SealedFields.objects.filter(dek__tenant=tenant)
        .values("dek_id")
        .annotate(n=Count("record_id"))
        .order_by()
    )
    return {row["dek_id"]: row["n"] for row in rows}


def assert_exact(tenant: Tenant) -> dict[int, int]:
    kept = record_counts_by_dek(tenant)
    assert kept == counted(tenant)
    assert records_overview(tenant).total == Record.objects.filter(tenant=tenant).count()
    return kept


def rotate(tenant: Tenant) -> DataKey:
    dek = dek_rotate(tenant=tenant, actor=SYSTEM, reason="test")
    envelope().forget(str(tenant.pk))
    return dek


@pytest.mark.django_db(transaction=True)
def test_counts_stay_exact_through_creates_deletes_rotation_and_reencryption(settings) -> None:
    settings.KEYWARD_REENCRYPT_BATCH = 40
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    other = tenant_create(name="Hooli", slug="hooli", actor=SYSTEM)
    first = DataKey.objects.get(tenant=tenant)

    # A batch (COPY on PostgreSQL), single creates (their own INSERT path), another tenant.
    records_create(tenant=tenant, items=list(synthetic_records(120, prefix="a-")))
    for n in range(3):
        records_create(tenant=tenant, items=list(synthetic_records(1, seed=n, prefix=f"s{n}-")))
    records_create(tenant=other, items=list(synthetic_records(7, prefix="o-")))
    assert assert_exact(tenant) == {first.pk: 123}
    assert sum(assert_exact(other).values()) == 7

    # One by one, and many in one statement (the cascade from Record).
    for record in Record.objects.filter(tenant=tenant).order_by("pk")[:2]:
        record_delete(tenant=tenant, record=record, actor=SYSTEM)
    Record.objects.filter(tenant=tenant, external_id__startswith="s").delete()
    assert assert_exact(tenant) == {first.pk: 118}

    # A write that rolls back leaves the counts as they were.
    with pytest.raises(RuntimeError), transaction.atomic():
        records_create(tenant=tenant, items=list(synthetic_records(50, prefix="gone-")))
        raise RuntimeError("the caller fails")
    assert assert_exact(tenant) == {first.pk: 118}

    # Rotation: new records go under the new DEK, the old ones stay counted under theirs.
    second = rotate(tenant)
    records_create(tenant=tenant, items=list(synthetic_records(30, seed=9, prefix="b-")))
    assert assert_exact(tenant) == {first.pk: 118, second.pk: 30}
    assert counts_by_dek(tenant)["records"] == {first.pk: 118, second.pk: 30}

    # Re-encryption moves every record to the current DEK, in batches of UPDATEs.
    third = rotate(tenant)
    job = reencryption_start(tenant=tenant, actor=SYSTEM)
    reencryption_run(job_id=str(job.pk))
    assert assert_exact(tenant) == {third.pk: 148}
    assert DataKey.objects.get(pk=first.pk).state in (DekState.RETIRED, DekState.DESTROYED)
    assert sum(assert_exact(other).values()) == 7


@pytest.mark.django_db(transaction=True)
def test_a_statement_moving_rows_between_deks_counts_both_sides(db) -> None:
    """Whatever runs the UPDATE (here raw SQL, as bulk work does), both DEKs follow."""
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    records_create(tenant=tenant, items=list(synthetic_records(20)))
    first = DataKey.objects.get(tenant=tenant)
    second = rotate(tenant)
    moved = list(
        SealedFields.objects.filter(dek=first)
        .order_by("record_id")
        .values_list("record_id", flat=True)[:8]
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {SealedFields._meta.db_table} SET dek_id = %s WHERE record_id = ANY(%s)",
            [second.pk, moved],
        )
        # An UPDATE that leaves the DEK as it was changes no count.
        cursor.execute(
            f"UPDATE {SealedFields._meta.db_table} SET pii = pii WHERE dek_id = %s", [first.pk]
        )
    assert assert_exact(tenant) == {first.pk: 12, second.pk: 8}


def test_the_page_reads_a_few_counter_rows_not_the_records(db, django_assert_num_queries) -> None:
    tenant = tenant_create(name="Initech", slug="initech", actor=SYSTEM)
    records_create(tenant=tenant, items=list(synthetic_records(200)))
    # However many records: a DEK has at most one counter row per slot.
    assert DekRecordCount.objects.filter(dek__tenant=tenant).count() <= 8
    with django_assert_num_queries(1):
        assert sum(record_counts_by_dek(tenant).values()) == 200
