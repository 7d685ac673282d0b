"""Read xsave state from what users capture: raw KVM_GET_XSAVE/KVM_GET_XSAVE2 buffers, hex
dumps, ELF core files (NT_X86_XSTATE, one per thread, NT_X86_XSAVE_LAYOUT when present),
Linux signal-frame fpstate, and QEMU migration streams; any of them gzip-, xz- or
bzip2-compressed (``migrate "exec:gzip -c > f"`` is how streams are often kept).

``read`` detects the format (``--format`` overrides it) and returns one ``Capture`` per
xsave image found. Files larger than ``max_size`` are refused before being read, and so is
compressed input that would expand past it.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from kvmfpu.blob import hexdump
from kvmfpu.blob.errors import InputError

if TYPE_CHECKING:
    from kvmfpu.arch.layout import XsaveLayout

FORMATS: Final = ("raw", "hex", "xxd", "od", "gdb", "core", "sigframe", "qemu")
MAX_SIZE: Final = 256 << 20
FP_XSTATE_MAGIC1: Final = 0x46505853
FP_XSTATE_MAGIC2: Final = 0x46505845
NT_PRSTATUS: Final = 1
NT_X86_XSTATE: Final = 0x202
NT_X86_XSAVE_LAYOUT: Final = 0x205
QEMU_VM_FILE_MAGIC: Final = b"QEVM"


@dataclass
class Capture:
    """One xsave image and what its container says about it."""

    data: bytes
    origin: str                        # "raw", "core thread 1234", "signal frame", ...
    fmt: str
    xcr0_hint: int | None = None       # the user xfeature mask the container reports
    layout_note: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # bit: (size, offset, flags)
    extra: dict[str, int] = field(default_factory=dict)   # e.g. xfd, xfd_err from QEMU
    notes: list[str] = field(default_factory=list)         # what the container tells us
    # QEMU streams carry fields, not a buffer: build it for another host's layout.
    rebuild: Callable[[XsaveLayout], bytes] | None = None
    reference_host: str | None = None


def read_bytes(path: str | os.PathLike[str], max_size: int = MAX_SIZE) -> bytes:
    """The file's bytes, refusing directories, unreadable paths and oversized files
    without reading them."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    if not os.path.isfile(path):
        raise InputError(f"{path}: not a regular file")
    if st.st_size > max_size:
        raise InputError(f"{path}: {st.st_size} bytes is more than the {max_size}-byte limit "
                         "(--max-size)")
    try:
        with open(path, "rb") as f:
            return f.read(max_size + 1)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None


_COMPRESSED: Final = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bzip2"))


def decompress(data: bytes, max_size: int = MAX_SIZE) -> tuple[bytes, str | None]:
    """``data`` expanded when it is gzip, xz or bzip2 (with the compression's name), else
    as is. Expansion stops past ``max_size``: a small file cannot fill memory."""
    kind = next((name for magic, name in _COMPRESSED if data.startswith(magic)), None)
    if kind is None or (kind == "bzip2" and not data[3:4].isdigit()):   # "BZh1".."BZh9"
        return data, None
    try:
        opener, errors = _opener(kind)
    except ImportError:
        raise InputError(f"{kind}-compressed input, and this Python lacks the {kind} "
                         "module") from None
    try:
        with opener(io.BytesIO(data)) as stream:
            out = stream.read(max_size + 1)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise InputError(f"{kind}-compressed input does not expand: {exc}") from None
    except errors as exc:
        raise InputError(f"{kind}-compressed input does not expand: {exc}") from None
    if len(out) > max_size:
        raise InputError(f"{kind}-compressed input expands past the {max_size}-byte limit "
                         "(--max-size)")
    return out, kind


def _opener(kind: str) -> tuple[Callable[[io.BytesIO], io.BufferedIOBase],
                                 tuple[type[Exception], ...]]:
    """The stdlib reader and its own error types; lzma and bz2 are optional in Python
    builds, so they are imported here."""
    if kind == "gzip":
        return (lambda f: gzip.GzipFile(fileobj=f)), ()
    if kind == "xz":
        import lzma
        return (lambda f: lzma.LZMAFile(f)), (lzma.LZMAError,)
    import bz2
    return (lambda f: bz2.BZ2File(f)), ()


def detect(data: bytes) -> str:
    if not data:
        raise InputError("the input is empty")
    if data[:4] == b"\x7fELF":
        return "core"
    if data[:4] == QEMU_VM_FILE_MAGIC:
        return "qemu"
    if hexdump.looks_like_text(data):
        return hexdump.dialect(data.decode("ascii"))
    if _sigframe_size(data) is not None:
        return "sigframe"
    return "raw"


def read(source: str | os.PathLike[str] | bytes, fmt: str | None = None,
         max_size: int = MAX_SIZE) -> list[Capture]:
    """Every xsave image in ``source`` (a path or the bytes themselves)."""
    data = source if isinstance(source, bytes) else read_bytes(source, max_size)
    if len(data) > max_size:
        raise InputError(f"{len(data)} bytes is more than the {max_size}-byte limit (--max-size)")
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    data, compression = decompress(data, max_size)
    if compression is not None:
        caps = read(data, fmt, max_size)
        for c in caps:
            c.notes.insert(0, f"{compression}-compressed input")
        return caps
    kind = fmt or detect(data)
    if kind == "raw":
        return [Capture(data, "raw buffer", "raw", _xcr0_at_464(data))]
    if kind in ("hex", "xxd", "od", "gdb"):
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise InputError(f"--format {kind}: the input is not text") from None
        blob = hexdump.parse(text, kind, max_size)
        inner = detect(blob) if blob else "raw"
        if inner in ("core", "qemu", "sigframe"):
            return read(blob, inner, max_size)
        return [Capture(blob, f"{kind} dump", kind, _xcr0_at_464(blob))]
    if kind == "sigframe":
        return [_sigframe(data)]
    if kind == "core":
        return _core(data)
    from kvmfpu.blob import qemu
    return qemu.captures(data)


def _xcr0_at_464(data: bytes) -> int | None:
    """KVM_GET_XSAVE and NT_X86_XSTATE put the host's user xfeatures at byte 464 (the
    first sw_reserved word); a plausible value has x87 and SSE set."""
    if len(data) < 472:
        return None
    value = int(struct.unpack_from("<Q", data, 464)[0])
    return value if value & 3 == 3 and value >> 63 == 0 else None


def _sigframe_size(data: bytes) -> int | None:
    if len(data) < 512 + 64:
        return None
    magic1, _extended, _xfeatures, xstate_size = struct.unpack_from("<IIQI", data, 464)
    if magic1 != FP_XSTATE_MAGIC1 or not 576 <= xstate_size <= len(data) - 4:
        return None
    if struct.unpack_from("<I", data, xstate_size)[0] != FP_XSTATE_MAGIC2:
        return None
    return int(xstate_size)


def _sigframe(data: bytes) -> Capture:
    size = _sigframe_size(data)
    if size is None:
        raise InputError("not a signal-frame fpstate: FP_XSTATE_MAGIC1 at 464 and "
                         "FP_XSTATE_MAGIC2 after the xsave area are required")
    xfeatures = int(struct.unpack_from("<Q", data, 472)[0])
    return Capture(data[:size], "signal frame", "sigframe", xfeatures)


def _core(data: bytes) -> list[Capture]:
    try:
        from elftools.common.exceptions import ELFError
        from elftools.construct.core import ConstructError
        from elftools.elf.elffile import ELFFile
        from elftools.elf.segments import NoteSegment
    except ImportError:      # pragma: no cover - pyelftools is a dependency
        raise InputError("reading core files needs pyelftools") from None
    out: list[Capture] = []
    layout: dict[int, tuple[int, int, int]] = {}
    pid: int | None = None
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf["e_type"] != "ET_CORE":
            raise InputError(f"an ELF file of type {elf['e_type']}, not a core file")
        for seg in elf.iter_segments():
            if not isinstance(seg, NoteSegment):
                continue
            for note in seg.iter_notes():
                ntype: object = note["n_type"]
                desc: object = note["n_desc"]
                if ntype in ("NT_PRSTATUS", NT_PRSTATUS) and isinstance(desc, bytes) \
                        and len(desc) >= 36:
                    pid = int(struct.unpack_from("<i", desc, 32)[0])
                elif ntype == NT_X86_XSAVE_LAYOUT and isinstance(desc, bytes):
                    layout = _layout_note(desc)
                elif ntype == NT_X86_XSTATE and isinstance(desc, bytes):
                    who = f"core thread {pid}" if pid is not None else f"core note {len(out) + 1}"
                    out.append(Capture(bytes(desc), who, "core", _xcr0_at_464(desc)))
    # pyelftools parses lazily and reports malformed files with whatever its parsers raise.
    except (ELFError, ConstructError, struct.error, ValueError, KeyError, IndexError,
            TypeError, AssertionError, OverflowError) as exc:
        raise InputError(f"unreadable ELF core: {type(exc).__name__}: {exc}") from None
    if not out:
        raise InputError("the core file has no NT_X86_XSTATE note")
    for c in out:
        c.layout_note = layout
    return out


def _layout_note(desc: bytes) -> dict[int, tuple[int, int, int]]:
    """NT_X86_XSAVE_LAYOUT: records of {u32 type, size, offset, flags}."""
    out = {}
    for i in range(len(desc) // 16):
        kind, size, offset, flags = struct.unpack_from("<IIII", desc, 16 * i)
        out[kind] = (size, offset, flags)
    return out
