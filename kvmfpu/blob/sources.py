"""Read xsave state from what users capture: raw KVM_GET_XSAVE/KVM_GET_XSAVE2 buffers, hex
dumps, ELF core files (NT_X86_XSTATE, one per thread, NT_X86_XSAVE_LAYOUT when present),
Linux signal-frame fpstate, QEMU migration streams and qcow2 internal snapshots (their vm
state, kvmfpu.blob.qcow2); any of them gzip-, xz- or bzip2-compressed (``migrate
"exec:gzip -c > f"`` is how streams are often kept).

``read`` detects the format (``--format`` overrides it) and returns one ``Capture`` per
xsave image found. Work is bounded by the input's size: files larger than ``max_size`` are
refused before being read; compressed input that would expand past it, or that nests more
than ``MAX_COMPRESSION_LAYERS`` compressions, is refused; the xsave images decoded from one
input may not add up to more than ``max_size`` bytes, and an ELF core's note segments may
neither overlap nor reach past the file (so no byte is decoded twice).
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from kvmfpu.blob import hexdump
from kvmfpu.blob.errors import InputError

if TYPE_CHECKING:
    from kvmfpu.arch.layout import XsaveLayout

FORMATS: Final = ("raw", "hex", "xxd", "od", "gdb", "core", "sigframe", "qemu", "qcow2")
MAX_SIZE: Final = 256 << 20
#: The largest --max-size taken (1 TiB): QEMU streams hold guest RAM, so a few GiB are real
#: inputs; beyond this a limit is no limit (and 2**62 used to overflow the reads).
MAX_SIZE_LIMIT: Final = 1 << 40
#: ``gzip -c`` of an ``xz`` file is a mistake users make; deeper nesting is not a capture.
MAX_COMPRESSION_LAYERS: Final = 3
_CHUNK: Final = 1 << 20
FP_XSTATE_MAGIC1: Final = 0x46505853
FP_XSTATE_MAGIC2: Final = 0x46505845
NT_PRSTATUS: Final = 1
NT_X86_XSTATE: Final = 0x202
NT_X86_XSAVE_LAYOUT: Final = 0x205
QEMU_VM_FILE_MAGIC: Final = b"QEVM"


class Readable(Protocol):
    """A binary file or stream (a file, sys.stdin.buffer, a GzipFile)."""

    def read(self, size: int = -1, /) -> bytes: ...


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


def check_max_size(max_size: int) -> int:
    """``max_size`` when it is a usable limit (1 byte to ``MAX_SIZE_LIMIT``), else InputError."""
    if isinstance(max_size, bool) or not isinstance(max_size, int) \
            or not 0 < max_size <= MAX_SIZE_LIMIT:
        raise InputError(f"--max-size must be 1 to {MAX_SIZE_LIMIT} bytes, not {max_size!r}"[:120])
    return max_size


def read_stream(stream: Readable, max_size: int, what: str) -> bytes:
    """Up to ``max_size`` bytes of ``stream`` (InputError "WHAT exceeds the limit" past it),
    read in chunks: a large limit never allocates more than what arrives."""
    check_max_size(max_size)
    chunks: list[bytes] = []
    total = 0
    while total <= max_size:
        chunk = stream.read(min(_CHUNK, max_size + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    raise InputError(f"{what} exceeds the {max_size}-byte limit (--max-size)")


def read_bytes(path: str | os.PathLike[str], max_size: int = MAX_SIZE) -> bytes:
    """The file's bytes, refusing directories, FIFOs, devices, unreadable paths and oversized
    files without reading them."""
    check_max_size(max_size)
    try:
        # O_NONBLOCK: a FIFO put where the file was checked must not block the open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: not a regular file")
        if st.st_size > max_size:
            raise InputError(f"{path}: {st.st_size} bytes is more than the {max_size}-byte "
                             "limit (--max-size)")
        with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
            return read_stream(f, max_size, str(path))
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    finally:
        os.close(fd)


_COMPRESSED: Final = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bzip2"))


def decompress(data: bytes, max_size: int = MAX_SIZE) -> tuple[bytes, str | None]:
    """``data`` expanded when it is gzip, xz or bzip2 (with the compression's name), else
    as is. Expansion stops past ``max_size``: a small file cannot fill memory."""
    check_max_size(max_size)
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
            out = read_stream(stream, max_size, f"{kind}-compressed input")
    except InputError:
        raise InputError(f"{kind}-compressed input expands past the {max_size}-byte limit "
                         "(--max-size)") from None
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise InputError(f"{kind}-compressed input does not expand: {exc}") from None
    except errors as exc:
        raise InputError(f"{kind}-compressed input does not expand: {exc}") from None
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
    if data[:4] == b"QFI\xfb":        # qcow2 (S12b)
        return "qcow2"
    if hexdump.looks_like_text(data):
        return hexdump.dialect(data.decode("ascii"))
    if _sigframe_size(data) is not None:
        return "sigframe"
    return "raw"


def read(source: str | os.PathLike[str] | bytes, fmt: str | None = None,
         max_size: int = MAX_SIZE, *, snapshot: str | None = None) -> list[Capture]:
    """Every xsave image in ``source`` (a path or the bytes themselves); ``snapshot`` picks
    a qcow2 image's internal snapshot by name or ID."""
    check_max_size(max_size)
    # --- qcow2 internal snapshots (S12b): the image is read lazily, whatever its size ---
    from kvmfpu.blob import qcow2
    if fmt == "qcow2" or (fmt is None and qcow2.is_image(source)):
        from kvmfpu.blob import qcow2_vmstate
        return qcow2_vmstate.captures(source, max_size, snapshot)
    if snapshot is not None:          # a compressed image: expanded in memory (--max-size)
        data = source if isinstance(source, bytes) else read_bytes(source, max_size)
        kinds = []
        for _ in range(MAX_COMPRESSION_LAYERS):
            data, kind = decompress(data, max_size)
            if kind is None:
                break
            kinds.append(kind)
        if not qcow2.is_image(data):
            raise InputError("--snapshot picks a snapshot of a qcow2 image; this input is not one")
        from kvmfpu.blob import qcow2_vmstate
        caps = qcow2_vmstate.captures(data, max_size, snapshot)
        for c in caps:
            c.notes.insert(0, f"{' of '.join(kinds)}-compressed image")
        return caps
    # --- end qcow2 ---
    data = source if isinstance(source, bytes) else read_bytes(source, max_size)
    if len(data) > max_size:
        raise InputError(f"{len(data)} bytes is more than the {max_size}-byte limit (--max-size)")
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    layers: list[str] = []
    while True:
        data, compression = decompress(data, max_size)
        if compression is None:
            break
        layers.append(compression)
        if len(layers) > MAX_COMPRESSION_LAYERS:
            raise InputError(f"compressed more than {MAX_COMPRESSION_LAYERS} times over "
                             f"({', '.join(layers)}, ...): not a capture kvmfpu reads")
    caps = _read_plain(data, fmt, max_size)
    if sum(len(c.data) for c in caps) > max_size:
        raise InputError(f"the xsave images in the input add up to more than the "
                         f"{max_size}-byte limit (--max-size)")
    if layers:
        note = f"{layers[0]}-compressed input" + (
            f" ({' of '.join(layers)} of the capture)" if len(layers) > 1 else "")
        for c in caps:
            c.notes.insert(0, note)
    return caps


def _read_plain(data: bytes, fmt: str | None, max_size: int) -> list[Capture]:
    """The captures in uncompressed ``data``."""
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
            return _read_plain(blob, inner, max_size)
        return [Capture(blob, f"{kind} dump", kind, _xcr0_at_464(blob))]
    if kind == "sigframe":
        return [_sigframe(data)]
    if kind == "core":
        return _core(data, max_size)
    if kind == "qcow2":               # a compressed image, expanded in memory (S12b)
        from kvmfpu.blob import qcow2_vmstate
        return qcow2_vmstate.captures(data, max_size)
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


def _core(data: bytes, max_size: int = MAX_SIZE) -> list[Capture]:
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
    decoded = 0
    try:
        elf = ELFFile(io.BytesIO(data))
        if elf["e_type"] != "ET_CORE":
            raise InputError(f"an ELF file of type {elf['e_type']}, not a core file")
        for seg in _note_segments(elf, len(data), NoteSegment):
            end = seg["p_offset"] + seg["p_filesz"]
            for note in seg.iter_notes():
                # A note whose name or descriptor runs past its segment would be read again
                # by the next segment: each byte of the file is decoded at most once.
                size = 12 + (-(-note["n_namesz"] // 4) * 4) + note["n_descsz"]
                if note["n_offset"] + size > end:
                    raise InputError(f"ELF core: the note at byte {note['n_offset']} runs past "
                                     f"the end of its PT_NOTE segment ({end})")
                ntype: object = note["n_type"]
                desc: object = note["n_desc"]
                if ntype in ("NT_PRSTATUS", NT_PRSTATUS) and isinstance(desc, bytes) \
                        and len(desc) >= 36:
                    pid = int(struct.unpack_from("<i", desc, 32)[0])
                elif ntype == NT_X86_XSAVE_LAYOUT and isinstance(desc, bytes):
                    layout = _layout_note(desc)
                elif ntype == NT_X86_XSTATE and isinstance(desc, bytes):
                    decoded += len(desc)
                    if decoded > max_size:
                        raise InputError("ELF core: its NT_X86_XSTATE notes add up to more "
                                         f"than the {max_size}-byte limit (--max-size)")
                    who = f"core thread {pid}" if pid is not None else f"core note {len(out) + 1}"
                    out.append(Capture(bytes(desc), who, "core", _xcr0_at_464(desc)))
    # pyelftools parses lazily and reports malformed files with whatever its parsers raise.
    except (ELFError, ConstructError, struct.error, ValueError, KeyError, IndexError,
            TypeError, AssertionError, OverflowError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"unreadable ELF core: {type(exc).__name__}: {exc}") from None
    if not out:
        raise InputError("the core file has no NT_X86_XSTATE note")
    for c in out:
        c.layout_note = layout
    return out


def _note_segments(elf: Any, file_size: int, note_type: type) -> list[Any]:
    """The PT_NOTE segments, refusing any that reach past the file or overlap another (the
    kernel's elf_core_dump writes one PT_NOTE; many headers pointing at one note made a
    3.6 MB core decode 65,534 copies)."""
    segs: list[Any] = [seg for seg in elf.iter_segments() if isinstance(seg, note_type)]
    spans = sorted((int(s["p_offset"]), int(s["p_filesz"])) for s in segs)
    for off, size in spans:
        if off + size > file_size:
            raise InputError(f"ELF core: a PT_NOTE segment ({size} bytes at {off}) reaches past "
                             f"the end of the file ({file_size} bytes)")
    for (a, asize), (b, _) in itertools.pairwise(spans):
        if b < a + asize or (b == a and asize == 0):
            raise InputError(f"ELF core: PT_NOTE segments at bytes {a} and {b} overlap")
    return segs


def _layout_note(desc: bytes) -> dict[int, tuple[int, int, int]]:
    """NT_X86_XSAVE_LAYOUT: records of {u32 type, size, offset, flags}."""
    out = {}
    for i in range(len(desc) // 16):
        kind, size, offset, flags = struct.unpack_from("<IIII", desc, 16 * i)
        out[kind] = (size, offset, flags)
    return out
