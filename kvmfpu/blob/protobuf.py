"""A bounded reader of the protobuf wire format (protobuf.dev/programming-guides/encoding),
enough for CRIU's images: no schema, no dependency.

A message is read into ``{field number: [values]}``: varints and fixed32/fixed64 as ints,
length-delimited fields as bytes (a sub-message, a string or a packed repeated field: the
schema, i.e. the caller, decides). Every length is checked against the bytes that remain,
so a message never allocates more than its own size; groups (wire types 3 and 4, obsolete
since proto2) and anything else unknown are refused.
"""

from __future__ import annotations

from typing import Final

from kvmfpu.blob.errors import InputError

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
#: A varint holds at most 64 bits: 10 bytes of 7 bits.
MAX_VARINT_BYTES: Final = 10
U64: Final = (1 << 64) - 1

Fields = dict[int, list[int | bytes]]


def _varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    value = shift = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise InputError(f"{what}: a varint is truncated at byte {pos + i}")
        b = data[pos + i]
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value & U64, pos + i + 1
    raise InputError(f"{what}: a varint at byte {pos} is longer than {MAX_VARINT_BYTES} bytes")


def parse(data: bytes, what: str = "protobuf message") -> Fields:
    """The fields of one message, in wire order per field number."""
    out: Fields = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos, what)
        number, wire = key >> 3, key & 7
        if number == 0 or number > (1 << 29) - 1:
            raise InputError(f"{what}: field number {number} is not a protobuf field number")
        value: int | bytes
        if wire == VARINT:
            value, pos = _varint(data, pos, what)
        elif wire in (I64, I32):
            n = 8 if wire == I64 else 4
            if pos + n > len(data):
                raise InputError(f"{what}: field {number} is truncated at byte {pos}")
            value = int.from_bytes(data[pos : pos + n], "little")
            pos += n
        elif wire == LEN:
            size, pos = _varint(data, pos, what)
            if size > len(data) - pos:
                raise InputError(
                    f"{what}: field {number} declares {size} bytes where {len(data) - pos} remain"
                )
            value = data[pos : pos + size]
            pos += size
        else:
            kind = "groups" if wire in (SGROUP, EGROUP) else f"wire type {wire}"
            raise InputError(f"{what}: field {number} uses {kind}, which kvmfpu does not read")
        out.setdefault(number, []).append(value)
    return out


def scalar(fields: Fields, number: int, what: str, *, bits: int = 64, default: int | None = None) -> int:
    """The last value of a scalar field (protobuf: the last one wins), truncated to ``bits``
    as a C reader casts it; InputError when it is required and absent."""
    values = fields.get(number)
    if not values:
        if default is None:
            raise InputError(f"{what} is missing")
        return default
    v = values[-1]
    if isinstance(v, bytes):
        raise InputError(f"{what} is length-delimited, not a number")
    return v & ((1 << bits) - 1)


def message(fields: Fields, number: int, what: str) -> Fields | None:
    """A sub-message field, parsed (None when absent). Repeated occurrences of a message
    field merge, which for the fields kvmfpu reads means the last scalar wins and repeated
    fields concatenate."""
    values = fields.get(number)
    if not values:
        return None
    merged: Fields = {}
    for v in values:
        if not isinstance(v, bytes):
            raise InputError(f"{what} is a number, not a message")
        for k, vs in parse(v, what).items():
            merged.setdefault(k, []).extend(vs)
    return merged


def repeated(fields: Fields, number: int, what: str, *, width: int) -> list[int]:
    """A repeated integer field, packed or not (readers must accept both): varints for
    ``width`` 0, else little-endian fixed ``width``-byte words; 32-bit varint fields keep
    their low 32 bits."""
    out: list[int] = []
    for v in fields.get(number, []):
        if isinstance(v, int):
            out.append(v)
            continue
        if width:
            if len(v) % width:
                raise InputError(f"{what}: a packed run of {len(v)} bytes is not {width}-byte words")
            out += [int.from_bytes(v[i : i + width], "little") for i in range(0, len(v), width)]
            continue
        pos = 0
        while pos < len(v):
            value, pos = _varint(v, pos, what)
            out.append(value)
    return out
