"""The registry through which keys learn of the data apps."""

from __future__ import annotations

import pytest

from keys.consumers import DataConsumer, consumer, consumer_register, consumers


def test_a_consumer_with_jobs_must_say_which_are_open() -> None:
    before = consumers()
    half = DataConsumer(
        name="half",
        counts_by_dek=lambda tenant: {},
        depends_on=lambda dek: False,
        jobs=lambda tenant: [],
    )
    with pytest.raises(ValueError, match="lists jobs but not which are open"):
        consumer_register(half)
    assert consumer("half") is None
    assert consumers() == before


def test_the_records_consumer_says_both() -> None:
    records = consumer("records")
    assert records is not None
    assert records.jobs is not None and records.open_jobs is not None
