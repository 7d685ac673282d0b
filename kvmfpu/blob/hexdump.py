"""Bytes back from hex text: plain hex, ``xxd``, ``od -A x -t x1`` and gdb ``x/NNxb``.

Each dialect is recognised from its line shape; offsets in the dump are checked to be
contiguous (od's ``*`` lines repeat the previous line up to the next offset).
"""

from __future__ import annotations

import re

from kvmfpu.blob.errors import InputError

_XXD = re.compile(r"^([0-9a-fA-F]{4,16}):((?: [0-9a-fA-F]{2,4})+)(?:  .*)?$")
_OD = re.compile(r"^([0-9a-fA-F]{6,16})((?: [0-9a-fA-F]{2})*)\s*$")
_GDB = re.compile(r"^(0x[0-9a-fA-F]+)(?: <[^>]*>)?:\s*((?:0x[0-9a-fA-F]{1,2}\s*)+)$")
_PLAIN = re.compile(r"^(?:0x)?[0-9a-fA-F\s]+$")


_TEXT = re.compile(rb"[\x20-\x7e\t\r\n]*")


def looks_like_text(data: bytes) -> bool:
    """Printable ASCII throughout (so it decodes as ASCII)."""
    return bool(data) and _TEXT.fullmatch(data) is not None


def dialect(text: str) -> str:
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InputError("the text holds no hex bytes")
    first = lines[0]
    if _GDB.match(first):
        return "gdb"
    if _XXD.match(first):
        return "xxd"
    if _OD.match(first) and len(lines) > 1 and all(_OD.match(ln) or ln == "*" for ln in lines):
        return "od"
    if all(_PLAIN.match(ln) for ln in lines):
        return "hex"
    raise InputError(f"not a hex dump kvmfpu knows (plain hex, xxd, od -A x -t x1, gdb x/xb): "
                     f"line 1 is {first[:60]!r}")


def parse(text: str, kind: str | None = None, max_size: int = 256 << 20) -> bytes:
    """The dumped bytes; od's ``*`` may not expand them past ``max_size``."""
    kind = kind or dialect(text)
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    if kind == "hex":
        digits = re.sub(r"0x|\s", "", "".join(lines))
        if len(digits) % 2:
            raise InputError(f"odd number of hex digits ({len(digits)})")
        try:
            return bytes.fromhex(digits)
        except ValueError as exc:
            raise InputError(f"not plain hex: {exc}") from None
    if kind == "xxd":
        return _offset_lines(lines, _XXD, kind, lambda g: bytes.fromhex(g.replace(" ", "")))
    if kind == "gdb":
        return _offset_lines(lines, _GDB, kind,
                             lambda g: bytes(int(t, 16) for t in g.split()))
    if kind == "od":
        return _od(lines, max_size)
    raise InputError(f"unknown hex dialect {kind!r}")


def _offset_lines(lines: list[str], rx: re.Pattern[str], kind: str, decode: object) -> bytes:
    out = bytearray()
    start: int | None = None
    for n, line in enumerate(lines, 1):
        m = rx.match(line)
        if not m:
            raise InputError(f"{kind} dump, line {n}: cannot read {line[:60]!r}")
        off = int(m.group(1), 16)
        if start is None:
            start = off
        if off - start != len(out):
            raise InputError(f"{kind} dump, line {n}: offset {off:#x} does not follow the "
                             f"previous line (expected {start + len(out):#x})")
        try:
            out += decode(m.group(2))  # type: ignore[operator]
        except ValueError:
            raise InputError(f"{kind} dump, line {n}: {m.group(2).strip()[:40]!r} is not "
                             "whole bytes of hex") from None
    return bytes(out)


def _od(lines: list[str], max_size: int) -> bytes:
    out = bytearray()
    previous = b""
    repeat = False
    for n, line in enumerate(lines, 1):
        if line == "*":
            repeat = True
            continue
        m = _OD.match(line)
        if not m:
            raise InputError(f"od dump, line {n}: cannot read {line[:60]!r}")
        off = int(m.group(1), 16)
        if off > max_size:
            raise InputError(f"od dump, line {n}: offset {off:#x} is past the {max_size}-byte "
                             "limit (--max-size)")
        if repeat:
            if not previous or (off - len(out)) % len(previous):
                raise InputError(f"od dump, line {n}: '*' does not fill up to {off:#x}")
            out += previous * ((off - len(out)) // len(previous))
            repeat = False
        if off != len(out):
            raise InputError(f"od dump, line {n}: offset {off:#x} does not follow "
                             f"(expected {len(out):#x}; is it od -A x?)")
        data = bytes(int(t, 16) for t in m.group(2).split())
        out += data
        if data:
            previous = data
    return bytes(out)
