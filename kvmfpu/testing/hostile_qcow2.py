"""qcow2 images built from the format's text (QEMU docs/interop/qcow2.txt), for the tests of
kvmfpu.blob.qcow2: well-formed ones whose vm state is stored in any kind of cluster (normal,
zero, unallocated, compressed with deflate or zstd, extended-L2 subclusters), which QEMU's
own ``qemu-img check`` and ``loadvm`` accept, and hostile ones derived from them (tables past
the end of the file, huge tables, loops, encryption, backing and data files).

The layout is the simplest the format allows: header and extensions in cluster 0, the active
L1 table (all zero: the vm state exists only in the snapshot), the snapshot's L1 table, its L2
tables, data clusters, packed compressed data (byte-aligned, as QEMU's
qcow2_alloc_compressed_cluster_offset packs it), the snapshot table, then the refcount table
and blocks counting every reference (so ``qemu-img check`` finds no error).
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

MAGIC: Final = b"QFI\xfb"
KINDS: Final = ("normal", "zero", "unallocated", "compressed", "subclusters")


@dataclass
class Spec:
    """What to build. ``kinds`` is cycled over the vm state's clusters; "zero" and
    "unallocated" apply only where the cluster's data is all zero (else it is stored normally),
    "subclusters" (extended L2 only) allocates the subclusters with data and leaves the rest
    reading zeros (even ones by their zero bit, odd ones unallocated)."""

    vm_state: bytes
    version: int = 3
    cluster_bits: int = 16
    disk_size: int = 1 << 20
    extended_l2: bool = False
    compression: str = "zlib"  # "zlib" or "zstd"
    zlib_level: int = 6  # QEMU's Z_DEFAULT_COMPRESSION; 1 inflates several times faster
    kinds: Sequence[str] = ("normal",)
    snapshots: Sequence[tuple[str, str]] = (("1", "snap1"),)  # (id, name); all share the state
    backing_file: str | None = None
    extra_data: bool = True  # v3 requires it; v2 entries may have none
    date_sec: int = 1_700_000_000
    disk_only: Sequence[tuple[str, str]] = ()  # snapshots with no vm state
    #: A vm state too large to hold: (its size, cluster number -> that cluster's bytes);
    #: ``vm_state`` is then ignored. A cluster returned again as the same object is
    #: compressed once (see ``resent_ram_image``).
    lazy: tuple[int, Callable[[int], bytes]] | None = None
    _l2_offsets: list[int] = field(default_factory=list)


def _round(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _compress(data: bytes, kind: str, level: int = 6) -> bytes:
    if kind == "zstd":
        import zstandard

        return bytes(zstandard.ZstdCompressor().compress(data))
    c = zlib.compressobj(level, zlib.DEFLATED, -12)  # qcow2_zlib_compress: raw, 4 KiB window
    return c.compress(data) + c.flush()


def build(spec: Spec) -> bytes:
    """The image's bytes."""
    cs = 1 << spec.cluster_bits
    es = 16 if spec.extended_l2 else 8
    l2_entries = cs // es
    span = cs * l2_entries
    vm_off = _round(spec.disk_size, span)  # qcow2_vm_state_offset
    state_size = len(spec.vm_state) if spec.lazy is None else spec.lazy[0]
    nclusters = -(-state_size // cs)
    l1_first = vm_off // span
    l1_size = l1_first + -(-max(nclusters, 1) // l2_entries)
    l1_bytes = _round(l1_size * 8, cs)
    out = bytearray(cs)  # cluster 0: the header
    refs: dict[int, int] = {0: 1}

    def alloc(size: int) -> int:
        off = _round(len(out), cs)
        out.extend(bytes(off - len(out) + _round(size, cs)))
        for c in range(off // cs, (off + _round(size, cs)) // cs):
            refs[c] = refs.get(c, 0) + 1
        return off

    active_l1 = alloc(l1_bytes)
    snap_l1 = alloc(l1_bytes)
    l1 = [0] * l1_size
    l2_tables: dict[int, bytearray] = {}
    compressed: list[tuple[int, bytes]] = []  # (virtual cluster, compressed bytes)
    packed: dict[bytes, bytes] = {}  # cluster data -> its compressed bytes
    entries: dict[int, tuple[int, int]] = {}  # virtual cluster -> (entry, bitmap)
    for i in range(nclusters):
        if spec.lazy is None:
            data = spec.vm_state[i * cs : (i + 1) * cs].ljust(cs, b"\0")
        else:
            data = spec.lazy[1](i)
        kind = spec.kinds[i % len(spec.kinds)]
        if kind in ("zero", "unallocated") and any(data):
            kind = "normal"
        if kind == "zero":
            entries[i] = (0, 0xFFFF_FFFF << 32) if spec.extended_l2 else (1, 0)
        elif kind == "unallocated":
            entries[i] = (0, 0)
        elif kind == "compressed":
            if data not in packed:
                packed[data] = _compress(data, spec.compression, spec.zlib_level)
            compressed.append((i, packed[data]))
        else:
            host = alloc(cs)
            out[host : host + cs] = data
            bitmap = 0
            if spec.extended_l2:
                sub = cs // 32
                for s in range(32):
                    held = kind != "subclusters" or any(data[s * sub : (s + 1) * sub])
                    # Empty subclusters alternate: reads-as-zero bit, or unallocated (zeros too).
                    bitmap |= 1 << s if held else (1 << (32 + s)) * (s % 2 == 0)
            entries[i] = (host | 1 << 63, bitmap)
    # Compressed data packed byte by byte after the data clusters.
    if compressed:
        area = _round(len(out), cs)
        out.extend(bytes(area - len(out)))
        for i, blob in compressed:
            coffset = len(out)
            out.extend(blob)
            nb = ((coffset + len(blob) - 1) >> 9) - (coffset >> 9)
            shift = 62 - (spec.cluster_bits - 8)
            entries[i] = (1 << 62 | nb << shift | coffset, 0)
            for c in range(coffset // cs, (coffset + len(blob) - 1) // cs + 1):
                refs[c] = refs.get(c, 0) + 1
        out.extend(bytes(_round(len(out), cs) - len(out)))
    for i, (entry, bitmap) in entries.items():
        vc = vm_off // cs + i
        l1i, l2i = divmod(vc, l2_entries)
        if l1i not in l2_tables:
            l2_tables[l1i] = bytearray(cs)
        struct.pack_into(">Q", l2_tables[l1i], l2i * es, entry)
        if spec.extended_l2:
            struct.pack_into(">Q", l2_tables[l1i], l2i * es + 8, bitmap)
    for l1i in sorted(l2_tables):
        off = alloc(cs)
        out[off : off + cs] = l2_tables[l1i]
        l1[l1i] = off | 1 << 63
        spec._l2_offsets.append(off)
    out[snap_l1 : snap_l1 + 8 * l1_size] = b"".join(struct.pack(">Q", e) for e in l1)
    table = bytearray()
    for sid, name in list(spec.snapshots) + list(spec.disk_only):
        size = state_size if (sid, name) in spec.snapshots else 0
        extra = struct.pack(">QQQ", size, spec.disk_size, (1 << 64) - 1) if spec.extra_data else b""
        table.extend(
            struct.pack(
                ">QIHHIIQII",
                snap_l1,
                l1_size,
                len(sid.encode()),
                len(name.encode()),
                spec.date_sec,
                0,
                0,
                size & 0xFFFF_FFFF,
                len(extra),
            )
        )
        table.extend(extra + sid.encode() + name.encode())
        table.extend(bytes(_round(len(table), 8) - len(table)))
    snaps_off = alloc(len(table))
    out[snaps_off : snaps_off + len(table)] = table
    # The snapshot's L1 table references its L2 tables once (refcount 1 each, as created).
    rt_off, rt_clusters = _refcounts(out, refs, cs)
    _header(
        out,
        spec,
        l1_size,
        active_l1,
        rt_off,
        rt_clusters,
        snaps_off,
        len(spec.snapshots) + len(spec.disk_only),
    )
    return bytes(out)


def _refcounts(out: bytearray, refs: dict[int, int], cs: int) -> tuple[int, int]:
    """A refcount table and 16-bit refcount blocks covering every cluster, themselves
    included (sized until they cover what they add)."""
    per_block = cs // 2
    blocks = tclusters = 1
    while True:
        total = len(out) // cs + blocks + tclusters
        need_blocks = -(-total // per_block)
        need_t = -(-need_blocks * 8 // cs)
        if (need_blocks, need_t) == (blocks, tclusters):
            break
        blocks, tclusters = need_blocks, need_t
    rt_off = len(out)
    out.extend(bytes(tclusters * cs))
    block_offs = []
    for _ in range(blocks):
        block_offs.append(len(out))
        out.extend(bytes(cs))
    for c in range(rt_off // cs, len(out) // cs):
        refs[c] = refs.get(c, 0) + 1
    for b, off in enumerate(block_offs):
        struct.pack_into(">Q", out, rt_off + 8 * b, off)
    for c, n in refs.items():
        b, i = divmod(c, per_block)
        struct.pack_into(">H", out, block_offs[b] + 2 * i, n)
    return rt_off, tclusters


def _header(
    out: bytearray,
    spec: Spec,
    l1_size: int,
    l1_off: int,
    rt_off: int,
    rt_clusters: int,
    snaps_off: int,
    nb: int,
) -> None:
    cs = 1 << spec.cluster_bits
    zstd = spec.compression == "zstd"
    incompat = (8 if zstd else 0) | (16 if spec.extended_l2 else 0)
    hlen = 112 if spec.version == 3 else 72
    hdr = struct.pack(
        ">4sIQIIQIIQQIIQ",
        MAGIC,
        spec.version,
        0,
        0,
        spec.cluster_bits,
        spec.disk_size,
        0,
        l1_size,
        l1_off,
        rt_off,
        rt_clusters,
        nb,
        snaps_off,
    )
    if spec.version == 3:
        hdr += struct.pack(">QQQII", incompat, 0, 0, 4, hlen) + bytes([1 if zstd else 0]) + bytes(7)
    ext = b""
    if spec.backing_file:
        name = spec.backing_file.encode()
        bf_off = len(hdr) + 8  # after the end-of-extensions marker
        hdr = hdr[:8] + struct.pack(">QI", bf_off, len(name)) + hdr[20:]
        ext = bytes(8) + name
    else:
        ext = bytes(8)
    head = hdr + ext
    assert len(head) <= cs
    out[0 : len(head)] = head


# -- a multi-GB vm state in a small file ---------------------------------------------------------

#: What resent_ram_image's vCPU holds (its cpu section's fields).
RESENT_XCR0: Final = 7
RESENT_MXCSR: Final = 0x9FC0


def resent_ram_image(ram_bytes: int, block_pages: int = 64, cluster_bits: int = 16) -> bytes:
    """An image whose snapshot's vm state is a QEMU stream with ``ram_bytes`` of RAM pages
    (RAM_SAVE_FLAG_PAGE records, migration/ram.c) and then one ``cpu`` section (XCR0 7,
    MXCSR 9FC0h): a ``block_pages``-page pc.ram block whose pages are sent over and over, as
    precopy re-sends dirty pages. Every cluster is stored compressed (deflate), and the
    records repeat, so a vm state of gigabytes is a file of megabytes built in a second
    (QEMU's savevm stores vm state clusters uncompressed; the reader takes both). Reading
    it inflates every cluster: each holds page headers the parser reads."""
    from kvmfpu.testing import hostile

    cs = 1 << cluster_bits
    page = 4096
    mark = b"@RECORDS@"
    fields = [
        {"name": "xcr0", "type": "uint64", "size": 8},
        {"name": "mxcsr", "type": "uint32", "size": 4},
    ]
    whole = hostile.qemu_stream(
        fields,
        struct.pack(">QI", RESENT_XCR0, RESENT_MXCSR),
        config=hostile.configuration(),
        ram=hostile.ram_section(mark),
    )
    prefix, suffix = whole.split(mark)
    prefix += hostile.ram_blocks([(b"pc.ram", block_pages * page)])
    prefix += hostile.ram_page(0, bytes([0xA5]) * page)  # the first page names its block
    cycle = b"".join(hostile.ram_page(page * i, bytes([i]) * page, None) for i in range(block_pages))
    rounds = max(1, -(-(ram_bytes - page) // (block_pages * page)))  # pages of at least ram_bytes
    body = len(prefix) + rounds * len(cycle)
    size = body + len(suffix)
    twice = cycle * (-(-cs // len(cycle)) + 1)  # any cluster-long run of records
    phases: dict[int, bytes] = {}  # offset within the cycle -> that cluster (one object each)

    def records(start: int, end: int) -> bytes:
        phase = (start - len(prefix)) % len(cycle)
        return twice[phase : phase + end - start]

    def cluster(i: int) -> bytes:
        start, end = i * cs, (i + 1) * cs
        if start >= len(prefix) and end <= body:
            phase = (start - len(prefix)) % len(cycle)
            if phase not in phases:
                phases[phase] = records(start, end)
            return phases[phase]
        out = prefix[start:end]
        if end > len(prefix) and start < body:
            out += records(max(start, len(prefix)), min(end, body))
        if end > body:
            out += suffix[max(start, body) - body : end - body]
        return out.ljust(cs, b"\0")

    spec = Spec(b"", cluster_bits=cluster_bits, kinds=("compressed",), zlib_level=1, lazy=(size, cluster))
    return build(spec)


# -- hostile variants ---------------------------------------------------------------------------


def set_u(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``data`` with one big-endian field replaced."""
    b = bytearray(data)
    struct.pack_into(">" + fmt, b, offset, value)
    return bytes(b)


def snapshot_entry(image: bytes) -> int:
    """The file offset of the first snapshot table entry."""
    return int(struct.unpack_from(">Q", image, 64)[0])


def hostile(vm_state: bytes) -> dict[str, tuple[bytes, str]]:
    """Each hostile case: (image, a regex the refusal must match). Each is a small file."""
    base_spec = Spec(vm_state, cluster_bits=12)
    good = build(base_spec)
    snap = snapshot_entry(good)
    l1_off = int(struct.unpack_from(">Q", good, snap)[0])
    l2_off = base_spec._l2_offsets[0]
    cs = 1 << 12
    l2_first = l2_off + (_round(1 << 20, cs * cs // 8) // cs % (cs // 8)) * 8
    vm_l1_index = _round(1 << 20, cs * cs // 8) // (cs * cs // 8)
    first_host = int(struct.unpack_from(">Q", good, l2_first)[0]) & 0x00FF_FFFF_FFFF_FE00
    cases = {
        "l1 past eof": (
            set_u(good, snap, "Q", _round(len(good), cs) + 64 * cs),
            "L1 table .* runs past the end of the file",
        ),
        "huge l1": (set_u(good, snap + 8, "I", 0xFFFF_FFFF), "L1 table of 4294967295 entries"),
        "l2 is the l1 table": (
            set_u(good, l1_off + 8 * vm_l1_index, "Q", l1_off),
            "loop in the image's tables",
        ),
        "cluster is its l2 table": (
            set_u(good, l2_first, "Q", l2_off | 1 << 63),
            "loop in the image's tables",
        ),
        "l2 past eof": (
            set_u(good, l1_off + 8 * vm_l1_index, "Q", _round(len(good), cs) * 4),
            "past the end of the file",
        ),
        "encrypted": (set_u(good, 32, "I", 2), "LUKS-encrypted qcow2 image"),
        "aes encrypted": (set_u(good, 32, "I", 1), "AES-encrypted qcow2 image"),
        "many snapshots": (set_u(good, 60, "I", 0x7FFF_FFFF), "snapshots \\(QEMU takes at most"),
        "snapshot table past eof": (
            set_u(good, 64, "Q", _round(len(good), cs) * 2),
            "past the end of the file",
        ),
        "huge extra data": (set_u(good, snap + 36, "I", 0xFFFF_FFFF), "extra data"),
        "unknown feature": (set_u(good, 72, "Q", 1 << 40), "unsupported qcow2 incompatible"),
        "external data file": (set_u(good, 72, "Q", 4), "external data file"),
        "cluster bits": (set_u(good, 20, "I", 40), "cluster_bits 40"),
        "vm state of 1 TiB of zeros": (
            set_u(set_u(good, snap + 40, "Q", 1 << 40), l1_off + 8 * vm_l1_index, "Q", 0),
            "not a QEMU migration stream",
        ),
        # The stream's start, then a terabyte of unallocated clusters: the description is
        # looked for in the last --max-size bytes only.
        "1 TiB vm state, no description": (
            set_u(good, snap + 40, "Q", 1 << 40),
            "without a JSON VM description in its last .* bytes",
        ),
        "unaligned cluster": (set_u(good, l2_first, "Q", (l2_off + 512) | 1 << 63), "unaligned"),
        "garbage compressed cluster": (
            set_u(good, l2_first, "Q", 1 << 62 | 3 << 58 | (first_host & ((1 << 58) - 1))),
            "does not inflate|expands to",
        ),
        "disk size mismatch": (set_u(good, snap + 48, "Q", 1 << 21), "different disk size"),
    }
    aliased = bytearray(good)
    struct.pack_into(">Q", aliased, l2_first + 8, struct.unpack_from(">Q", good, l2_first)[0])
    cases["two clusters, one host cluster"] = (bytes(aliased), "loop in the image's tables")
    # A zero cluster left unallocated: QEMU would read it from the backing file.
    holed = vm_state[:cs] + bytes(cs) + vm_state[cs:]
    cases["backing file"] = (
        build(Spec(holed, cluster_bits=12, kinds=("unallocated",), backing_file="base.qcow2")),
        "backing file 'base.qcow2'",
    )
    return cases


def draw(rng: random.Random, vm_state: bytes) -> tuple[str, bytes]:
    """A random well-formed image of ``vm_state`` with a random byte run overwritten (for the
    fuzzers): any result must decode or be refused with InputError."""
    spec = Spec(
        vm_state,
        cluster_bits=rng.choice((12, 14, 16)),
        extended_l2=rng.random() < 0.3,
        kinds=rng.sample(KINDS, k=rng.randint(1, len(KINDS))),
    )
    if spec.extended_l2:
        spec.cluster_bits = max(spec.cluster_bits, 14)
    image = bytearray(build(spec))
    at = rng.randrange(len(image))
    image[at : at + 8] = rng.randbytes(8)
    return "qcow2", bytes(image)


def one_kind(kind: str) -> Callable[[bytes], bytes]:
    """A builder storing every cluster of a vm state as ``kind`` (where the data allows)."""

    def make(state: bytes) -> bytes:
        return build(Spec(state, kinds=(kind,), cluster_bits=14, extended_l2=kind == "subclusters"))

    return make
