"""Strategies and budgets shared by the property tests of hostile input."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from tests.conftest import HYPOTHESIS_PROFILE

SCALE = 20 if HYPOTHESIS_PROFILE == "long" else 1


def examples(count: int) -> int:
    """`count` examples in `make test`, twenty times as many in the long profile."""
    return count * SCALE


def mutated(original: bytes) -> st.SearchStrategy[bytes]:
    """A valid input damaged the ways files get damaged: cut, flipped, spliced, padded."""

    def flip(data: bytes, at: int, mask: int) -> bytes:
        if not data:
            return data
        at %= len(data)
        return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]

    size = len(original)
    return st.one_of(
        st.integers(0, size).map(lambda n: original[:n]),
        st.integers(0, size).map(lambda n: original[n:]),
        st.tuples(st.integers(0, max(size - 1, 0)), st.integers(1, 255)).map(
            lambda t: flip(original, *t)
        ),
        st.tuples(st.integers(0, size), st.binary(max_size=64)).map(
            lambda t: original[: t[0]] + t[1] + original[t[0] :]
        ),
        st.binary(max_size=64).map(lambda junk: original + junk),
    )


# Any JSON document; text includes the characters that break naive parsers.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def as_json(value: Any) -> str:
    return json.dumps(value)
