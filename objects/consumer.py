"""What the objects app tells keys about the data it keeps (keys.consumers)."""

from __future__ import annotations

from keys.consumers import DataConsumer, DataMove, DataUnavailable, ReencryptionResult
from keys.models import DataKey
from objects.models import OPEN_MIGRATION_STATES, ObjectMigration, StoredObject
from objects.moves import objects_move_begin, objects_move_next, objects_move_retry
from objects.selectors import last_move_summary, object_counts_by_dek
from objects.services import object_checksums_shred, objects_reencrypt_pass
from objects.storage import StorageError
from tenants.models import Tenant


def _depends_on(dek: DataKey) -> bool:
    """Objects are under it, or a move of objects is writing under it."""
    return (
        StoredObject.objects.filter(dek=dek).exists()
        or ObjectMigration.objects.filter(target_dek=dek, state__in=OPEN_MIGRATION_STATES).exists()
    )


def _reencrypt(tenant: Tenant, target: DataKey) -> ReencryptionResult:
    try:
        rewritten, left = objects_reencrypt_pass(tenant)
    except StorageError as exc:
        raise DataUnavailable(f"object storage: {exc}") from exc
    return ReencryptionResult(rewritten=rewritten, left=left)


OBJECTS = DataConsumer(
    name="objects",
    counts_by_dek=object_counts_by_dek,
    depends_on=_depends_on,
    reencrypt=_reencrypt,
    data_move=DataMove(
        begin=objects_move_begin,
        next=objects_move_next,
        retry=objects_move_retry,
        summary=last_move_summary,
    ),
    shred=object_checksums_shred,
)
