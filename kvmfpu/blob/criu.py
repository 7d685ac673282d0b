"""CRIU ``core-<tid>.img``: one thread's registers, the xsave state kept field by field.

Image (criu/include/magic.h, lib/pycriu/images/images.py): u32 IMG_COMMON_MAGIC, u32
CORE_MAGIC, then entries of {u32 size, protobuf core_entry}. core_entry (images/core.proto)
field 2 is thread_info_x86 (images/core-x86.proto), whose field 3 user_x86_fpregs_entry
holds the FXSAVE words (cwd, swd, twd, fop, rip, rdp, mxcsr, mxcsr_mask, st_space[32],
xmm_space[64]) and, in field 13, user_x86_xsave_entry: xstate_bv and one repeated field per
component (ymmh_space, bndreg_state, bndcsr_state, opmask_reg, zmm_upper, hi16_zmm, pkru;
no AMX). criu/arch/x86/crtools.c fills each from the dumping host's NT_X86_XSTATE at its
CPUID offset, allocating only the components that host has (alloc_xsave_extends), and
restore_fpu writes them back at the *restoring* host's offsets.

Like a QEMU stream, the capture is fields: the buffer is built for a host (the packaged
host with the fewest components holding them, or --host), in the standard format.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.blob import protobuf as pb
from kvmfpu.blob.errors import InputError
from kvmfpu.blob.sources import Capture
from kvmfpu.blob.vmm_state import smallest_host

IMG_COMMON_MAGIC: Final = 0x54564319
IMG_SERVICE_MAGIC: Final = 0x55105940
CORE_MAGIC: Final = 0x55053847
MARCH_X86_64: Final = 1
#: user_x86_xsave_entry: field number -> (xfeature bit, word bytes, words). The counts are
#: XSAVE_PB_NELEMS of the kernel structs (crtools.c alloc_xsave_extends; compel's copy of
#: arch/x86/include/asm/fpu/types.h); pkru_state is
#: {u32 pkru, u32 pad}.
XSAVE_FIELDS: Final = {
    2: (xf.XFeature.YMM, 4, 64),
    3: (xf.XFeature.BNDREGS, 8, 8),
    4: (xf.XFeature.BNDCSR, 8, 8),  # mpx_bndcsr_state is padded to 64 bytes
    5: (xf.XFeature.OPMASK, 8, 8),
    6: (xf.XFeature.ZMM_HI256, 8, 64),
    7: (xf.XFeature.HI16_ZMM, 8, 128),
    8: (xf.XFeature.PKRU, 4, 2),
}
NAMES: Final = {
    2: "ymmh_space",
    3: "bndreg_state",
    4: "bndcsr_state",
    5: "opmask_reg",
    6: "zmm_upper",
    7: "hi16_zmm",
    8: "pkru",
}


def detect(data: bytes) -> bool:
    if len(data) < 8:
        return False
    first, second = struct.unpack_from("<II", data)
    return bool(
        (first in (IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC) and second == CORE_MAGIC) or first == CORE_MAGIC
    )


def entries(data: bytes) -> list[bytes]:
    """The protobuf entries of a core image (criu writes one)."""
    if len(data) < 8:
        raise InputError("CRIU image: shorter than its two magic words")
    first, second = struct.unpack_from("<II", data)
    pos = 8 if first in (IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC) else 4
    magic = second if pos == 8 else first
    if magic != CORE_MAGIC:
        raise InputError(
            f"CRIU image magic {magic:#010x} is not CORE ({CORE_MAGIC:#010x}): give a core-<tid>.img"
        )
    out = []
    while pos < len(data):
        if pos + 4 > len(data):
            raise InputError(f"CRIU image: an entry size is truncated at byte {pos}")
        (size,) = struct.unpack_from("<i", data, pos)
        if not 0 <= size <= len(data) - pos - 4:
            raise InputError(
                f"CRIU image: the entry at byte {pos} declares {size} bytes where "
                f"{len(data) - pos - 4} remain"
            )
        out.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    if not out:
        raise InputError("CRIU image: no core_entry")
    return out


class Fpregs:
    """user_x86_fpregs_entry as CRIU keeps it."""

    def __init__(self, f: pb.Fields, what: str):
        s = pb.scalar
        self.cwd, self.swd, self.twd, self.fop = (
            s(f, n, f"{what} {name}", bits=32) for n, name in ((1, "cwd"), (2, "swd"), (3, "twd"), (4, "fop"))
        )
        self.rip = s(f, 5, f"{what} rip")
        self.rdp = s(f, 6, f"{what} rdp")
        self.mxcsr = s(f, 7, f"{what} mxcsr", bits=32)
        self.mxcsr_mask = s(f, 8, f"{what} mxcsr_mask", bits=32)
        self.st = pb.repeated(f, 9, f"{what} st_space", width=0)
        self.xmm = pb.repeated(f, 10, f"{what} xmm_space", width=0)
        # restore_fpu's valid_xsave_frame: fewer words than the kernel's arrays is corruption.
        if len(self.st) < 32 or len(self.xmm) < 64:
            raise InputError(
                f"{what}: st_space has {len(self.st)} words and xmm_space "
                f"{len(self.xmm)} (criu's valid_xsave_frame needs 32 and 64)"
            )
        self.xstate_bv: int | None = None
        self.components: dict[int, bytes] = {}
        x = pb.message(f, 13, f"{what} xsave")
        if x is None:
            return
        self.xstate_bv = pb.scalar(x, 1, f"{what} xsave.xstate_bv")
        for number, (bit, width, count) in XSAVE_FIELDS.items():
            words = pb.repeated(x, number, f"{what} xsave.{NAMES[number]}", width=0)
            if not words:
                continue  # the dumping host lacks the component
            if len(words) != count:
                raise InputError(
                    f"{what}: xsave.{NAMES[number]} has {len(words)} words, not "
                    f"{count} (criu's restore_fpu refuses it)"
                )
            mask = (1 << 8 * width) - 1
            self.components[bit] = b"".join((w & mask).to_bytes(width, "little") for w in words)

    @property
    def mask(self) -> int:
        return xf.FPSSE | sum(1 << b for b in self.components)

    def buffer(self, layout: XsaveLayout) -> bytes:
        """The standard-format area for a host with ``layout``: what restore_fpu builds,
        except that XSTATE_BV is the dumped one (restore_fpu sets every component the
        restoring host has among those it copies)."""
        comps = {b: v for b, v in self.components.items() if b in layout.components}
        size = layout.standard_size(sum(1 << b for b in comps) | xf.FPSSE)
        buf = bytearray(size)
        struct.pack_into(
            "<HHHHQQII",
            buf,
            0,
            self.cwd & 0xFFFF,
            self.swd & 0xFFFF,
            self.twd & 0xFFFF,
            self.fop & 0xFFFF,
            self.rip,
            self.rdp,
            self.mxcsr,
            self.mxcsr_mask,
        )
        for i, w in enumerate(self.st[:32] + self.xmm[:64]):
            struct.pack_into("<I", buf, legacy.ST_SPACE + 4 * i, w & 0xFFFF_FFFF)
        bv = self.xstate_bv if self.xstate_bv is not None else xf.FPSSE
        struct.pack_into("<Q", buf, legacy.XSTATE_BV, bv & layout.user_mask)
        for b, value in comps.items():
            off = layout.standard_offset(b)
            buf[off : off + min(len(value), layout.size(b))] = value[: layout.size(b)]
        return bytes(buf)


def captures(data: bytes, max_size: int) -> list[Capture]:
    out = []
    for i, entry in enumerate(entries(data)):
        what = f"CRIU core_entry {i}"
        core = pb.parse(entry, what)
        march = pb.scalar(core, 1, f"{what} mtype", default=0)
        if march != MARCH_X86_64:
            raise InputError(f"{what}: mtype {march} is not X86_64 ({MARCH_X86_64})")
        ti = pb.message(core, 2, f"{what} thread_info")
        if ti is None:
            raise InputError(f"{what}: no thread_info_x86")
        gp = pb.message(ti, 2, f"{what} gpregs") or {}
        compat = pb.scalar(gp, 28, f"{what} gpregs.mode", default=1) == 2
        f = pb.message(ti, 3, f"{what} fpregs")
        if f is None:
            raise InputError(f"{what}: no fpregs (a task dumped without an FPU)")
        regs = Fpregs(f, what)
        ref = smallest_host(regs.mask, what)
        tc = pb.message(core, 3, f"{what} tc") or {}
        name = tc.get(6, [b""])[-1]  # task_core_entry.comm
        comm = name.decode("latin-1")[:32] if isinstance(name, bytes) else ""
        who = f"CRIU thread {i}" + (f" ({comm})" if comm else "")
        cap = Capture(regs.buffer(ref.layout), who, "criu", regs.mask)
        cap.rebuild = _rebuilder(regs)
        cap.reference_host = ref.name
        have = xf.describe_mask(regs.mask)
        bv = "none" if regs.xstate_bv is None else f"{regs.xstate_bv:#x}"
        cap.notes.append(
            f"CRIU keeps registers, not a buffer: {have} (the dumping host's "
            f"components), xstate_bv {bv}; laid out for {ref.name}"
        )
        cap.notes.append(
            "criu restore (restore_fpu) sets XSTATE_BV to every one of these "
            "components the restoring host has, not the dumped xstate_bv"
        )
        if compat:
            cap.notes.append("a 32-bit (compat) task: criu converts FXSAVE to the i387 frame on restore")
        out.append(cap)
        if sum(len(c.data) for c in out) > max_size:
            raise InputError(
                f"CRIU image: its xsave areas add up to more than the {max_size}-byte limit (--max-size)"
            )
    return out


def _rebuilder(regs: Fpregs) -> Callable[[XsaveLayout], bytes]:
    def build(layout: XsaveLayout) -> bytes:
        return regs.buffer(layout)

    return build
