from __future__ import annotations

import pytest
from django.db import transaction

from audit.models import AuditEvent
from audit.services import Actor
from keys.models import DataKey, DekState
from keys.runtime import envelope, flush_counts, reset_for_tests
from records.services import records_create
from records.synthetic import synthetic_records
from tenants.services import tenant_create

FIELDS_PER_RECORD = 1  # all personal fields of a record are sealed as one value


@pytest.fixture(autouse=True)
def _fresh_envelope():
    reset_for_tests()
    yield
    reset_for_tests()


def test_counts_are_kept_in_memory_and_flushed_in_one_batch(db, django_assert_max_num_queries):
    tenant = tenant_create(name="Initech", slug="initech", actor=Actor.system("tests"))
    records_create(tenant=tenant, items=list(synthetic_records(100)))
    dek = DataKey.objects.get(tenant=tenant)
    assert dek.encryption_count == 0  # nothing written per encryption
    assert dek.encryptions_reserved >= 100 * FIELDS_PER_RECORD  # reserved up front
    with django_assert_max_num_queries(1):
        flush_counts()
    dek.refresh_from_db()
    assert dek.encryption_count == 100 * FIELDS_PER_RECORD
    flush_counts()  # nothing new: no double count
    dek.refresh_from_db()
    assert dek.encryption_count == 100 * FIELDS_PER_RECORD


def test_a_rolled_back_reservation_is_made_good_at_the_next_flush(db) -> None:
    """The caller's rollback undoes the reservation, not the encryptions it covered."""
    tenant = tenant_create(name="Initech", slug="initech", actor=Actor.system("tests"))
    with pytest.raises(RuntimeError), transaction.atomic():
        records_create(tenant=tenant, items=list(synthetic_records(100)))
        raise RuntimeError("the caller fails after encrypting")
    dek = DataKey.objects.get(tenant=tenant)
    assert dek.encryptions_reserved == 0  # rolled back with the caller
    flush_counts()
    dek.refresh_from_db()
    assert dek.encryption_count == 100 * FIELDS_PER_RECORD
    assert dek.encryptions_reserved == 100 * FIELDS_PER_RECORD
    # The process goes on spending the block it still holds; each flush keeps
    # the reserved figure up with the count...
    records_create(tenant=tenant, items=list(synthetic_records(10, seed=1, prefix="x-")))
    flush_counts()
    dek.refresh_from_db()
    assert dek.encryption_count == dek.encryptions_reserved == 110 * FIELDS_PER_RECORD
    # ...and never lowers a reserved figure that is above it.
    DataKey.objects.filter(pk=dek.pk).update(encryptions_reserved=5_000)
    records_create(tenant=tenant, items=list(synthetic_records(5, seed=2, prefix="y-")))
    flush_counts()
    dek.refresh_from_db()
    assert (dek.encryption_count, dek.encryptions_reserved) == (115 * FIELDS_PER_RECORD, 5_000)


def test_a_dek_never_exceeds_its_limit_and_is_rotated(transactional_db, settings) -> None:
    # Committed transactions: each rotation is published to every process (Redis) on
    # commit, as in production; inside one uncommitted test transaction a refresh of
    # the key state after its interval would read the state from before the rotations.
    settings.KEYWARD_DEK_MAX_ENCRYPTIONS = 2_000
    settings.KEYWARD_DEK_RESERVATION_BLOCK = 500
    reset_for_tests()
    tenant = tenant_create(name="Initech", slug="initech", actor=Actor.system("tests"))
    for batch in range(6):  # 6 x 900 records = 5,400 encryptions
        records_create(
            tenant=tenant, items=list(synthetic_records(900, seed=batch, prefix=f"{batch}-"))
        )
    flush_counts()
    deks = list(DataKey.objects.filter(tenant=tenant).order_by("version"))
    assert len(deks) >= 3
    assert all(d.encryptions_reserved <= 2_000 for d in deks)
    assert all(d.encryption_count <= 2_000 for d in deks)
    assert sum(d.encryption_count for d in deks) == 5_400
    assert [d.state for d in deks][-1] == DekState.ACTIVE
    assert AuditEvent.objects.filter(tenant=tenant, action="dek.rotate").exists()
    assert envelope().state(str(tenant.pk)).current_dek_id == deks[-1].pk
