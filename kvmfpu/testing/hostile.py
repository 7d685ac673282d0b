"""Hostile inputs for the capture readers: each class is a way a small file once made kvmfpu
crash, run for minutes or fill memory (issue 16). The fuzzers (tests/blob/test_fuzz.py,
tools/fuzz_decode.py) draw from :func:`draw`; the regression tests build the worst case of
each class with the builders here.

Every input must decode or be refused with InputError, in time and memory bounded by its
size: ``kvmfpu decode`` then prints one line and exits 2.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import random
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final

#: QEMU migration stream section types (migration/savevm.c QEMU_VM_*).
_FULL, _EOF, _VMDESC = 0x04, 0x00, 0x06

CODECS: Final[dict[str, Callable[[bytes], bytes]]] = {
    "gzip": gzip.compress,
    "xz": lzma.compress,
    "bzip2": bz2.compress,
}


def compressed(data: bytes, codecs: Sequence[str]) -> bytes:
    """``data`` compressed with each codec in turn (the first innermost)."""
    for name in codecs:
        data = CODECS[name](data)
    return data


def qemu_stream(
    fields: list[dict[str, Any]],
    body: bytes,
    *,
    page_size: Any = 4096,
    instance: int = 0,
    fields_json: str | None = None,
    config: bytes = b"",
    ram: bytes = b"",
) -> bytes:
    """A version-3 stream with one ``cpu`` section (QEMU_VM_SECTION_FULL: id, name, instance,
    version), its field bytes ``body``, QEMU_VM_EOF and the JSON VM description naming
    ``fields`` (as migration/savevm.c and vmstate.c write them); ``fields_json`` gives the
    fields as JSON text instead (nesting json.dumps cannot write). ``config`` (a
    configuration section) and ``ram`` (sections) come before the cpu section."""
    desc = {
        "page_size": page_size,
        "devices": [
            {
                "name": "cpu",
                "instance_id": instance,
                "vmsd_name": "cpu",
                "version": 12,
                "fields": fields if fields_json is None else "@FIELDS@",
            }
        ],
    }
    text = json.dumps(desc).encode()
    if fields_json is not None:
        text = text.replace(b'"@FIELDS@"', fields_json.encode())
    section = bytes([_FULL]) + struct.pack(">I", 1) + bytes([3]) + b"cpu" + struct.pack(">II", instance, 12)
    return (
        b"QEVM"
        + struct.pack(">I", 3)
        + config
        + ram
        + section
        + body
        + bytes([_EOF, _VMDESC])
        + struct.pack(">I", len(text))
        + text
    )


def note(name: bytes, ntype: int, desc: bytes) -> bytes:
    """One ELF note: namesz, descsz, type, then name and descriptor padded to 4 bytes."""

    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 4)

    return struct.pack("<III", len(name) + 1, len(desc), ntype) + pad(name + b"\0") + pad(desc)


def elf_core(body: bytes, segments: Sequence[tuple[int, int]]) -> bytes:
    """An x86-64 ET_CORE whose program headers are PT_NOTE segments at (offset, size) in
    ``body``, which follows the headers."""
    start = 64 + 56 * len(segments)
    ehdr = struct.pack(
        "<4sBBBBB7sHHIQQQIHHHHHH",
        b"\x7fELF",
        2,
        1,
        1,
        0,
        0,
        bytes(7),
        4,
        62,
        1,
        0,
        64,
        0,
        0,
        64,
        56,
        len(segments),
        0,
        0,
        0,
    )
    phdrs = b"".join(struct.pack("<IIQQQQQQ", 4, 0, start + off, 0, 0, size, 0, 4) for off, size in segments)
    return ehdr + phdrs + body


def shared_note_core(xstate: bytes, headers: int) -> bytes:
    """``headers`` PT_NOTE headers all pointing at one NT_X86_XSTATE note: 65,534 of them
    once decoded 65,534 copies of a 3.6 MB core (1.25 GB RSS)."""
    n = note(b"LINUX", 0x202, xstate)
    return elf_core(n, [(0, len(n))] * headers)


def _u64(value: int) -> bytes:
    return (value & ((1 << 64) - 1)).to_bytes(8, "big")


def _field(name: str, kind: str = "uint64", size: Any = 8, **more: Any) -> dict[str, Any]:
    return {"name": name, "type": kind, "size": size, **more}


def _zmm_struct(vmsd: str, words: int, kind: str, width: Any) -> dict[str, Any]:
    return {"vmsd_name": vmsd, "fields": [_field(f"_q_ZMMReg[{j}]", kind, width) for j in range(words)]}


def _vmdesc(rng: random.Random) -> bytes:
    """A stream whose description asks for absurd work or sizes."""
    choice = rng.randrange(7)
    if choice == 0:  # array_len 1e8..1e12 on zero-size fields
        n = rng.choice((10**8, 10**9, 10**12, rng.randrange(10**8, 10**12)))
        return qemu_stream([_field("a", "buffer", 0, array_len=n)], b"")
    if choice == 1:  # nested arrays of empty fields, inside the array_len bound
        n = rng.randrange(200, 560)
        inner = {"vmsd_name": "s", "fields": [_field("b", "buffer", 0, array_len=n)]}
        return qemu_stream(
            [_field("a", "struct", 0, array_len=n, struct=inner)], bytes(rng.randrange(0, 600))
        )
    if choice == 2:  # infinite, absurd, negative or non-integer sizes
        size = rng.choice((float("inf"), float("nan"), 1e300, 10**30, -1, "8", 8.0, True, None))
        return qemu_stream([_field("xcr0", rng.choice(("uint64", "buffer")), size)], bytes(8))
    if choice == 3:  # page sizes that are no page size
        ps = rng.choice((float("inf"), 0, 3, 1 << 40, -4096, "4096", 4096.5, 1 << 9, None))
        return qemu_stream([_field("xcr0")], _u64(7), page_size=ps)
    if choice == 4:  # a zmm word wider than its 64 bits
        width = rng.choice((9, 16, 64, 100, 1 << 20))
        fields = [
            _field("xmm_regs", "struct", 16, array_len=1, struct=_zmm_struct("xmm_reg", 2, "uint64", width))
        ]
        return qemu_stream(fields, bytes(width + 8))
    if choice == 5:  # int64 fields holding -1 (xfeatures.bits() looped forever)
        fields = [
            _field("xcr0", "int64"),
            _field("xstate_bv", "int64"),
            _field(
                "hi16_zmm_regs", "struct", 64, array_len=1, struct=_zmm_struct("hi16_zmm_reg", 8, "int64", 8)
            ),
        ]
        return qemu_stream(fields, _u64(rng.choice((-1, -2, 1 << 63))) * 2 + b"\xff" * 64)
    # a register word that is bytes (int(b"12") would parse) or a string
    fields = [
        _field(
            "xmm_regs",
            "struct",
            16,
            array_len=1,
            struct={
                "vmsd_name": "xmm_reg",
                "fields": [_field("_q_ZMMReg[0]", "buffer", 2), _field("_q_ZMMReg[1]")],
            },
        )
    ]
    return qemu_stream(fields, b"12" + bytes(8))


def _elf(rng: random.Random, xstate: bytes) -> bytes:
    """Cores whose note segments overlap, repeat, or reach past their segment or file."""
    n = note(b"LINUX", 0x202, xstate)
    choice = rng.randrange(4)
    if choice == 0:  # many headers, one note
        return shared_note_core(xstate, rng.choice((2, 3, 100, 2000)))
    if choice == 1:  # overlapping segments
        cut = rng.randrange(1, len(n))
        return elf_core(n, [(0, len(n)), (cut, len(n) - cut)])
    if choice == 2:  # 13-byte segments whose note's descriptor runs over all
        count = rng.randrange(2, 400)
        body = n + bytes(13 * count)
        return elf_core(body, [(0, 13)] + [(len(n) + 13 * i, 13) for i in range(count - 1)])
    return elf_core(n, [(0, len(n) + rng.choice((1, 4096, 1 << 40)))])  # past the file


# -- RAM sections and libvirt headers (issue 12's streamed readers) -----------------------

_RAM_MEM_SIZE, _RAM_ZERO, _RAM_PAGE, _RAM_EOS, _RAM_CONTINUE = 0x04, 0x02, 0x08, 0x10, 0x20


def configuration(*capabilities: str, name: bytes = b"pc-i440fx-7.2") -> bytes:
    """QEMU_VM_CONFIGURATION: the machine name, and the capabilities subsection when any
    (migration/savevm.c vmstate_configuration, vmstate_capabilites)."""
    out = bytes([0x07]) + struct.pack(">I", len(name)) + name
    if capabilities:
        sub = b"configuration/capabilities"
        out += bytes([0x05, len(sub)]) + sub + struct.pack(">II", 1, len(capabilities))
        out += b"".join(bytes([len(c)]) + c.encode() for c in capabilities)
    return out


def ram_section(records: bytes, sid: int = 2) -> bytes:
    """A ram START section (id ``sid``, version 4) holding ``records``, then EOS and its
    footer (migration/ram.c)."""
    return (
        bytes([0x01])
        + struct.pack(">I", sid)
        + b"\x03ram"
        + struct.pack(">II", 0, 4)
        + records
        + struct.pack(">Q", _RAM_EOS)
        + bytes([0x7E])
        + struct.pack(">I", sid)
    )


def ram_blocks(blocks: Sequence[tuple[bytes, int]], extra: Callable[[int], bytes] | None = None) -> bytes:
    """RAM_SAVE_FLAG_MEM_SIZE and each block's name and length (``extra(i)`` after each:
    an address, a MappedRamHeader)."""
    out = struct.pack(">Q", sum(n for _, n in blocks) | _RAM_MEM_SIZE)
    for i, (name, length) in enumerate(blocks):
        out += bytes([len(name)]) + name + struct.pack(">Q", length) + (extra(i) if extra else b"")
    return out


def ram_page(offset: int, data: bytes | None, name: bytes | None = b"pc.ram") -> bytes:
    """One page record: a 4 KiB page, or a zero page (``data`` None); ``name`` None is
    RAM_SAVE_FLAG_CONTINUE."""
    flags = (_RAM_PAGE if data is not None else _RAM_ZERO) | (_RAM_CONTINUE if name is None else 0)
    out = struct.pack(">Q", offset | flags) + (b"" if name is None else bytes([len(name)]) + name)
    return out + (data if data is not None else b"\0")


def ram_stream(pages: Sequence[bytes], capabilities: Sequence[str] = ()) -> bytes:
    """A valid stream whose pc.ram block holds ``pages`` (4 KiB each), sent as pages, or laid
    out as mapped-ram (when ``capabilities`` has it: its header, bitmap and pages at file
    offsets, pages aligned to 4 KiB, which QEMU's loader accepts; QEMU writes 1 MiB)."""
    conf = configuration(*capabilities)
    length = 4096 * len(pages)
    block = (b"pc.ram", length)
    extra: Callable[[int], bytes] | None = None
    if "mapped-ram" in capabilities:
        start = (
            8 + len(conf) + 17 + 8 + 1 + len(block[0]) + 8 + (8 if "x-ignore-shared" in capabilities else 0)
        )

        def extra(_i: int) -> bytes:
            bitmap_at = start + 28
            bitmap = bytes([(1 << len(pages)) - 1 & 0xFF]) + bytes(7)
            pages_at = -(-(bitmap_at + len(bitmap)) // 4096) * 4096
            addr = _u64(0) if "x-ignore-shared" in capabilities else b""
            head = addr + struct.pack(">IQQQ", 1, 4096, bitmap_at, pages_at)
            return head + bitmap + bytes(pages_at - bitmap_at - len(bitmap)) + b"".join(pages)

        recs = ram_blocks([block], extra)
    else:
        recs = ram_blocks([block], (lambda _i: _u64(0)) if "x-ignore-shared" in capabilities else None)
        recs += b"".join(ram_page(4096 * i, p, b"pc.ram" if i == 0 else None) for i, p in enumerate(pages))
    return qemu_stream([_field("xcr0")], _u64(7), config=conf, ram=ram_section(recs))


def _ram(rng: random.Random) -> bytes:
    """Streams whose RAM sections ask for absurd lengths, offsets or counts."""
    cpu = [_field("xcr0")]
    body = _u64(7)
    block = (b"pc.ram", 1 << 16)
    choice = rng.randrange(8)
    if choice == 0:  # a RAM list that claims far more than its blocks
        recs = struct.pack(">Q", (rng.choice((1 << 40, 1 << 60)) & ~0xFFF) | _RAM_MEM_SIZE)
        recs += b"\x06pc.ram" + struct.pack(">Q", 4096)
        return qemu_stream(cpu, body, config=configuration(), ram=ram_section(recs))
    if choice == 1:  # mapped-ram pages far past the file

        def header(_i: int) -> bytes:
            return struct.pack(">IQQQ", 1, 4096, 0, rng.choice((1 << 62, (1 << 64) - 4096)))

        return qemu_stream(
            cpu, body, config=configuration("mapped-ram"), ram=ram_section(ram_blocks([block], header))
        )
    if choice == 2:  # a billion capabilities
        edited = bytearray(configuration("x-ignore-shared"))
        struct.pack_into(">I", edited, len(edited) - 20, rng.choice((65, 10**9, 2**32 - 1)))
        return qemu_stream(cpu, body, config=bytes(edited), ram=b"")
    if choice == 3:  # flags kvmfpu refuses
        flag = rng.choice((0x40, 0x80, 0x100, 0x200, 0x400, 0x800))
        recs = ram_blocks([block]) + struct.pack(">Q", flag)
        return qemu_stream(cpu, body, config=configuration(), ram=ram_section(recs))
    if choice == 4:  # many zero pages (read, nothing kept)
        recs = (
            ram_blocks([block])
            + ram_page(0, None)
            + b"".join(ram_page(4096 * (i % 16), None, None) for i in range(rng.randrange(1, 20000)))
        )
        return qemu_stream(cpu, body, config=configuration(), ram=ram_section(recs))
    if choice == 5:  # x-ignore-shared with the address cut short
        recs = ram_blocks([block])[: -rng.randrange(1, 8)]
        return qemu_stream(cpu, body, config=configuration("x-ignore-shared"), ram=recs)
    if choice == 6:  # a machine name of gigabytes
        conf = bytes([0x07]) + struct.pack(">I", rng.choice((256, 1 << 31, 2**32 - 1))) + b"pc"
        return qemu_stream(cpu, body, config=conf)
    # postcopy advised, then a block list
    advise = bytes([0x08]) + struct.pack(">HH", 3, 16) + bytes(16)
    return qemu_stream(cpu, body, config=configuration(), ram=advise + ram_section(ram_blocks([block])))


def libvirt_header(
    data_len: int, fmt: int = 0, version: int = 2, cookie: int = 0, magic: bytes = b"LibvirtQemudSave"
) -> bytes:
    """virQEMUSaveHeader (libvirt src/qemu/qemu_saveimage.h), little-endian."""
    return magic + struct.pack("<5I", version, data_len, 1, fmt, cookie) + bytes(56)


def libvirt_image(stream: bytes, fmt: int = 0) -> bytes:
    xml = b"<domain type='qemu'><name>h</name><cpu mode='host-model'/></domain>\0"
    return libvirt_header(len(xml), fmt) + xml + stream


def _libvirt(rng: random.Random) -> bytes:
    """libvirt save images with absurd headers around a small valid stream."""
    stream = qemu_stream([_field("xcr0")], _u64(7))
    choice = rng.randrange(6)
    if choice == 0:
        return libvirt_header(rng.choice((0, 1 << 31, 2**32 - 1))) + stream
    if choice == 1:
        return libvirt_header(64, fmt=rng.choice((7, 100, 2**32 - 1))) + bytes(64) + stream
    if choice == 2:
        return libvirt_header(64, version=rng.choice((0, 3, 1 << 24))) + bytes(64) + stream
    if choice == 3:  # the header says compressed, the stream is not (or the other way)
        return libvirt_image(rng.choice((stream, gzip.compress(stream))), rng.choice((0, 1, 2, 3)))
    if choice == 4:
        return libvirt_header(64, cookie=rng.choice((65, 2**32 - 1))) + bytes(64) + stream
    return libvirt_image(stream)[: rng.randrange(16, 200)]


#: The classes :func:`draw` chooses among (what each one once broke is in issues 12, 16).
CLASSES: Final = ("nested-compression", "vmdesc", "elf-notes", "compressed-elf-notes", "ram", "libvirt")


def draw(rng: random.Random, xstate: bytes) -> tuple[str, bytes]:
    """One hostile input built around the capture ``xstate``: (class, bytes)."""
    kind = rng.choice(CLASSES)
    if kind == "nested-compression":
        depth = rng.choice((1, 2, 3, 4, 5, 8, 30))
        return kind, compressed(xstate, [rng.choice(tuple(CODECS)) for _ in range(depth)])
    if kind == "vmdesc":
        return kind, _vmdesc(rng)
    if kind in ("ram", "libvirt"):
        data = _ram(rng) if kind == "ram" else _libvirt(rng)
        # A third through a decompressor: the pipe path (RAM read and dropped).
        return kind, compressed(data, ["gzip"]) if rng.random() < 0.33 else data
    core = _elf(rng, xstate)
    if kind == "elf-notes":
        return kind, core
    return kind, compressed(core, [rng.choice(tuple(CODECS))])
