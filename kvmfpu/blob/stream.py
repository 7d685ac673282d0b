"""A capture read as a stream: exact reads, a look at the first bytes without consuming them,
and skips that seek on files and read-and-drop on pipes, so a multi-GB input is never held.

``Source`` wraps any object with ``read(n)`` (a file, standard input, a decompressor). Its
positions count bytes of *this* stream; ``base`` is where the stream starts in the file
underneath (a libvirt save image's QEMU stream starts after libvirt's header), for formats
whose offsets are file offsets (mapped-ram).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any, Final, Protocol

from kvmfpu.blob.errors import InputError

#: What one read or drop asks for: large enough to stream at disk speed, small in memory.
CHUNK: Final = 1 << 20


class Readable(Protocol):
    """A binary file or stream (a file, sys.stdin.buffer, a GzipFile)."""

    def read(self, size: int = -1, /) -> bytes: ...


class Source:
    """``raw`` read forward from its current position (``pos`` 0)."""

    def __init__(
        self,
        raw: Readable,
        name: str,
        *,
        size: int | None = None,
        seekable: bool = False,
        base: int = 0,
        close: Callable[[], None] | None = None,
    ):
        self.raw = raw
        self.name = name
        #: The stream's length when it is known (a plain file: its size less ``base``).
        self.size = size
        self.seekable = seekable
        self.base = base
        self.pos = 0
        #: Bytes read from ``raw`` but not yet consumed: ``_head[_at:]`` (peeked, or read
        #: ahead on a stream that cannot seek, so small reads are not one call each).
        self._head = b""
        self._at = 0
        self._close = close
        self._marks: list[bytearray] = []
        self._mark_limit = 0

    # -- reading ---------------------------------------------------------------------------

    def _raw_read(self, n: int) -> bytes:
        out = self.raw.read(n)
        return out if out else b""

    def read_some(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the stream)."""
        if n <= 0:
            return b""
        if self._at == len(self._head) and (self.seekable or n >= CHUNK):
            out = self._fill(n)
        else:
            self._buffer(n)
            out = self._head[self._at : self._at + n]
            self._at += len(out)
        self.pos += len(out)
        for mark in self._marks:
            mark += out
            if len(mark) > self._mark_limit:
                raise InputError(
                    f"{self.name}: the part of the stream kept for decoding exceeds the "
                    f"{self._mark_limit}-byte limit (--max-size)"
                )
        return out

    def _buffer(self, n: int) -> None:
        """At least ``n`` unconsumed bytes in ``_head`` (fewer at the end of the stream);
        a stream that cannot seek reads ahead CHUNK bytes at once (a migration stream's
        RAM is read a record at a time: one decompressor call per record was the cost)."""
        have = len(self._head) - self._at
        if have >= n:
            return
        more = self._fill(n - have if self.seekable else max(n - have, CHUNK))
        self._head = self._head[self._at :] + more
        self._at = 0

    def _fill(self, n: int) -> bytes:
        parts = []
        while n > 0:
            chunk = self._raw_read(min(n, CHUNK))
            if not chunk:
                break
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def read(self, n: int, what: str = "stream") -> bytes:
        """Exactly ``n`` bytes, or InputError naming where the stream stopped."""
        if n < 0:
            raise InputError(f"{self.name}: a negative length ({n}) in the {what}")
        out = self.read_some(n)
        if len(out) < n:
            raise InputError(f"{self.name}: truncated {what} at byte {self.pos} (wanted {n - len(out)} more)")
        return out

    def uint(self, n: int, what: str = "stream") -> int:
        """A big-endian integer of ``n`` bytes (QEMU's qemu_get_be*)."""
        return int.from_bytes(self.read(n, what), "big")

    def peek(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end), left unread."""
        self._buffer(n)
        return self._head[self._at : self._at + n]

    def at_end(self) -> bool:
        return not self.peek(1)

    def read_rest(self, limit: int, what: str) -> bytes:
        """Everything left, at most ``limit`` bytes (InputError past it)."""
        parts: list[bytes] = []
        total = 0
        while True:
            chunk = self.read_some(min(CHUNK, limit + 1 - total))
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                raise InputError(f"{what} exceeds the {limit}-byte limit (--max-size)")

    # -- moving ----------------------------------------------------------------------------

    def skip(self, n: int, what: str = "stream") -> None:
        """Move ``n`` bytes forward without keeping them: a seek on a file, reads of at most
        CHUNK bytes dropped at once on a pipe."""
        if n < 0:
            raise InputError(f"{self.name}: a negative length ({n}) in the {what}")
        if self.seekable and not self._marks:
            if self.size is not None and self.pos + n > self.size:
                raise InputError(
                    f"{self.name}: truncated {what} at byte {self.size} "
                    f"(wanted {self.pos + n - self.size} more)"
                )
            self.seek(self.pos + n)
            return
        left = n
        while left:
            got = len(self.read_some(min(left, CHUNK)))
            if not got:
                raise InputError(f"{self.name}: truncated {what} at byte {self.pos} (wanted {left} more)")
            left -= got

    def seek(self, pos: int) -> None:
        """Go to ``pos`` (seekable streams only)."""
        if not self.seekable:
            raise InputError(f"{self.name}: cannot seek in this stream")
        raw: Any = self.raw  # a seekable file object
        raw.seek(self.base + pos)
        self.pos = pos
        self._head, self._at = b"", 0

    def pread(self, pos: int, n: int) -> bytes:
        """``n`` bytes at ``pos``, the position kept (seekable streams only)."""
        here = self.pos
        self.seek(pos)
        try:
            return self.read(n)
        finally:
            self.seek(here)

    # -- keeping what is read --------------------------------------------------------------

    def mark(self, limit: int) -> bytearray:
        """Keep every byte read from now on (at most ``limit``) in the returned buffer until
        ``unmark``: on a pipe, what cannot be decoded yet is kept, nothing more."""
        buf = bytearray()
        self._marks.append(buf)
        self._mark_limit = limit
        return buf

    def unmark(self) -> None:
        self._marks.pop()

    def close(self) -> None:
        if self._close is not None:
            close, self._close = self._close, None
            close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def of_bytes(data: bytes, name: str = "input") -> Source:
    """The bytes as a seekable stream."""
    return Source(io.BytesIO(data), name, size=len(data), seekable=True)


def of_file(fd: int, name: str, size: int) -> Source:
    """An open regular file (the descriptor is the Source's to close)."""
    f = os.fdopen(fd, "rb", buffering=CHUNK)
    return Source(f, name, size=size, seekable=True, close=f.close)


def sub(src: Source, name: str | None = None) -> Source:
    """The rest of ``src`` as a stream of its own, positions counted from here (a libvirt
    image's QEMU stream). Seeks go to the same file, ``base`` past the header."""
    size = None if src.size is None else src.size - src.pos
    if src.seekable:
        src.seek(src.pos)  # drops what was peeked: the file is where the child starts
        return Source(src.raw, name or src.name, size=size, seekable=True, base=src.base + src.pos)
    return Source(_Tail(src), name or src.name, size=size)


class _Tail:
    """Reads of a Source's remainder (for a stream that continues a non-seekable one)."""

    def __init__(self, src: Source):
        self.src = src

    def read(self, size: int = -1, /) -> bytes:
        return self.src.read_some(CHUNK if size < 0 else size)
