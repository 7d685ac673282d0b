"""A qcow2 snapshot's vm state: a lazy, seekable reader through the snapshot's L1 table, L2
tables and clusters (normal, zero, unallocated, compressed with deflate or zstd, extended L2
subclusters), and the xsave images of the QEMU migration stream it holds.

Sources (qemu/qemu, QEMU 7.2): docs/interop/qcow2.txt ("Cluster mapping", "Extended L2
Entries", "Snapshots"); block/qcow2.h qcow2_get_cluster_type, qcow2_get_subcluster_type,
qcow2_vm_state_offset; block/qcow2-cluster.c qcow2_get_host_offset (unaligned offsets are
corruption: EIO) and qcow2_parse_compressed_l2_entry; block/qcow2-threads.c
qcow2_zlib_decompress (raw deflate, 4 KiB window, the cluster must fill) and
qcow2_zstd_decompress; block/qcow2-snapshot.c qcow2_snapshot_goto (no external data file, the
disk size must match); block/io.c (reads past the end of the file are zeros).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from typing_extensions import Buffer

from kvmfpu.blob.errors import InputError
from kvmfpu.blob.qcow2 import (
    CHECKED,
    INCOMPAT_DATA_FILE,
    L1E_OFFSET_MASK,
    L2E_OFFSET_MASK,
    NOT_CHECKED,
    OFLAG_COMPRESSED,
    OFLAG_ZERO,
    QCOW_MAX_L1_SIZE,
    SUBCLUSTERS,
    Image,
    Snapshot,
    features_note,
    open_image,
)
from kvmfpu.blob.sources import Capture
from kvmfpu.blob.stream import CHUNK, Source

#: What a hole reads as, CHUNK bytes at a time.
_ZEROS: Final = bytes(CHUNK)


def _u(fmt: str, data: bytes, off: int = 0) -> tuple[int, ...]:
    return tuple(int(v) for v in struct.unpack_from(fmt, data, off))


class VmState(io.RawIOBase):
    """A snapshot's vm state as a read-only, seekable binary file. Clusters are located through
    the snapshot's L1 table -> L2 tables when read; the L2 table and data cluster last used
    are kept. Refuses (InputError) what QEMU would fail on with EIO (unaligned offsets, an
    invalid subcluster bitmap, compressed data that does not expand to a cluster), what would
    need another file (a backing file, an external data file), and tables or clusters past
    the end of the file or aliasing metadata or each other."""

    def __init__(self, image: Image, snap: Snapshot):
        super().__init__()
        h = image.header
        self.image, self.snap, self.h = image, snap, h
        self.size = snap.vm_state_size
        self.pos = 0
        self.base = h.vm_state_offset(snap.disk_size)
        self.l2_entries = 1 << h.l2_bits
        # Reads from the file, and clusters (or subclusters) by kind, for tests and tools.
        self.stats = dict.fromkeys(
            (
                "l2_reads",
                "cluster_reads",
                "normal",
                "zero",
                "unallocated",
                "compressed",
                "zero_subclusters",
                "unallocated_subclusters",
            ),
            0,
        )
        if h.incompatible & INCOMPAT_DATA_FILE:
            raise InputError(
                f"{image.name}: the image keeps its clusters in an external data "
                f"file ({h.data_file or 'unnamed'}); QEMU does not load internal "
                "snapshots of such images (qcow2_snapshot_goto: ENOTSUP)"
            )
        if snap.disk_size != h.size:
            raise InputError(
                f"{image.name}: {snap.label} has a {snap.disk_size}-byte "
                f"disk, the image {h.size}: QEMU's qcow2_snapshot_goto refuses to "
                "load it (different disk size)"
            )
        if snap.l1_size * 8 > QCOW_MAX_L1_SIZE:
            raise InputError(
                f"{image.name}: {snap.label} has an L1 table of "
                f"{snap.l1_size} entries (QEMU takes at most {QCOW_MAX_L1_SIZE // 8})"
            )
        if snap.l1_table_offset % h.cluster_size:
            raise InputError(
                f"{image.name}: {snap.label}'s L1 table offset {snap.l1_table_offset} is not cluster aligned"
            )
        if snap.l1_size and snap.l1_table_offset + snap.l1_size * 8 > image.file_size:
            raise InputError(
                f"{image.name}: {snap.label}'s L1 table "
                f"({snap.l1_size} entries at {snap.l1_table_offset}) runs past "
                f"the end of the file ({image.file_size} bytes)"
            )
        # Host clusters holding metadata, and those the vm state's data came from: a second
        # use of either is a loop in the tables (QEMU never writes one).
        self._meta = _Bits()
        self._data = _Bits()
        self._seen = _Bits()  # virtual clusters already checked (a re-read is not a loop)
        self._l2_seen: dict[int, int] = {}  # L1 index -> its L2 table's host cluster
        for off, size in (
            (0, h.cluster_size),
            (snap.l1_table_offset, snap.l1_size * 8),
            (h.l1_table_offset, h.l1_size * 8),
            (h.snapshots_offset, image.snapshot_table_size),
        ):
            for c in _clusters(off, min(size, max(0, image.file_size - off)), h.cluster_bits):
                self._meta.add(c)
        self._l2: tuple[int, bytes] | None = None  # (L1 index, table)
        self._cluster: tuple[int, bytes] | None = None  # (virtual cluster, data)

    # -- io.RawIOBase ---------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(22, "negative seek position")
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer: Buffer) -> int:
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), self.size - self.pos))
        cs = self.h.cluster_size
        done = 0
        while done < n:
            vcluster, within = divmod(self.base + self.pos, cs)
            hole = self._hole(vcluster)
            if hole:  # a run of clusters no L2 table maps: zeros, filled at once
                take = min(n - done, hole * cs - within)
                for at in range(done, done + take, CHUNK):  # no fresh pages to zero
                    out[at : min(at + CHUNK, done + take)] = _ZEROS[: min(CHUNK, done + take - at)]
                self.stats["unallocated"] += -(-(within + take) // cs)
            else:
                take = min(n - done, cs - within)
                out[done : done + take] = memoryview(self._cluster_data(vcluster))[within : within + take]
            done += take
            self.pos += take
        return done

    # -- mapping --------------------------------------------------------------------------

    def _hole(self, vcluster: int) -> int:
        """How many clusters from ``vcluster`` on read as zeros because no L2 table maps them
        (past the snapshot's L1 table, or an empty L1 entry), 0 when a table must be read
        or a backing file would supply them (refused when read): a terabyte of unallocated
        vm state costs no Python loop per cluster."""
        if self.h.backing_file:
            return 0
        l1_index, l2_index = divmod(vcluster, self.l2_entries)
        if l1_index >= self.snap.l1_size:
            return -(-(self.base + self.size) // self.h.cluster_size) - vcluster
        if self._l2_table(l1_index) is None:
            return self.l2_entries - l2_index
        return 0

    def _cluster_data(self, vcluster: int) -> bytes:
        if self._cluster is not None and self._cluster[0] == vcluster:
            return self._cluster[1]
        l1_index, l2_index = divmod(vcluster, self.l2_entries)
        table = self._l2_table(l1_index)
        if table is None:
            data = self._unallocated(vcluster, "its L1 entry is empty")
        else:
            es = self.h.l2_entry_size
            entry = _u(">Q", table, l2_index * es)[0]
            bitmap = _u(">Q", table, l2_index * es + 8)[0] if es == 16 else 0
            data = self._decode_entry(vcluster, entry, bitmap)
        self._cluster = (vcluster, data)
        return data

    def _l2_table(self, l1_index: int) -> bytes | None:
        if self._l2 is not None and self._l2[0] == l1_index:
            return self._l2[1]
        h, img = self.h, self.image
        if l1_index >= self.snap.l1_size:  # past the snapshot's L1: unallocated (goto pads)
            return None
        raw = img.pread(self.snap.l1_table_offset + 8 * l1_index, 8, "an L1 entry")
        l2_off = _u(">Q", raw)[0] & L1E_OFFSET_MASK
        if not l2_off:
            return None
        if l2_off % h.cluster_size:
            raise InputError(
                f"{img.name}: L2 table offset {l2_off:#x} unaligned (L1 index {l1_index}; QEMU: EIO)"
            )
        host = l2_off >> h.cluster_bits
        if self._l2_seen.get(l1_index) != host and (host in self._meta or host in self._data):
            raise InputError(
                f"{img.name}: the L2 table at {l2_off:#x} (L1 index {l1_index}) "
                "overlaps the header, an L1 table, the snapshot table or a data "
                "cluster (a loop in the image's tables)"
            )
        table = img.pread(l2_off, h.cluster_size, f"the L2 table for L1 index {l1_index}")
        self._meta.add(host)
        self._l2_seen[l1_index] = host
        self.stats["l2_reads"] += 1
        self._l2 = (l1_index, table)
        return table

    def _decode_entry(self, vcluster: int, entry: int, bitmap: int) -> bytes:
        h, img = self.h, self.image
        cs = h.cluster_size
        if entry & OFLAG_COMPRESSED:
            if h.extended_l2 and bitmap:
                raise InputError(
                    f"{img.name}: compressed cluster with a non-zero subcluster "
                    f"bitmap at virtual offset {vcluster * cs:#x}"
                )
            self.stats["compressed"] += 1
            return self._compressed(vcluster, entry)
        host = entry & L2E_OFFSET_MASK
        if not h.extended_l2:
            if entry & OFLAG_ZERO:
                self.stats["zero"] += 1
                return bytes(cs)
            if not host:
                self.stats["unallocated"] += 1
                return self._unallocated(vcluster, "it is unallocated")
            self.stats["normal"] += 1
            return self._read_host(vcluster, host)
        # Extended L2: 32 subclusters, bit x allocated, bit 32+x reads as zeros.
        alloc, zero = bitmap & 0xFFFF_FFFF, bitmap >> 32
        if alloc & zero or (not host and alloc):
            raise InputError(
                f"{img.name}: invalid subcluster bitmap {bitmap:#018x} at virtual "
                f"offset {vcluster * cs:#x} (QEMU: QCOW2_SUBCLUSTER_INVALID, EIO)"
            )
        sub = cs // SUBCLUSTERS
        if alloc:
            self.stats["normal"] += 1
        data = bytearray(self._read_host(vcluster, host) if alloc else bytes(cs))
        for i in range(SUBCLUSTERS):
            if not alloc >> i & 1:
                reads_zero = bool(zero >> i & 1)
                self.stats["zero_subclusters" if reads_zero else "unallocated_subclusters"] += 1
                if not reads_zero and h.backing_file:
                    self._unallocated(vcluster, f"its subcluster {i} is unallocated")
                data[i * sub : (i + 1) * sub] = bytes(sub)
        return bytes(data)

    def _read_host(self, vcluster: int, host: int) -> bytes:
        h, img = self.h, self.image
        if host % h.cluster_size:
            raise InputError(
                f"{img.name}: cluster offset {host:#x} unaligned (virtual offset "
                f"{vcluster * h.cluster_size:#x}; QEMU: EIO)"
            )
        hc = host >> h.cluster_bits
        if vcluster not in self._seen and (hc in self._meta or hc in self._data):
            raise InputError(
                f"{img.name}: the data cluster at {host:#x} is also the header, an "
                "L1 or L2 table, the snapshot table or another cluster of the vm "
                "state (a loop in the image's tables)"
            )
        self._data.add(hc)
        self._seen.add(vcluster)
        self.stats["cluster_reads"] += 1
        # The file may end inside the vm state's last cluster: the rest reads as zeros.
        return img.pread(
            host,
            h.cluster_size,
            f"the cluster for virtual offset {vcluster * h.cluster_size:#x}",
            short_ok=True,
        )

    def _unallocated(self, vcluster: int, why: str) -> bytes:
        if self.h.backing_file:
            raise InputError(
                f"{self.image.name}: the vm state's cluster at virtual offset "
                f"{vcluster * self.h.cluster_size:#x} would come from the backing "
                f"file {self.h.backing_file!r} ({why}); kvmfpu reads no backing "
                "chain: give it the image the data is in (qemu-img convert)"
            )
        return bytes(self.h.cluster_size)

    def _compressed(self, vcluster: int, entry: int) -> bytes:
        """qcow2_parse_compressed_l2_entry: offset in the low 62-(cluster_bits-8) bits, then
        the count of additional 512-byte sectors."""
        h, img = self.h, self.image
        shift = 62 - (h.cluster_bits - 8)
        coffset = entry & ((1 << shift) - 1)
        nb_sectors = ((entry >> shift) & ((1 << (h.cluster_bits - 8)) - 1)) + 1
        csize = nb_sectors * 512 - (coffset & 511)
        where = f"the compressed cluster for virtual offset {vcluster * h.cluster_size:#x}"
        if any(c in self._meta or c in self._data for c in _clusters(coffset, csize, h.cluster_bits)):
            raise InputError(
                f"{img.name}: {where} lies in the header, an L1 or L2 table, the snapshot table "
                "or a data cluster (a loop in the image's tables)"
            )
        raw = img.pread(coffset, csize, where, short_ok=True)
        self.stats["cluster_reads"] += 1
        return _expand(raw, h.cluster_size, h.compression_type, f"{img.name}: {where}")


class _Bits:
    """A set of cluster numbers as a sparse bitmap (4096 clusters a page): memory follows
    the clusters added, one bit each, however far apart they are."""

    PAGE: Final = 12

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}

    def add(self, n: int) -> None:
        page = self.pages.setdefault(n >> self.PAGE, bytearray(1 << (self.PAGE - 3)))
        i = n & ((1 << self.PAGE) - 1)
        page[i >> 3] |= 1 << (i & 7)

    def __contains__(self, n: object) -> bool:
        if not isinstance(n, int):
            return False
        page = self.pages.get(n >> self.PAGE)
        i = n & ((1 << self.PAGE) - 1)
        return page is not None and bool(page[i >> 3] >> (i & 7) & 1)


def _clusters(offset: int, size: int, bits: int) -> range:
    return range(offset >> bits, (offset + size + (1 << bits) - 1) >> bits)


def _expand(raw: bytes, cluster_size: int, ctype: int, where: str) -> bytes:
    """One cluster from its compressed bytes: raw deflate with a 4 KiB window
    (qcow2_zlib_decompress: inflateInit2(-12)) or zstd frames (qcow2_zstd_decompress); either
    must fill the cluster exactly, else QEMU fails the read with EIO."""
    if ctype == 0:
        try:
            out = zlib.decompressobj(-12).decompress(raw, cluster_size)
        except zlib.error as exc:
            raise InputError(f"{where} does not inflate: {exc}") from None
    else:
        out = _zstd(raw, cluster_size, where)
    if len(out) != cluster_size:
        raise InputError(
            f"{where} expands to {len(out)} bytes, not a {cluster_size}-byte cluster (QEMU: EIO)"
        )
    return out


def _zstd(raw: bytes, cluster_size: int, where: str) -> bytes:
    try:
        import zstandard
    except ImportError:
        raise InputError(
            f"{where}: the image compresses with zstd, and reading it needs the "
            "optional zstandard module (pip install 'kvmfpu[zstd]')"
        ) from None
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True)
        return bytes(reader.read(cluster_size))
    except zstandard.ZstdError as exc:
        raise InputError(f"{where} does not expand (zstd): {exc}") from None


# -- what kvmfpu.blob.sources calls ------------------------------------------------------------


@contextmanager
def open_vm_state(
    source: str | os.PathLike[str] | bytes, snapshot: str | None = None
) -> Iterator[tuple[Image, Snapshot, VmState]]:
    """The image, the chosen snapshot (``Image.choose``) and its vm state as an open binary
    file (hand it to ``io.BufferedReader`` for a streaming parser); closed on the way out."""
    with open_image(source) as img:
        snap = img.choose(snapshot)
        with img.vm_state(snap) as vm:
            yield img, snap, vm


def captures(
    source: str | os.PathLike[str] | bytes, max_size: int, snapshot: str | None = None
) -> list[Capture]:
    """The xsave images in the vm state of one snapshot of a qcow2 image (``snapshot``: its name,
    as ``loadvm`` takes it, or its ID; default: the only one with a vm state). The vm state is
    a QEMU migration stream, handed to the streaming parser (kvmfpu.blob.qemu_stream) as a
    seekable stream: its RAM pages are skipped, never held, so a multi-GB vm state is read in
    bounded memory, and ``max_size`` limits what is decoded (the VM description and the
    device state), not the vm state or the image."""
    from kvmfpu.blob import qemu
    from kvmfpu.blob.sources import check_max_size

    check_max_size(max_size)
    with open_vm_state(source, snapshot) as (img, snap, vm):
        where = snap.label
        if vm.read(4) != b"QEVM":  # one cluster read: a vm state is a stream
            raise InputError(
                f"{img.name}: the vm state of {where} is not a QEMU migration stream (no QEVM magic)"
            )
        vm.seek(0)
        notes = [
            f"qcow2 v{img.header.version} {where}: {snap.vm_state_size}-byte vm state at "
            f"virtual offset {vm.base:#x}" + features_note(img.header),
            "qcow2: checked " + "; ".join(CHECKED) + "; not checked: " + ", ".join(NOT_CHECKED),
        ]
        # Buffered: the parser's many small reads (section headers, fields) stay in C, and
        # a seek within the buffer (a RAM page skipped) moves a pointer.
        reader = io.BufferedReader(vm, buffer_size=CHUNK)
        stream = Source(reader, f"{img.name} ({where} vm state)", size=snap.vm_state_size, seekable=True)
        caps = qemu.captures(stream, max_size)
        container = {"snapshot": snap.to_json(), "reads": dict(vm.stats)}
    for cap in caps:
        cap.origin = f"{cap.origin} in {where}"
        cap.fmt = "qcow2"
        cap.notes[:0] = notes
        cap.container["qcow2"] = container
    return caps
