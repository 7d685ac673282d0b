"""Read xsave state from what users capture: raw KVM_GET_XSAVE/KVM_GET_XSAVE2 buffers, hex
dumps, ELF core files (NT_X86_XSTATE, one per thread, NT_X86_XSAVE_LAYOUT when present),
Linux signal-frame fpstate, QEMU migration streams, libvirt save images and qcow2 internal
snapshots (their vm state, kvmfpu.blob.qcow2); any of them gzip-, xz-, bzip2-, zstd- or
lzop-compressed (``migrate "exec:gzip -c > f"`` is how streams are often kept).

``read`` opens the input as a stream (kvmfpu.blob.stream), expands compression as a stream
(kvmfpu.blob.compression), detects the format from the first bytes (``--format`` overrides
it) and returns one ``Capture`` per xsave image found. Formats in ``STREAMED`` (QEMU
streams, libvirt images) are read as streams: a multi-GB file is never held, and
``max_size`` limits what is decoded (device state, the VM description, XML), not the file.
The others are small captures read whole: files larger than ``max_size`` are refused before
being read, compressed input that would expand past it is refused, and so is nesting more
than ``MAX_COMPRESSION_LAYERS`` compressions; the xsave images decoded from one input may not
add up to more than ``max_size`` bytes, and an ELF core's note segments may neither overlap
nor reach past the file (so no byte is decoded twice).
"""

from __future__ import annotations

import io
import itertools
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from kvmfpu.blob import compression, hexdump, vmm_formats
from kvmfpu.blob.errors import InputError
from kvmfpu.blob.stream import Readable, Source, of_bytes, of_file

if TYPE_CHECKING:
    from kvmfpu.arch.layout import XsaveLayout

FORMATS: Final = ("raw", "hex", "xxd", "od", "gdb", "core", "sigframe", "qemu", "libvirt-save",
                  "qcow2", *vmm_formats.FORMATS)   # VMM and CRIU state files
MAX_SIZE: Final = 256 << 20
#: The largest --max-size taken (1 TiB): beyond this a limit is no limit (and 2**62 used to
#: overflow the reads).
MAX_SIZE_LIMIT: Final = 1 << 40
#: ``gzip -c`` of an ``xz`` file is a mistake users make; deeper nesting is not a capture.
MAX_COMPRESSION_LAYERS: Final = 3
_CHUNK: Final = 1 << 20
#: How many leading bytes detection looks at.
PEEK: Final = 64
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
    #: The libvirt domain XML the image carries (its <cpu> describes the guest).
    domain_xml: str | None = None
    #: What the container says of itself, by container kind (JSON-able): a libvirt image's
    #: header fields and <cpu>, a QEMU stream's capabilities and RAM skipped.
    container: dict[str, Any] = field(default_factory=dict)
    #: Components whose registers hold data but whose XSTATE_BV bits are clear in a stream
    #: written under TCG: a KVM destination restores their initial state.
    restores_init: int = 0


def _qemu(src: Source, max_size: int) -> list[Capture]:
    from kvmfpu.blob import qemu
    return qemu.captures(src, max_size)


def _libvirt_save(src: Source, max_size: int) -> list[Capture]:
    from kvmfpu.blob import libvirt_save
    caps: list[Capture] = libvirt_save.read(src, max_size)
    return caps


#: Detection by the first PEEK bytes, in order, the first match wins (one line a format;
#: text dumps, signal frames and raw buffers are told apart afterwards, on the whole data).
DETECT: Final[list[tuple[str, Callable[[bytes], bool]]]] = [
    ("core", lambda h: h[:4] == b"\x7fELF"),
    ("qemu", lambda h: h[:4] == QEMU_VM_FILE_MAGIC),
    ("libvirt-save", lambda h: h[:16] in (b"LibvirtQemudSave", b"LibvirtQemudPart")),
]
#: Formats read as streams, never held whole: format -> reader(Source, max_size).
STREAMED: Final[dict[str, Callable[[Source, int], list[Capture]]]] = {
    "qemu": _qemu,
    "libvirt-save": _libvirt_save,
}


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
    return Source(stream, what).read_rest(max_size, what)


def open_path(path: str | os.PathLike[str]) -> Source:
    """A regular file as a seekable Source; directories, FIFOs, devices and unreadable paths
    are refused without reading."""
    try:
        # O_NONBLOCK: a FIFO put where the file was checked must not block the open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: not a regular file")
        return of_file(fd, str(path), st.st_size)
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike[str], max_size: int = MAX_SIZE) -> bytes:
    """The file's bytes, refusing directories, FIFOs, devices, unreadable paths and oversized
    files without reading them."""
    check_max_size(max_size)
    with open_path(path) as src:
        if src.size is not None and src.size > max_size:
            raise InputError(f"{path}: {src.size} bytes is more than the {max_size}-byte "
                             "limit (--max-size)")
        try:
            return src.read_rest(max_size, str(path))
        except OSError as exc:
            raise InputError(f"{path}: {exc.strerror}") from None


def decompress(data: bytes, max_size: int = MAX_SIZE) -> tuple[bytes, str | None]:
    """``data`` expanded when it is compressed (with the compression's name), else as is.
    Expansion stops past ``max_size``: a small file cannot fill memory."""
    check_max_size(max_size)
    kind = compression.sniff(data[:compression.PEEK])
    if kind is None:
        return data, None
    with compression.expand(kind, of_bytes(data)) as inner:
        return _expand_all(inner, kind, max_size), kind


def _expand_all(inner: Source, kind: str, max_size: int) -> bytes:
    try:
        return inner.read_rest(max_size, f"{kind}-compressed input")
    except InputError as exc:
        if "limit" in str(exc):
            raise InputError(f"{kind}-compressed input expands past the {max_size}-byte limit "
                             "(--max-size)") from None
        raise


def detect(data: bytes) -> str:
    if not data:
        raise InputError("the input is empty")
    head = _detect_head(data[:PEEK])
    if head is not None:
        return head
    if data[:4] == b"QFI\xfb":        # qcow2 (read lazily by read(); here: a compressed one)
        return "qcow2"
    vmm = vmm_formats.detect(data)   # before the text check (state.json is text)
    if vmm is not None:
        return vmm
    if hexdump.looks_like_text(data):
        return hexdump.dialect(data.decode("ascii"))
    if _sigframe_size(data) is not None:
        return "sigframe"
    return "raw"


def _qcow2(source: str | os.PathLike[str] | bytes, fmt: str | None, max_size: int,
           snapshot: str | None) -> list[Capture] | None:
    """A qcow2 image's snapshot, read lazily whatever the image's size; None when
    ``source`` is not a qcow2 image (and no --snapshot asks for one)."""
    from kvmfpu.blob import qcow2, qcow2_vmstate
    if fmt == "qcow2" or (fmt is None and qcow2.is_image(source)):
        return qcow2_vmstate.captures(source, max_size, snapshot)
    if snapshot is None:
        return None
    # A compressed image: expanded in memory (within --max-size).
    data = source if isinstance(source, bytes) else read_bytes(source, max_size)
    kinds = []
    for _ in range(MAX_COMPRESSION_LAYERS):
        data, kind = decompress(data, max_size)
        if kind is None:
            break
        kinds.append(kind)
    if not qcow2.is_image(data):
        raise InputError("--snapshot picks a snapshot of a qcow2 image; this input is not one")
    caps = qcow2_vmstate.captures(data, max_size, snapshot)
    for c in caps:
        c.notes.insert(0, f"{' of '.join(kinds)}-compressed image")
    return caps


def _detect_head(head: bytes) -> str | None:
    return next((name for name, test in DETECT if test(head)), None)


def _open(source: str | os.PathLike[str] | bytes | Readable) -> Source:
    if isinstance(source, bytes):
        return of_bytes(source)
    if isinstance(source, (str, os.PathLike)):
        return open_path(source)
    try:      # standard input redirected from a file: seek in it like a named file
        fd = source.fileno()  # type: ignore[attr-defined]
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and os.lseek(fd, 0, os.SEEK_CUR) == 0:
            return of_file(os.dup(fd), "standard input", st.st_size)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    return Source(source, "standard input")


def read(source: str | os.PathLike[str] | bytes | Readable, fmt: str | None = None,
         max_size: int = MAX_SIZE, *, snapshot: str | None = None) -> list[Capture]:
    """Every xsave image in ``source`` (a path, the bytes themselves, or a binary stream
    such as sys.stdin.buffer); ``snapshot`` picks a qcow2 image's internal snapshot by
    name or ID."""
    check_max_size(max_size)
    if isinstance(source, (str, os.PathLike, bytes)):
        caps = _qcow2(source, fmt, max_size, snapshot)
        if caps is not None:
            return caps
    elif snapshot is not None:
        raise InputError("--snapshot needs the qcow2 image as a file, not a stream")
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if isinstance(source, bytes) and len(source) > max_size and fmt not in STREAMED \
            and _detect_head(source[:PEEK]) not in STREAMED \
            and compression.sniff(source[:compression.PEEK]) is None:
        raise InputError(f"{len(source)} bytes is more than the {max_size}-byte limit "
                         "(--max-size)")
    if isinstance(source, bytes) and len(source) <= max_size \
            and compression.sniff(source[:compression.PEEK]) is None:
        return _within_limit(_read_bytes(source, fmt, max_size), max_size)
    opened: list[Source] = []
    try:
        src = _open(source)
        opened.append(src)
        layers: list[str] = []
        while (kind := compression.sniff(src.peek(compression.PEEK))) is not None:
            layers.append(kind)
            if len(layers) > MAX_COMPRESSION_LAYERS:
                raise InputError(f"compressed more than {MAX_COMPRESSION_LAYERS} times over "
                                 f"({', '.join(layers)}, ...): not a capture kvmfpu reads")
            src = compression.expand(kind, src)
            opened.append(src)
        caps = _read_source(src, fmt, max_size, layers)
    except OSError as exc:          # EIO and the like, mid-read
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "input"
        raise InputError(f"{name}: {exc.strerror or exc}") from None
    finally:
        for s in reversed(opened):
            s.close()
    _within_limit(caps, max_size)
    if layers:
        note = f"{layers[0]}-compressed input" + (
            f" ({' of '.join(layers)} of the capture)" if len(layers) > 1 else "")
        for c in caps:
            c.notes.insert(0, note)
    return caps


def _within_limit(caps: list[Capture], max_size: int) -> list[Capture]:
    if sum(len(c.data) for c in caps) > max_size:
        raise InputError(f"the xsave images in the input add up to more than the "
                         f"{max_size}-byte limit (--max-size)")
    return caps


def _read_bytes(data: bytes, fmt: str | None, max_size: int) -> list[Capture]:
    """The captures in uncompressed bytes within the limit: what _read_source does with
    them, without opening a stream."""
    if not data:
        raise InputError("the input is empty")
    return _read_plain(data, fmt, max_size)


def _read_source(src: Source, fmt: str | None, max_size: int, layers: list[str]) -> list[Capture]:
    """The captures in the (expanded) stream ``src``."""
    head = src.peek(PEEK)
    if not head:
        raise InputError("the input is empty")
    kind = fmt or _detect_head(head)
    if kind in STREAMED:
        return STREAMED[kind](src, max_size)
    if not layers and src.size is not None and src.size > max_size:
        raise InputError(f"{src.name}: {src.size} bytes is more than the {max_size}-byte "
                         "limit (--max-size)")
    if layers:
        data = _expand_all(src, layers[-1], max_size)
    else:
        data = src.read_rest(max_size, src.name)
    return _read_plain(data, fmt, max_size)


def _read_plain(data: bytes, fmt: str | None, max_size: int) -> list[Capture]:
    """The captures in uncompressed ``data``."""
    kind = fmt or detect(data)
    if kind in STREAMED:
        return STREAMED[kind](of_bytes(data), max_size)
    if kind == "raw":
        return [Capture(data, "raw buffer", "raw", _xcr0_at_464(data))]
    if kind in ("hex", "xxd", "od", "gdb"):
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise InputError(f"--format {kind}: the input is not text") from None
        blob = hexdump.parse(text, kind, max_size)
        inner = detect(blob) if blob else "raw"
        if inner in ("core", "sigframe", *STREAMED):
            return _read_plain(blob, inner, max_size)
        return [Capture(blob, f"{kind} dump", kind, _xcr0_at_464(blob))]
    if kind == "sigframe":
        return [_sigframe(data)]
    if kind in vmm_formats.READERS:
        return vmm_formats.read(kind, data, max_size)
    if kind == "qcow2":               # a compressed image, expanded in memory
        from kvmfpu.blob import qcow2_vmstate
        return qcow2_vmstate.captures(data, max_size)
    return _core(data, max_size)


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
