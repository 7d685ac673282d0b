"""QEMU migration streams read as streams: sections in order, RAM pages skipped without being
held, the device sections decoded with the stream's own JSON description.

Stream format (QEMU migration/savevm.c, read the way scripts/analyze-migration.py reads it):
the ``QEVM`` magic and version 3; the configuration section (machine name, then the
subsections vmstate_configuration has: target-page-bits, capabilities, uuid); sections
(START/FULL with id, name, instance and version; PART/END with the id), each followed by a
footer; the iterative ``ram`` section in RAM's own encoding (migration/ram.c); at the end the
VM description (section type 6, a length, JSON) naming every field of every device section
and its size. Integers are big-endian.

Where the description is read from:
- a seekable stream (a file): from the end, before anything else, so sections may come in
  any order, RAM is skipped by seeking, and nothing but the description and the device
  state is read;
- a pipe (a decompressor, standard input): the RAM sections are read and dropped as they
  come (they describe themselves); from the first device section on, the bytes are kept
  (at most ``max_size``) until the description at the end says how to read them.

RAM variants: ``x-ignore-shared`` (blocks carry their address; their pages are not in the
stream) and ``mapped-ram`` (QEMU 9.0+, docs/devel/migration/mapped-ram.rst: each block's
pages sit at a fixed file offset named by a MappedRamHeader, and the stream goes on after
them) are read. Multifd without mapped-ram (pages on other channels), compressed pages,
XBZRLE, RDMA hooks and unknown flags are refused in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from kvmfpu.blob.errors import InputError
from kvmfpu.blob.stream import CHUNK, Source, of_bytes

EOF_, START, PART, END, FULL, SUBSECTION, VMDESC, CONFIGURATION, COMMAND, FOOTER = (
    0x00,
    0x01,
    0x02,
    0x03,
    0x04,
    0x05,
    0x06,
    0x07,
    0x08,
    0x7E,
)
# migration/ram.c RAM_SAVE_FLAG_*.
RAM_FULL, RAM_ZERO, RAM_MEM_SIZE, RAM_PAGE, RAM_EOS, RAM_CONTINUE = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
RAM_XBZRLE, RAM_HOOK, RAM_COMPRESS_PAGE, RAM_MULTIFD_FLUSH = 0x40, 0x80, 0x100, 0x200
RAM_KNOWN: Final = 0x3FF
#: migration/savevm.c MIG_CMD_POSTCOPY_ADVISE.
MIG_CMD_POSTCOPY_ADVISE: Final = 3
#: sizeof(MappedRamHeader) (packed: u32 version, u64 page_size, bitmap_offset, pages_offset)
#: and MAPPED_RAM_HDR_VERSION (migration/ram.c).
MAPPED_RAM_HEADER: Final = 28
MAPPED_RAM_VERSION: Final = 1
#: The stream's bytes for each integer type: QEMU's VMStateInfo get functions read fixed
#: widths whatever the field's size (migration/vmstate-types.c: get_uint64 is qemu_get_be64).
INT_WIDTHS: Final = {
    "uint8": 1,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "int8": 1,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "bool": 1,
    "be16": 2,
    "be32": 4,
    "be64": 8,
}
#: The RAM section's flags sit in the low bits of each page address (up to
#: RAM_SAVE_FLAG_MULTIFD_FLUSH 0x200), so a page is at least 1 KiB; 64 KiB bounds QEMU's
#: target pages (kvmfpu reads x86 streams: 4 KiB). The upper bound is kvmfpu's.
PAGE_SIZES: Final = tuple(1 << b for b in range(10, 17))
#: x86's TARGET_PAGE_BITS is 12: the page size a pipe's RAM is read with before the
#: description (or a target-page-bits subsection) says otherwise.
X86_PAGE: Final = 4096
#: Field values decoded per kept stream byte: zero-size fields cost no bytes, so an
#: ``array_len`` of 1e12 on one would run for hours; a real stream decodes fewer values.
WORK_PER_BYTE: Final = 1
WORK_SLACK: Final = 1 << 16
DESC_START: Final = b'{"page_size"'


@dataclass
class Parsed:
    """What a stream holds for kvmfpu: its ``cpu`` sections, by instance, and what it says
    about itself."""

    cpus: list[tuple[int, dict[str, Any]]]
    desc: dict[str, Any]
    capabilities: list[str] = field(default_factory=list)
    ram_blocks: int = 0
    ram_pages_skipped: int = 0
    ram_bytes_skipped: int = 0
    postcopy: bool = False
    piped: bool = False
    #: Field values decoded, and the most the stream's size allowed.
    work: int = 0
    budget: int = 0


class _NeedDescription(Exception):
    """A device section on a pipe, before the description: its header's bytes (``kept``)
    and the rest of the stream are kept."""

    def __init__(self, kept: bytes):
        super().__init__("a device section before the VM description")
        self.kept = kept


@dataclass
class _State:
    desc: dict[str, Any] | None
    max_size: int
    page_size: int = X86_PAGE
    sections: dict[int, str] = field(default_factory=dict)
    parsed: Parsed = field(default_factory=lambda: Parsed([], {}))
    work: int = 0
    budget: int = WORK_SLACK
    #: The bytes the device sections are read from (the file, or a pipe's kept tail).
    length: int = 0
    decoded: int = 0
    _devices: dict[tuple[Any, Any], dict[str, Any]] | None = None

    def device(self, name: str, instance: int) -> dict[str, Any] | None:
        """The description of section ``name`` ``instance`` (an index built once)."""
        if self._devices is None:
            assert self.desc is not None
            devices = self.desc.get("devices", [])
            self._devices = {}
            for d in devices if isinstance(devices, list) else []:
                if isinstance(d, dict):
                    key = (d.get("name"), d.get("instance_id", 0))
                    self._devices.setdefault(key, d)
        return self._devices.get((name, instance))

    @property
    def mapped_ram(self) -> bool:
        return "mapped-ram" in self.parsed.capabilities

    @property
    def ignore_shared(self) -> bool:
        return "x-ignore-shared" in self.parsed.capabilities


def parse(src: Source, max_size: int) -> Parsed:
    """The ``cpu`` sections of the stream ``src`` (positioned at its QEVM magic)."""
    header(src)
    st = _State(None, max_size)
    _configuration(src, st)
    if src.seekable and src.size is not None:
        st.desc = find_description(src, max_size)
        _set_page_size(st)
        st.length = src.size
        st.budget = WORK_PER_BYTE * min(src.size, max_size) + WORK_SLACK
        _sections(src, st)
    else:
        st.parsed.piped = True
        try:
            _sections(src, st)
        except _NeedDescription as need:
            what = f"{src.name}: the device state after the RAM"
            tail = need.kept + src.read_rest(max_size - len(need.kept), what)
            st.desc = description_in(tail)
            ram_page = st.page_size
            _set_page_size(st)
            if st.parsed.ram_blocks and st.page_size != ram_page:
                raise InputError(
                    f"QEMU stream: page_size {st.page_size} in the description, "
                    f"but its RAM was read with {ram_page}-byte pages"
                ) from None
            st.length = len(tail)
            st.budget = WORK_PER_BYTE * len(tail) + WORK_SLACK
            _sections(of_bytes(tail, src.name), st)
    assert st.desc is not None
    st.parsed.desc = st.desc
    st.parsed.work, st.parsed.budget = st.work, st.budget
    if not st.parsed.cpus:
        raise InputError("the QEMU stream has no cpu section")
    return st.parsed


def header(src: Source) -> None:
    head = src.read_some(8)
    if len(head) < 8 or head[:4] != b"QEVM":
        raise InputError("not a QEMU migration stream (no QEVM magic)")
    version = int.from_bytes(head[4:8], "big")
    if version != 3:
        raise InputError(f"QEMU stream version {version} (kvmfpu reads version 3)")


def _set_page_size(st: _State) -> None:
    assert st.desc is not None
    page_size = st.desc.get("page_size", X86_PAGE)
    if isinstance(page_size, bool) or page_size not in PAGE_SIZES:
        raise InputError(
            f"QEMU stream: page_size {str(page_size)[:40]} is not a power of two "
            f"from {PAGE_SIZES[0]} to {PAGE_SIZES[-1]}"
        )
    st.page_size = int(page_size)


def description_in(data: bytes) -> dict[str, Any]:
    """The VM description ending ``data`` (the kept tail of a piped stream)."""
    at = len(data)
    while True:
        at = data.rfind(DESC_START, 0, at)
        if at < 5:
            raise InputError(
                "QEMU stream without its JSON VM description (was it written by "
                "QEMU with the description enabled?)"
            )
        if data[at - 5] == VMDESC and int.from_bytes(data[at - 4 : at], "big") == len(data) - at:
            return _json(data[at:])


def find_description(src: Source, max_size: int) -> dict[str, Any]:
    """The VM description at the end of a seekable stream: the last ``{"page_size"`` whose
    section header's length reaches exactly to the end, looked for backwards from the end,
    a CHUNK at a time, in the last ``max_size`` bytes (and 5 for its header). Only the
    description itself is held: a stream ending in gigabytes of zeros costs reads, not
    memory."""
    size = src.size
    assert size is not None
    here = src.pos
    limit = min(size - here, max_size + 5)
    overlap = len(DESC_START) - 1  # a match may straddle two chunks
    scanned = 0
    while scanned < limit:
        step = min(CHUNK, limit - scanned)
        start = size - scanned - step
        block = src.pread(start, step + min(overlap, scanned))
        end = step + overlap  # matches starting in this step's bytes only
        while (at := block.rfind(DESC_START, 0, end)) >= 0:
            where = start + at
            if where - 5 >= size - limit:
                head = src.pread(where - 5, 5)
                if head[0] == VMDESC and int.from_bytes(head[1:], "big") == size - where:
                    return _json(src.pread(where, size - where))
            end = at + overlap
        scanned += step
    if size - here > max_size + 5:
        raise InputError(
            "QEMU stream without a JSON VM description in its last "
            f"{max_size} bytes: missing, or larger than the "
            f"{max_size}-byte limit (--max-size)"
        )
    raise InputError(
        "QEMU stream without its JSON VM description (was it written by QEMU with the description enabled?)"
    )


def _json(text: bytes) -> dict[str, Any]:
    try:
        desc = json.loads(text)
    except ValueError as exc:
        raise InputError(f"QEMU stream: unreadable VM description: {str(exc)[:100]}") from None
    except RecursionError:
        raise InputError("QEMU stream: the VM description is nested too deeply") from None
    if not isinstance(desc, dict):
        raise InputError("QEMU stream: the VM description is not a JSON object")
    return desc


# -- the configuration section (not in the description: savevm.c writes it without one) ---


def _configuration(src: Source, st: _State) -> None:
    if src.peek(1) != bytes([CONFIGURATION]):
        return
    src.read(1)
    length = src.uint(4, "configuration")
    if length > 255:  # a machine type name (pc-i440fx-7.2)
        raise InputError(f"QEMU stream: a {length}-byte machine type name in its configuration section")
    src.read(length, "configuration")
    while src.peek(1) == bytes([SUBSECTION]):
        src.read(1)
        name = src.read(src.uint(1)).decode("latin-1")
        src.uint(4)  # its version
        if name == "configuration/target-page-bits":
            bits = src.uint(4)
            if not 10 <= bits <= 16:
                raise InputError(f"QEMU stream: target-page-bits {bits} (kvmfpu reads 10-16)")
            st.page_size = 1 << bits
        elif name == "configuration/capabilities":
            count = src.uint(4)
            if count > 64:  # MIGRATION_CAPABILITY__MAX is about 25
                raise InputError(f"QEMU stream: {count} migration capabilities in its configuration")
            for _ in range(count):
                st.parsed.capabilities.append(src.read(src.uint(1)).decode("latin-1"))
        elif name == "configuration/uuid":
            src.read(16)
        else:
            raise InputError(
                f"QEMU stream: configuration subsection {name[:60]!r} is not one "
                "kvmfpu knows (migration/savevm.c vmstate_configuration)"
            )


# -- sections ------------------------------------------------------------------------------


def _sections(src: Source, st: _State) -> None:
    while True:
        # On a pipe each section header is kept until it is known to be RAM's (dropped as
        # it is read) or a device's (kept, with everything after it).
        kept = src.mark(st.max_size) if st.desc is None else None
        try:
            name, instance = _section_header(src, st)
        finally:
            if kept is not None:
                src.unmark()
        if name is None:
            if instance == EOF_:
                return
            continue
        if name == "ram":
            _ram(src, st)
            continue
        if kept is not None:
            raise _NeedDescription(bytes(kept))
        _device(src, st, name, instance)


def _section_header(src: Source, st: _State) -> tuple[str | None, int]:
    """The next section's (name, instance; -1 for PART/END), or (None, EOF_) at the end
    and (None, type) for footers and commands, which are read whole."""
    kind = src.uint(1, "section header")
    if kind in (EOF_, VMDESC):
        if st.desc is None:
            return "", -1  # the description is next: the caller keeps the rest
        return None, EOF_
    if kind == FOOTER:
        src.uint(4)
        return None, kind
    if kind == COMMAND:
        cmd = src.uint(2)
        src.read(src.uint(2), "command")
        if cmd == MIG_CMD_POSTCOPY_ADVISE:
            st.parsed.postcopy = True
        return None, kind
    if kind in (START, FULL):
        sid = src.uint(4)
        name = src.read(src.uint(1)).decode("latin-1")
        instance = src.uint(4)
        src.uint(4)
        st.sections[sid] = name
    elif kind in (PART, END):
        sid = src.uint(4)
        if sid not in st.sections:
            raise InputError(f"QEMU stream: section id {sid} continues a section never started")
        name, instance = st.sections[sid], -1
    else:
        raise InputError(f"QEMU stream: unknown section type {kind:#x} at byte {src.pos - 1}")
    return name, instance


def _device(src: Source, st: _State, name: str, instance: int) -> None:
    device = st.device(name, instance)
    if device is None:
        raise InputError(f"QEMU stream: no description for section {name[:60]!r} instance {instance}")
    values: dict[str, Any] = {}
    _vmsd(_Fields(src, st), device, values)
    if name == "cpu":
        st.parsed.cpus.append((instance, values))


class _Fields:
    """Field reads charged against the stream's budgets: values decoded (a zero-size field
    costs no byte) and bytes decoded (``max_size``)."""

    def __init__(self, src: Source, st: _State):
        self.src = src
        self.st = st

    def spend(self, n: int) -> None:
        self.st.work += n
        if self.st.work > self.st.budget:
            raise InputError(
                f"QEMU stream: the VM description asks for more than "
                f"{self.st.budget} field values from a {self.st.length}-byte "
                "stream (array_len on empty fields?)"
            )

    def take(self, n: int) -> bytes:
        self.st.decoded += n
        if self.st.decoded > self.st.max_size:
            raise InputError(
                f"QEMU stream: its device state exceeds the {self.st.max_size}-byte limit (--max-size)"
            )
        return self.src.read(n, "device state")

    def count(self, f: dict[str, Any], key: str, default: int) -> int:
        """A non-negative integer from the description, at most the stream's length (no
        field or array in it can be larger)."""
        value = f.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= self.st.length:
            raise InputError(
                f"QEMU stream: field {str(f.get('name'))[:40]!r} has {key} "
                f"{str(value)[:40]}: not a count this {self.st.length}-byte "
                "stream holds"
            )
        return value


def _fields(r: _Fields, fields: list[dict[str, Any]], out: dict[str, Any]) -> None:
    for f in fields:
        count = f.get("array_len")
        n = r.count(f, "array_len", 1) if count is not None else 1
        r.spend(n)
        values = [_one(r, f) for _ in range(n)]
        out[f["name"]] = values if count is not None else values[0]


def _one(r: _Fields, f: dict[str, Any]) -> Any:
    kind = f.get("type")
    if kind == "struct":
        inner: dict[str, Any] = {"__vmsd__": f["struct"].get("vmsd_name")}
        _vmsd(r, f["struct"], inner)
        return inner
    if kind == "tmp":
        inner = {}
        _fields(r, f.get("fields", []), inner)
        return inner
    size = r.count(f, "size", 0)
    if isinstance(kind, str) and kind in INT_WIDTHS:
        if size != INT_WIDTHS[kind]:
            raise InputError(
                f"QEMU stream: field {str(f.get('name'))[:40]!r} of type {kind} "
                f"has size {size}; QEMU reads {INT_WIDTHS[kind]} bytes for it"
            )
        return int.from_bytes(r.take(size), "big", signed=kind.startswith("int"))
    return r.take(size)


def _vmsd(r: _Fields, desc: dict[str, Any], out: dict[str, Any]) -> None:
    _fields(r, desc.get("fields", []), out)
    for sub in desc.get("subsections", []):
        if r.src.peek(1) != bytes([SUBSECTION]):
            raise InputError(
                f"QEMU stream: subsection {str(sub.get('vmsd_name'))[:60]} missing at byte {r.src.pos}"
            )
        r.src.read(1)
        name = r.src.read(r.src.uint(1)).decode("latin-1")
        r.src.uint(4)
        if name != sub.get("vmsd_name"):
            raise InputError(
                f"QEMU stream: subsection {name[:60]!r} where the description "
                f"has {str(sub.get('vmsd_name'))[:60]!r}"
            )
        inner: dict[str, Any] = {}
        _vmsd(r, sub, inner)
        out[name] = inner


# -- RAM -----------------------------------------------------------------------------------


def _ram(src: Source, st: _State) -> None:
    """One ram section, up to its RAM_SAVE_FLAG_EOS (ram_load_precopy's loop)."""
    page_size = st.page_size
    p = st.parsed
    while True:
        addr = src.uint(8, "RAM section")
        flags = addr & (page_size - 1)
        if flags & ~RAM_KNOWN:
            raise InputError(f"QEMU stream: unknown RAM page flags {flags:#x} at byte {src.pos - 8}")
        if flags & RAM_MEM_SIZE:
            _blocks(src, st, addr & ~(page_size - 1))
            continue
        if flags & RAM_EOS:
            return
        if flags & RAM_MULTIFD_FLUSH:
            if st.mapped_ram:
                continue  # multifd with mapped-ram: its pages are at their offsets
            raise InputError(
                "QEMU stream written with multifd: its RAM pages travel on other channels, not in this stream"
            )
        if flags & (RAM_XBZRLE | RAM_COMPRESS_PAGE | RAM_HOOK):
            raise InputError(
                f"QEMU stream: RAM page flags {flags:#x} (XBZRLE, compressed "
                "pages or RDMA hooks) are not supported"
            )
        if not flags & RAM_CONTINUE:
            src.read(src.uint(1), "RAM block name")
        if flags & RAM_ZERO:
            src.read(1)
        elif flags & RAM_PAGE:
            src.skip(page_size, "RAM page")
            p.ram_pages_skipped += 1
            p.ram_bytes_skipped += page_size
        else:
            raise InputError(f"QEMU stream: unknown RAM page flags {flags:#x} at byte {src.pos - 8}")


def _blocks(src: Source, st: _State, total: int) -> None:
    """RAM_SAVE_FLAG_MEM_SIZE: each block's name and used length (ram_save_setup), its
    address under x-ignore-shared, its MappedRamHeader under mapped-ram."""
    p = st.parsed
    if p.postcopy:
        raise InputError(
            "QEMU stream with postcopy advised: RAM blocks of hugepage backends "
            "then carry a page size the stream does not flag (migration/ram.c "
            "ram_save_setup), so kvmfpu cannot read its block list"
        )
    seen = 0
    while seen < total:
        name = src.read(src.uint(1), "RAM block name").decode("latin-1")
        length = src.uint(8, "RAM block")
        if length == 0 or length > total - seen:
            raise InputError(
                f"QEMU stream: RAM block {name[:40]!r} of {length} bytes in a {total}-byte RAM list"
            )
        seen += length
        p.ram_blocks += 1
        if st.ignore_shared:
            src.uint(8, "RAM block address")
        if st.mapped_ram:
            _mapped_block(src, st, name, length)


def _mapped_block(src: Source, st: _State, name: str, length: int) -> None:
    """A MappedRamHeader, then the stream goes on at pages_offset + length (ram_save_setup's
    qemu_set_offset): the pages and the bitmap in between are not read. The offsets are the
    file's (qemu_get_offset of the channel)."""
    version = src.uint(4, "mapped-ram header")
    page = src.uint(8, "mapped-ram header")
    bitmap = src.uint(8, "mapped-ram header")
    pages = src.uint(8, "mapped-ram header")
    if version == 0 or version > MAPPED_RAM_VERSION:
        raise InputError(
            f"QEMU stream: mapped-ram header version {version} for block "
            f"{name[:40]!r} (kvmfpu reads {MAPPED_RAM_VERSION})"
        )
    if st.ignore_shared and bitmap == 0 and pages == 0:
        return  # an ignored (shared) block: nothing in the file
    if page != st.page_size or pages % page:
        raise InputError(
            f"QEMU stream: mapped-ram block {name[:40]!r} has page size {page} and pages at {pages}"
        )
    here = src.base + src.pos
    bitmap_size = -(-(length // page) // 64) * 8  # BITS_TO_LONGS(pages) longs of 8 bytes
    if not here <= bitmap <= pages - bitmap_size:
        raise InputError(
            f"QEMU stream: mapped-ram block {name[:40]!r} puts its bitmap at "
            f"{bitmap} and pages at {pages}, not after byte {here}"
        )
    if bitmap != here:
        # mapped_ram_setup_ramblock puts the bitmap right after the header, at the file
        # offset qemu_get_offset gives: a shifted one means other offsets than this file's.
        raise InputError(
            f"QEMU stream: mapped-ram block {name[:40]!r} has its bitmap at "
            f"{bitmap}, its header ends at file offset {here}: the offsets are "
            "not this file's (a stream cut out of a libvirt sparse image?)"
        )
    src.skip(pages + length - here, "mapped-ram pages")
    st.parsed.ram_bytes_skipped += pages + length - here
