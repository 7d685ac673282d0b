"""A bounded CBOR decoder (RFC 8949) for the snapshot fragments crosvm writes with ciborium.

kvmfpu's own rather than cbor2: what it needs is small (maps, arrays, integers, byte and
text strings, simple values, floats), and what matters is the bound — every declared length
is checked against the bytes that remain before anything is allocated, nesting is limited,
and indefinite-length items (which ciborium's serializer does not write for the structs and
Vecs kvmfpu reads) are refused. Tags are read and dropped (ciborium writes none for them).
"""

from __future__ import annotations

import struct
from typing import Any, Final

from kvmfpu.blob.errors import InputError

MAX_DEPTH: Final = 64


class _Reader:
    def __init__(self, data: bytes, what: str):
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise InputError(
                f"{self.what}: CBOR item at byte {self.pos} wants {n} bytes where "
                f"{len(self.data) - self.pos} remain"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def head(self) -> tuple[int, int, int]:
        start = self.pos
        (b,) = self.take(1)
        major, info = b >> 5, b & 0x1F
        if info < 24:
            return major, info, start
        if info in (24, 25, 26, 27):
            return major, int.from_bytes(self.take(1 << (info - 24)), "big"), start
        if info == 31:
            raise InputError(
                f"{self.what}: indefinite-length CBOR item at byte {start} (crosvm's ciborium writes none)"
            )
        raise InputError(f"{self.what}: reserved CBOR additional info {info} at byte {start}")

    def item(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise InputError(f"{self.what}: CBOR nested more than {MAX_DEPTH} deep")
        major, arg, start = self.head()
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            return self.take(arg)
        if major == 3:
            try:
                return self.take(arg).decode("utf-8")
            except UnicodeDecodeError:
                raise InputError(f"{self.what}: CBOR text at byte {start} is not UTF-8") from None
        if major == 4:
            # Each item is at least one byte: a count past the rest cannot be real.
            if arg > len(self.data) - self.pos:
                raise InputError(
                    f"{self.what}: CBOR array of {arg} items at byte {start} in "
                    f"{len(self.data) - self.pos} bytes"
                )
            return [self.item(depth + 1) for _ in range(arg)]
        if major == 5:
            if 2 * arg > len(self.data) - self.pos:
                raise InputError(
                    f"{self.what}: CBOR map of {arg} pairs at byte {start} in "
                    f"{len(self.data) - self.pos} bytes"
                )
            out: dict[Any, Any] = {}
            for _ in range(arg):
                key = self.item(depth + 1)
                if isinstance(key, (list, dict)):
                    raise InputError(f"{self.what}: a CBOR map key at byte {start} is a container")
                out[key] = self.item(depth + 1)
            return out
        if major == 6:
            return self.item(depth + 1)  # a tag: its content
        return self._simple(arg, start)

    def _simple(self, arg: int, start: int) -> Any:
        info = self.data[start] & 0x1F
        if info == 25:
            return struct.unpack(">e", arg.to_bytes(2, "big"))[0]
        if info == 26:
            return struct.unpack(">f", arg.to_bytes(4, "big"))[0]
        if info == 27:
            return struct.unpack(">d", arg.to_bytes(8, "big"))[0]
        return {20: False, 21: True, 22: None, 23: None}.get(arg, ("simple", arg))


def loads(data: bytes, what: str = "CBOR") -> Any:
    """The one CBOR item ``data`` holds (trailing bytes are refused)."""
    r = _Reader(data, what)
    value = r.item()
    if r.pos != len(data):
        raise InputError(f"{what}: {len(data) - r.pos} bytes after the CBOR item")
    return value
