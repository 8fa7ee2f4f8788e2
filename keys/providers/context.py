from __future__ import annotations

from collections.abc import Mapping


def encode_context(context: Mapping[str, str]) -> bytes:
    """Unambiguous bytes for a context: sorted, each key and value length-prefixed."""
    out = bytearray()
    for key in sorted(context):
        for part in (key.encode(), str(context[key]).encode()):
            out += len(part).to_bytes(2, "big")
            out += part
    return bytes(out)
