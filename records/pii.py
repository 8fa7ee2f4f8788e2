"""The plaintext layout of a record's personal fields before encryption.

All personal fields of a record are sealed as ONE value: re-encryption then
costs one decrypt and one encrypt per record, not one per field, and a row
is rewritten with one column. The layout is a sequence of (name, value)
pairs, names sorted, each length-prefixed (2-byte name, 4-byte value); no
JSON, nothing to parse ambiguously.
"""

from __future__ import annotations

import struct

_NAME = struct.Struct(">H")
_VALUE = struct.Struct(">I")


class PiiDecodeError(ValueError):
    pass


def encode_fields(fields: dict[str, str]) -> bytes:
    out = bytearray()
    for name in sorted(fields):
        raw_name, raw_value = name.encode(), fields[name].encode()
        out += _NAME.pack(len(raw_name)) + raw_name + _VALUE.pack(len(raw_value)) + raw_value
    return bytes(out)


def decode_fields(data: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    offset, end = 0, len(data)
    try:
        while offset < end:
            (size,) = _NAME.unpack_from(data, offset)
            offset += _NAME.size
            name = data[offset : offset + size].decode()
            offset += size
            (size,) = _VALUE.unpack_from(data, offset)
            offset += _VALUE.size
            if offset + size > end:
                raise PiiDecodeError("field value runs past the end")
            fields[name] = data[offset : offset + size].decode()
            offset += size
    except (struct.error, UnicodeDecodeError) as exc:
        raise PiiDecodeError(f"malformed personal fields: {exc}") from None
    return fields
