"""QEMU stream variants QEMU 7.2 here cannot write, made from a real 7.2 stream by
rewriting its RAM the way a later QEMU lays it out (the tests' inputs for mapped-ram and
libvirt's "sparse" images, and for RAM flags kvmfpu refuses).

``mapped_ram(stream)``: QEMU 9.0+'s mapped-ram layout (docs/devel/migration/mapped-ram.rst;
migration/ram.c ram_save_setup and mapped_ram_setup_ramblock): the configuration section
gains the ``configuration/capabilities`` subsection naming ``mapped-ram``
(savevm.c should_validate_capability), each block of RAM_SAVE_FLAG_MEM_SIZE is followed by
its MappedRamHeader (be32 version 1, be64 page size, bitmap offset, pages offset: the bitmap
right after the header, the pages at the next 1 MiB boundary, as file offsets) and the
stream goes on after the block's pages; the pages the original stream sent are written at
their offsets and marked in the bitmap; the iterations' page sections become bare EOS.

The walker here reads the original stream independently of kvmfpu.blob.qemu_stream: the
layout of a stopped 7.2 guest's stream (configuration, the ram section's START, PARTs and
END, then the device sections to the end), asserted as it goes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final

MEM_SIZE, ZERO, PAGE, EOS, CONTINUE = 0x04, 0x02, 0x08, 0x10, 0x20
PAGE_SIZE: Final = 4096
ALIGN: Final = 1 << 20  # MAPPED_RAM_FILE_OFFSET_ALIGNMENT


@dataclass
class _Ram:
    blocks: list[tuple[str, int]] = field(default_factory=list)
    pages: dict[tuple[str, int], bytes] = field(default_factory=dict)
    sid: int = 0


def _walk(data: bytes) -> tuple[bytes, bytes, _Ram, int]:
    """(header and configuration, ram START section header, RAM, where the device
    sections start)."""
    assert data[:4] == b"QEVM" and data[8] == 0x07
    n = struct.unpack_from(">I", data, 9)[0]
    pos = 13 + n
    assert data[pos] == 0x01, "a 7.2 stream without capabilities: ram START next"
    head = data[:pos]
    start = pos
    sid = struct.unpack_from(">I", data, pos + 1)[0]
    name_len = data[pos + 5]
    assert data[pos + 6 : pos + 6 + name_len] == b"ram"
    pos += 6 + name_len + 8
    start_header = data[start:pos]
    ram = _Ram(sid=sid)
    block = ""
    while True:
        (addr,) = struct.unpack_from(">Q", data, pos)
        pos += 8
        flags = addr & (PAGE_SIZE - 1)
        if flags & MEM_SIZE:
            total, seen = addr & ~(PAGE_SIZE - 1), 0
            while seen < total:
                ln = data[pos]
                name = data[pos + 1 : pos + 1 + ln].decode()
                (length,) = struct.unpack_from(">Q", data, pos + 1 + ln)
                pos += 1 + ln + 8
                ram.blocks.append((name, length))
                seen += length
            continue
        if flags & EOS:
            assert data[pos] == 0x7E  # the section footer
            pos += 5
            if data[pos] in (0x02, 0x03) and struct.unpack_from(">I", data, pos + 1)[0] == sid:
                pos += 5  # the next PART/END of ram
                continue
            return head, start_header, ram, pos
        if not flags & CONTINUE:
            ln = data[pos]
            block = data[pos + 1 : pos + 1 + ln].decode()
            pos += 1 + ln
        offset = addr & ~(PAGE_SIZE - 1)
        if flags & ZERO:
            pos += 1
        else:
            assert flags & PAGE, f"flags {flags:#x}"
            ram.pages[(block, offset)] = data[pos : pos + PAGE_SIZE]
            pos += PAGE_SIZE


def _capabilities(*names: str) -> bytes:
    sub = b"configuration/capabilities"
    out = bytes([0x05, len(sub)]) + sub + struct.pack(">II", 1, len(names))
    return out + b"".join(bytes([len(n)]) + n.encode() for n in names)


def mapped_ram(stream: bytes, base: int = 0, capabilities: tuple[str, ...] = ("mapped-ram",)) -> bytes:
    """``stream`` (a real 7.2 stream) with its RAM in the mapped-ram layout; ``base`` is
    where it will start in its file (a libvirt image's header before it)."""
    head, start_header, ram, rest = _walk(stream)
    out = bytearray(head + _capabilities(*capabilities) + start_header)
    total = sum(length for _, length in ram.blocks)
    out += struct.pack(">Q", total | MEM_SIZE)
    for name, length in ram.blocks:
        out += bytes([len(name)]) + name.encode() + struct.pack(">Q", length)
        pages = length // PAGE_SIZE
        bitmap_size = -(-pages // 64) * 8
        bitmap_offset = base + len(out) + 28
        pages_offset = -(-(bitmap_offset + bitmap_size) // ALIGN) * ALIGN
        out += struct.pack(">IQQQ", 1, PAGE_SIZE, bitmap_offset, pages_offset)
        bitmap = bytearray(bitmap_size)
        region = bytearray(length)
        for (block, offset), page in ram.pages.items():
            if block == name:
                region[offset : offset + PAGE_SIZE] = page
                i = offset // PAGE_SIZE  # host unsigned longs: little-endian x86
                bitmap[i // 8] |= 1 << (i % 8)
        out += bitmap
        out += bytes(pages_offset - base - len(out))
        out += region
    out += struct.pack(">Q", EOS) + b"\x7e" + struct.pack(">I", ram.sid)
    return bytes(out) + stream[rest:]


def with_ram_record(stream: bytes, record: int) -> bytes:
    """``stream`` with one more RAM record (a be64 address|flags word) first in its ram
    START section, after the block list: a multifd flush, a compressed page's flag..."""
    head, start_header, ram, _ = _walk(stream)
    at = len(head) + len(start_header) + 8 + sum(1 + len(n) + 8 for n, _ in ram.blocks)
    return stream[:at] + struct.pack(">Q", record) + stream[at:]
