"""Just enough of the protobuf wire format to move big float arrays without Python lists.

`BlobProto.data` holds millions of floats in a caffemodel. Copying them element by element
through the protobuf API builds one Python float each; reading or writing the packed field's
bytes with numpy is about ten times faster and needs no temporary list.
"""
from __future__ import annotations

from typing import Iterator

LEN = 2  # wire type of length-delimited fields (messages, strings, packed arrays)


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode the varint at `pos`; return (value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """Yield (number, wire type, field start, payload start, end) for each field of `buf`."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        payload = pos
        if wire == 0:
            _, pos = read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == LEN:
            size, payload = read_varint(buf, pos)
            pos = payload + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated field")
        yield number, wire, start, payload, pos


def len_field(number: int, payload: bytes) -> bytes:
    """Encode a length-delimited field."""
    return encode_varint((number << 3) | LEN) + encode_varint(len(payload)) + payload
