"""qcow2 images and their internal snapshots (``savevm``, ``virsh snapshot-create`` internal):
the header, the snapshot table and the choice of a snapshot; kvmfpu.blob.qcow2_vmstate
reads a snapshot's vm state.

Format: QEMU docs/interop/qcow2.txt; behaviour where the text is silent follows QEMU 7.2's
block/qcow2.c (qcow2_do_open, qcow2_read_extensions), block/qcow2-snapshot.c
(qcow2_read_snapshots, find_snapshot_by_id_or_name, qcow2_snapshot_goto), block/qcow2.h
(qcow2_vm_state_offset, qcow2_get_subcluster_type, the QCOW_MAX_* limits),
block/qcow2-cluster.c (qcow2_parse_compressed_l2_entry) and block/qcow2-threads.c (raw
deflate with a 4 KiB window; zstd frames), all read on qemu/qemu.

The vm state is a QEMU migration stream stored in the snapshot's virtual address space right
after the disk, at the first L1 entry that maps no disk cluster:
``ceil(disk_size / (cluster_size * l2_entries)) * cluster_size * l2_entries``.
Every table offset and size is checked against the file (and QEMU's limits) before it is
read; opening an image reads its header and snapshot table only.
"""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from kvmfpu.blob.errors import InputError

if TYPE_CHECKING:
    from kvmfpu.blob.qcow2_vmstate import VmState

MAGIC: Final = b"QFI\xfb"
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21  # block/qcow2.h
QCOW_MAX_SNAPSHOTS: Final = 65536
QCOW_MAX_SNAPSHOTS_SIZE: Final = 1024 * QCOW_MAX_SNAPSHOTS
QCOW_MAX_SNAPSHOT_EXTRA_DATA: Final = 1024
QCOW_MAX_L1_SIZE: Final = 32 << 20  # bytes
L1E_OFFSET_MASK: Final = 0x00FF_FFFF_FFFF_FE00
L2E_OFFSET_MASK: Final = 0x00FF_FFFF_FFFF_FE00
OFLAG_COMPRESSED: Final = 1 << 62
OFLAG_ZERO: Final = 1
SUBCLUSTERS: Final = 32
INCOMPAT_DIRTY, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, INCOMPAT_COMPRESSION, INCOMPAT_EXTL2 = (1, 2, 4, 8, 16)
INCOMPAT_KNOWN: Final = 0x1F
EXT_END, EXT_BACKING_FORMAT, EXT_FEATURE_NAMES, EXT_BITMAPS, EXT_CRYPTO, EXT_DATA_FILE = (
    0,
    0xE2792ACA,
    0x6803F857,
    0x23852875,
    0x0537BE77,
    0x44415441,
)
EXTENSION_NAMES: Final = {
    EXT_BACKING_FORMAT: "backing file format",
    EXT_FEATURE_NAMES: "feature name table",
    EXT_BITMAPS: "bitmaps",
    EXT_CRYPTO: "full disk encryption header",
    EXT_DATA_FILE: "external data file",
}
INCOMPAT_NAMES: Final = {
    0: "dirty",
    1: "corrupt",
    2: "external data file",
    3: "compression type",
    4: "extended L2 entries",
}
COMPRESSION_TYPES: Final = {0: "zlib", 1: "zstd"}
CRYPT_METHODS: Final = {0: "none", 1: "AES", 2: "LUKS"}


@dataclass(frozen=True)
class Extension:
    kind: int
    offset: int  # of its data in the file
    length: int

    @property
    def name(self) -> str:
        return EXTENSION_NAMES.get(self.kind, f"unknown {self.kind:#010x}")


@dataclass(frozen=True)
class Header:
    version: int
    cluster_bits: int
    size: int  # the virtual disk's bytes
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible: int = 0
    compatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4
    header_length: int = 72
    compression_type: int = 0
    backing_file: str | None = None
    backing_format: str | None = None
    data_file: str | None = None
    extensions: tuple[Extension, ...] = ()
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict)

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible & INCOMPAT_EXTL2)

    @property
    def l2_entry_size(self) -> int:
        return 16 if self.extended_l2 else 8

    @property
    def l2_bits(self) -> int:
        """qcow2_do_open: cluster_bits - ctz32(l2_entry_size)."""
        return self.cluster_bits - (4 if self.extended_l2 else 3)

    @property
    def compression(self) -> str:
        return COMPRESSION_TYPES.get(self.compression_type, f"unknown ({self.compression_type})")

    def vm_state_offset(self, disk_size: int) -> int:
        """qcow2_vm_state_offset: l1_vm_state_index (size_to_l1 of the disk size) shifted
        back by cluster_bits + l2_bits."""
        shift = self.cluster_bits + self.l2_bits
        return ((disk_size + (1 << shift) - 1) >> shift) << shift

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "cluster_size": self.cluster_size,
            "virtual_size": self.size,
            "incompatible_features": self.incompatible,
            "compatible_features": self.compatible,
            "autoclear_features": self.autoclear,
            "extended_l2": self.extended_l2,
            "compression_type": self.compression,
            "crypt_method": CRYPT_METHODS.get(self.crypt_method, str(self.crypt_method)),
            "backing_file": self.backing_file,
            "data_file": self.data_file,
            "extensions": [e.name for e in self.extensions],
        }


@dataclass(frozen=True)
class Snapshot:
    index: int  # its place in the table (0-based)
    id: str
    name: str
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int  # the 64-bit extra-data field when present, else the 32-bit one
    vm_state_size_32: int
    disk_size: int
    l1_table_offset: int
    l1_size: int
    extra_data_size: int
    icount: int | None = None  # None: not recorded (absent or -1)

    @property
    def label(self) -> str:
        """How messages name it: names are up to 64 KiB of anything, so cut short."""
        name = self.name if len(self.name) <= 60 else self.name[:57] + "..."
        sid = self.id if len(self.id) <= 20 else self.id[:17] + "..."
        return f"snapshot {name!r} (ID {sid})"

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "date_sec": self.date_sec,
            "date_nsec": self.date_nsec,
            "vm_clock_nsec": self.vm_clock_nsec,
            "vm_state_size": self.vm_state_size,
            "disk_size": self.disk_size,
            "l1_table_offset": self.l1_table_offset,
            "l1_size": self.l1_size,
            "extra_data_size": self.extra_data_size,
            "icount": self.icount,
        }


def _u(fmt: str, data: bytes, off: int = 0) -> tuple[int, ...]:
    return tuple(int(v) for v in struct.unpack_from(fmt, data, off))


class Image:
    """An open qcow2 image: ``header`` and ``snapshots``, read from ``f`` (a seekable binary
    file; nothing is written). ``name`` is how messages call it."""

    def __init__(self, f: BinaryIO, name: str = "qcow2 image"):
        self.f = f
        self.name = name
        self.file_size = f.seek(0, io.SEEK_END)
        self.bytes_read = 0
        self.header = self._header()
        self.snapshots = self._snapshots()

    # -- raw access -----------------------------------------------------------------------

    def pread(self, offset: int, size: int, what: str, *, short_ok: bool = False) -> bytes:
        """``size`` bytes at ``offset``; InputError naming ``what`` when they are not all in
        the file (``short_ok``: a data cluster's tail past EOF reads as zeros, as QEMU's block
        layer pads reads past the end of the file)."""
        if offset < 0 or size < 0 or (offset >= self.file_size and size):
            raise InputError(
                f"{self.name}: {what} at byte {offset} is past the end of the file ({self.file_size} bytes)"
            )
        if offset + size > self.file_size and not short_ok:
            raise InputError(
                f"{self.name}: {what} ({size} bytes at {offset}) runs past the "
                f"end of the file ({self.file_size} bytes)"
            )
        self.f.seek(offset)
        data = self.f.read(min(size, self.file_size - offset))
        self.bytes_read += len(data)
        return data + bytes(size - len(data))

    # -- header ---------------------------------------------------------------------------

    def _header(self) -> Header:
        raw = self.pread(0, min(self.file_size, 104), "the header", short_ok=True)
        if raw[:4] != MAGIC:
            raise InputError(f"{self.name}: not a qcow2 image (no QFI\\xfb magic)")
        if self.file_size < 72:
            raise InputError(f"{self.name}: truncated qcow2 header ({self.file_size} bytes)")
        (version,) = _u(">I", raw, 4)
        if version not in (2, 3):
            raise InputError(f"{self.name}: qcow2 version {version}; versions 2 and 3 exist")
        if self.file_size < 72 or (version == 3 and self.file_size < 104):
            raise InputError(f"{self.name}: truncated qcow2 header ({self.file_size} bytes)")
        (bf_off, bf_size, cbits, size, crypt, l1_size, l1_off, _rt_off, _rt_clusters, nb_snap, snap_off) = _u(
            ">QIIQIIQQIIQ", raw, 8
        )
        if not MIN_CLUSTER_BITS <= cbits <= MAX_CLUSTER_BITS:
            raise InputError(f"{self.name}: cluster_bits {cbits} (QEMU takes 9 to 21)")
        if l1_size * 8 > QCOW_MAX_L1_SIZE:
            raise InputError(
                f"{self.name}: active L1 table of {l1_size} entries (QEMU takes "
                f"at most {QCOW_MAX_L1_SIZE // 8})"
            )
        kw: dict[str, Any] = {}
        if version == 3:
            incompat, compat, autoclear, rorder, hlen = _u(">QQQII", raw, 72)
            if hlen < 104 or hlen % 8 or hlen > 1 << cbits:
                raise InputError(
                    f"{self.name}: header_length {hlen} (at least 104, a multiple "
                    "of 8, within the first cluster)"
                )
            if rorder > 6:
                raise InputError(f"{self.name}: refcount_order {rorder} (at most 6)")
            ctype = 0
            if hlen > 104:
                ctype = self.pread(104, 1, "compression_type")[0]
            kw = dict(
                incompatible=incompat,
                compatible=compat,
                autoclear=autoclear,
                refcount_order=rorder,
                header_length=hlen,
                compression_type=ctype,
            )
        hdr = Header(version, cbits, size, crypt, l1_size, l1_off, nb_snap, snap_off, **kw)
        ext_end = bf_off if bf_off else hdr.cluster_size
        if bf_off > hdr.cluster_size:
            raise InputError(f"{self.name}: backing_file_offset {bf_off} is past the first cluster")
        exts, names, backing_format, data_file = self._extensions(hdr.header_length, ext_end)
        backing = None
        if bf_off:
            if bf_size > min(1023, hdr.cluster_size - bf_off):
                raise InputError(
                    f"{self.name}: backing file name of {bf_size} bytes (QEMU "
                    "takes at most 1023, within the first cluster)"
                )
            backing = self.pread(bf_off, bf_size, "the backing file name").decode("utf-8", "replace")
        hdr = dataclasses.replace(
            hdr,
            backing_file=backing,
            backing_format=backing_format,
            data_file=data_file,
            extensions=tuple(exts),
            feature_names=names,
        )
        self._check_features(hdr)
        return hdr

    def _extensions(
        self, start: int, end: int
    ) -> tuple[list[Extension], dict[tuple[int, int], str], str | None, str | None]:
        """qcow2_read_extensions: {u32 type, u32 length, data padded to 8} until type 0 or the
        end of the area (the first cluster, or the backing file name)."""
        exts: list[Extension] = []
        names: dict[tuple[int, int], str] = {}
        backing_format = data_file = None
        off = start
        while off + 8 <= end:
            kind, length = _u(">II", self.pread(off, 8, "a header extension"))
            off += 8
            if kind == EXT_END:
                break
            if length > end - off:
                raise InputError(
                    f"{self.name}: header extension {kind:#x} of {length} bytes "
                    f"runs past the header area ({end} bytes)"
                )
            exts.append(Extension(kind, off, length))
            if kind in (EXT_BACKING_FORMAT, EXT_DATA_FILE, EXT_FEATURE_NAMES):
                data = self.pread(off, length, "a header extension")
                if kind == EXT_FEATURE_NAMES:
                    for i in range(0, length - 47, 48):
                        names[(data[i], data[i + 1])] = (
                            data[i + 2 : i + 48].split(b"\0")[0].decode("ascii", "replace")
                        )
                elif kind == EXT_BACKING_FORMAT:
                    backing_format = data.decode("utf-8", "replace")
                else:
                    data_file = data.decode("utf-8", "replace")
            off += (length + 7) & ~7
        return exts, names, backing_format, data_file

    def _check_features(self, h: Header) -> None:
        unknown = h.incompatible & ~INCOMPAT_KNOWN
        if unknown:
            bits = [b for b in range(64) if unknown >> b & 1]
            named = ", ".join(h.feature_names.get((0, b), f"bit {b}") for b in bits)
            raise InputError(
                f"{self.name}: unsupported qcow2 incompatible feature(s): {named} "
                "(an implementation must refuse the image: qcow2.txt)"
            )
        if h.crypt_method:
            method = CRYPT_METHODS.get(h.crypt_method, f"method {h.crypt_method}")
            raise InputError(
                f"{self.name}: {method}-encrypted qcow2 image (crypt_method "
                f"{h.crypt_method}); kvmfpu does not decrypt: decrypt a copy with "
                "qemu-img convert first"
            )
        if h.extended_l2 and h.cluster_bits < 14:
            raise InputError(
                f"{self.name}: extended L2 entries need clusters of at least 16 "
                f"KiB, not {h.cluster_size} bytes"
            )
        compression_bit = bool(h.incompatible & INCOMPAT_COMPRESSION)
        if compression_bit != (h.compression_type != 0):
            raise InputError(
                f"{self.name}: compression_type {h.compression_type} with the "
                f"compression-type feature bit {'set' if compression_bit else 'clear'}"
                " (QEMU's validate_compression_type refuses it)"
            )
        if h.compression_type not in COMPRESSION_TYPES:
            raise InputError(f"{self.name}: unknown compression_type {h.compression_type}")

    # -- snapshot table -------------------------------------------------------------------

    def _snapshots(self) -> list[Snapshot]:
        """qcow2_read_snapshots: entries aligned to 8, each 40 bytes, extra data, id, name."""
        h = self.header
        if h.nb_snapshots > QCOW_MAX_SNAPSHOTS:
            raise InputError(
                f"{self.name}: {h.nb_snapshots} snapshots (QEMU takes at most {QCOW_MAX_SNAPSHOTS})"
            )
        self.snapshot_table_size = 0
        if not h.nb_snapshots:
            return []
        if h.snapshots_offset % h.cluster_size:
            raise InputError(
                f"{self.name}: snapshot table offset {h.snapshots_offset} is not cluster aligned"
            )
        if h.snapshots_offset >= self.file_size:
            raise InputError(
                f"{self.name}: the snapshot table at byte {h.snapshots_offset} is past the end of "
                f"the file ({self.file_size} bytes)"
            )
        # Entry by entry: what is read is what the table holds (at most QEMU's 64 MiB).
        out: list[Snapshot] = []
        off = 0
        for i in range(h.nb_snapshots):
            off = (off + 7) & ~7
            what = f"snapshot table entry {i + 1} of {h.nb_snapshots}"
            if off + 40 > QCOW_MAX_SNAPSHOTS_SIZE:
                raise InputError(
                    f"{self.name}: {what} is past QEMU's {QCOW_MAX_SNAPSHOTS_SIZE}-byte table limit"
                )
            fixed = self.pread(h.snapshots_offset + off, 40, what)
            (l1_off, l1_size, id_len, name_len, dsec, dnsec, clock, vm32, extra_len) = _u(">QIHHIIQII", fixed)
            if extra_len > QCOW_MAX_SNAPSHOT_EXTRA_DATA:
                raise InputError(
                    f"{self.name}: snapshot {i + 1} has {extra_len} bytes of extra "
                    f"data (QEMU takes at most {QCOW_MAX_SNAPSHOT_EXTRA_DATA})"
                )
            end = off + 40 + extra_len + id_len + name_len
            if end > QCOW_MAX_SNAPSHOTS_SIZE:
                raise InputError(
                    f"{self.name}: {what} ends past QEMU's {QCOW_MAX_SNAPSHOTS_SIZE}-byte table limit"
                )
            rest = self.pread(h.snapshots_offset + off + 40, end - off - 40, what)
            extra, text = rest[:extra_len], rest[extra_len:]
            vm_size = _u(">Q", extra)[0] if extra_len >= 8 else vm32
            disk = _u(">Q", extra, 8)[0] if extra_len >= 16 else h.size
            icount = _u(">Q", extra, 16)[0] if extra_len >= 24 else None
            sid = text[:id_len].decode("utf-8", "replace")
            name = text[id_len:].decode("utf-8", "replace")
            out.append(
                Snapshot(
                    i,
                    sid,
                    name,
                    dsec,
                    dnsec,
                    clock,
                    vm_size,
                    vm32,
                    disk,
                    l1_off,
                    l1_size,
                    extra_len,
                    None if icount in (None, (1 << 64) - 1) else icount,
                )
            )
            off = end
        self.snapshot_table_size = off
        return out

    def find(self, name_or_id: str) -> Snapshot | None:
        """A name first, as QEMU 7.2's loadvm matches (block/snapshot.c bdrv_snapshot_find
        compares names only: here ``loadvm 2`` fails for a snapshot with ID 2 named snap2),
        then an ID, as ``qemu-img snapshot -a`` also takes (qcow2_snapshot_goto's
        find_snapshot_by_id_or_name); the first in table order."""
        for key in ("name", "id"):
            for s in self.snapshots:
                if getattr(s, key) == name_or_id:
                    return s
        return None

    def choose(self, selector: str | None) -> Snapshot:
        """The snapshot ``--snapshot`` names (see ``find``), or, without one,
        the only snapshot that has a vm state; several: InputError listing them."""
        with_state = [s for s in self.snapshots if s.vm_state_size]
        if selector is not None:
            snap = self.find(selector)
            if snap is None:
                raise InputError(
                    f"{self.name}: no snapshot with name or ID {selector!r} ({listing(self.snapshots)})"
                )
            if not snap.vm_state_size:
                raise InputError(f"{self.name}: {snap.label} is disk-only: it has no vm state")
            return snap
        if len(with_state) == 1:
            return with_state[0]
        if not with_state:
            raise InputError(
                f"{self.name}: no snapshot with a vm state ("
                + (
                    f"{len(self.snapshots)} disk-only)"
                    if self.snapshots
                    else "the image has no internal snapshots)"
                )
            )
        raise InputError(
            f"{self.name}: {len(with_state)} snapshots have a vm state; give "
            f"--snapshot NAME_OR_ID ({listing(with_state)})"
        )

    def vm_state(self, snap: Snapshot) -> VmState:
        from kvmfpu.blob.qcow2_vmstate import VmState

        return VmState(self, snap)


def listing(snaps: list[Snapshot], limit: int = 8) -> str:
    """'ID 1 snap1, ID 2 snap2, ...' for one-line messages."""
    shown = ", ".join(s.label.removeprefix("snapshot ") for s in snaps[:limit])
    return (shown + f", and {len(snaps) - limit} more" if len(snaps) > limit else shown) or "none"


# -- opening ---------------------------------------------------------------------------------


def is_image(source: str | os.PathLike[str] | bytes) -> bool:
    """Whether ``source`` (a path or bytes) starts with the qcow2 magic; False for anything
    that cannot be opened (the ordinary reader then says why)."""
    if isinstance(source, bytes):
        return source[:4] == MAGIC
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.pread(fd, 4, 0) == MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


@contextmanager
def open_image(source: str | os.PathLike[str] | bytes) -> Iterator[Image]:
    """An Image of a path (opened read-only, never modified) or of bytes in memory."""
    if isinstance(source, bytes):
        yield Image(io.BytesIO(source), "qcow2 image")
        return
    name = os.fspath(source)
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{name}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{name}: not a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            try:
                yield Image(f, name)
            except OSError as exc:
                raise InputError(f"{name}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


#: What reading a snapshot checks, and what it leaves alone (every verdict says both).
CHECKED: Final = (
    "the header, its feature bits and extensions",
    "the snapshot table",
    "the chosen snapshot's L1 entries, L2 tables and clusters that hold its vm state",
)
NOT_CHECKED: Final = ("refcounts", "the disk's own clusters", "other snapshots' tables", "bitmaps")


def features_note(h: Header) -> str:
    said = [
        s
        for s, on in (
            ("extended L2 entries", h.extended_l2),
            (f"{h.compression} compression", h.compression_type != 0),
            ("dirty bit set", h.incompatible & INCOMPAT_DIRTY),
            ("marked corrupt by QEMU", h.incompatible & INCOMPAT_CORRUPT),
        )
        if on
    ]
    return f" ({', '.join(said)})" if said else ""


def snapshot_list(source: str | os.PathLike[str] | bytes) -> tuple[Header, list[Snapshot]]:
    """The header and snapshot table of an image (``kvmfpu decode --list-snapshots``)."""
    with open_image(source) as img:
        return img.header, img.snapshots


def printable(text: str) -> str:
    """``text`` with control characters escaped: a snapshot name must not drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def list_text(name: str, h: Header, snaps: list[Snapshot]) -> list[str]:
    """The listing the way ``qemu-img snapshot -l`` lays it out, with exact byte counts."""
    import time

    lines = [
        f"{name}: qcow2 v{h.version}, {h.cluster_size}-byte clusters, virtual size "
        f"{h.size}{features_note(h)}, {len(snaps)} snapshot(s)"
    ]
    if snaps:
        lines.append(f"{'ID':<8} {'TAG':<16} {'VM STATE BYTES':>14}  {'DATE (UTC)':<19}  VM CLOCK")
    for s in snaps:
        date = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s.date_sec))
        secs, ns = divmod(s.vm_clock_nsec, 10**9)
        clock = f"{secs // 3600:02}:{secs // 60 % 60:02}:{secs % 60:02}.{ns // 10**6:03}"
        sid, name = printable(s.id), printable(s.name)
        lines.append(f"{sid:<8} {name:<16} {s.vm_state_size:>14}  {date:<19}  {clock}")
    lines.append(
        "checked: "
        + "; ".join(CHECKED[:2])
        + "; not checked: "
        + ", ".join(NOT_CHECKED)
        + " (decode a snapshot to read its tables)"
    )
    return lines
