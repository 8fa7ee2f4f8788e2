"""What the records app tells keys about the data it keeps (keys.consumers)."""

from __future__ import annotations

from keys.consumers import DataConsumer, OwnWrappedKeys
from records.indexkeys import (
    index_key_replace,
    index_keys_move,
    index_keys_shred,
    index_keys_wrapped,
)
from records.reencryption import CONSUMER
from records.selectors import (
    open_reencryption_jobs,
    record_counts_by_dek,
    reencryption_jobs,
    sealed_under,
)

RECORDS = DataConsumer(
    name=CONSUMER,
    counts_by_dek=record_counts_by_dek,
    depends_on=sealed_under,
    # Records are re-encrypted by the job itself (records.reencryption), which
    # then asks the other consumers for theirs.
    reencrypt=None,
    move_wrapped_keys=index_keys_move,
    wrapped_keys=OwnWrappedKeys(of=index_keys_wrapped, replace=index_key_replace),
    shred=index_keys_shred,
    jobs=reencryption_jobs,
    open_jobs=open_reencryption_jobs,
)
