"""QEMU's view of a vCPU's xsave state: the CPUX86State fields it migrates, and its two
conversions with KVM's buffer.

QEMU keeps registers, not a buffer (target/i386/cpu.h CPUX86State): fpuc, fpus with fpstt
(TOP), fptags, fpregs, mxcsr, xmm_regs (512-bit ZMMReg each, 32 of them), opmask_regs,
bnd_regs/bndcs_regs, pkru, xtilecfg/xtiledata, xstate_bv, xcr0, xss, msr_xfd, msr_xfd_err.
With KVM, x86_cpu_xrstor_all_areas fills them from KVM_GET_XSAVE{2}'s buffer and
x86_cpu_xsave_all_areas builds the buffer for KVM_SET_XSAVE, both at the offsets of the
*running* host's CPUID leaf 0xD. So a migration re-lays the state for the destination;
XSTATE_BV travels verbatim.

Where x86_ext_save_areas[].offset comes from depends on the release (``OffsetMode``; which
release uses which: kvmfpu.qemu.versions):

- ``intel-fixed`` (before 6.1): struct X86XSaveArea's Intel layout (cpu.h
  QEMU_BUILD_BUG_ON: YMM 0x240 ... PKRU 0xA80) on every host, every field written. An AMD
  host keeps PKRU at 0x980 (inside Hi16_ZMM of that layout), so KVM_SET_XSAVE takes the
  guest's PKRU from the bytes of ZMM28 and QEMU reads PKRU from bytes KVM never wrote;
  this is what fea4500841 (6.1) fixed, its cover letter citing AMD's PKRU at 0x980.
- ``kvm-supported`` (6.1-6.2): KVM_GET_SUPPORTED_CPUID(0xD, i) EBX, for the components KVM
  reports (fea4500841 kvm_cpu_xsave_init); KVM copies the host's offsets there.
- ``host-cpuid`` (7.0 on): host_cpuid(0xD, i) for every component the host has.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Final, Literal

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.layout import XsaveLayout

_MASK64 = (1 << 64) - 1

OffsetMode = Literal["host-cpuid", "kvm-supported", "intel-fixed"]
OFFSET_MODES: Final[tuple[OffsetMode, ...]] = ("host-cpuid", "kvm-supported", "intel-fixed")

#: struct X86XSaveArea before fea4500841 (QEMU 6.0 target/i386/cpu.h QEMU_BUILD_BUG_ON
#: lines, replaced by XSAVE_*_OFFSET in 'target/i386: Declare constants for XSAVE offsets').
INTEL_FIXED_OFFSETS: Final[dict[int, int]] = {
    xf.XFeature.YMM: 0x240,
    xf.XFeature.BNDREGS: 0x3C0,
    xf.XFeature.BNDCSR: 0x400,
    xf.XFeature.OPMASK: 0x440,
    xf.XFeature.ZMM_HI256: 0x480,
    xf.XFeature.HI16_ZMM: 0x680,
    xf.XFeature.PKRU: 0xA80,
}


def _offset(
    layout: XsaveLayout, bit: int, size: int, mode: OffsetMode = "host-cpuid", kvm_xcr0: int | None = None
) -> int | None:
    """Where QEMU puts (or looks for) user component ``bit`` in a ``size``-byte buffer, or
    None when it skips it: the host lacks it (for ``kvm-supported``: KVM does not report it
    in ``kvm_xcr0``) or the buffer ends before it."""
    if mode == "intel-fixed":
        return INTEL_FIXED_OFFSETS.get(bit)
    c = layout.components.get(bit)
    if c is None or c.supervisor or c.offset + c.size > size:
        return None
    if mode == "kvm-supported" and kvm_xcr0 is not None and not kvm_xcr0 >> bit & 1:
        return None
    return c.offset


@dataclass
class QemuEnv:
    """The xsave-related CPUX86State fields (values as QEMU holds them under KVM)."""

    fpuc: int = legacy.FCW_INIT
    fpus: int = 0  # FSW with TOP in bits 11-13 (cpu_pre_save's fpus_vmstate)
    fptag: int = 0  # abridged tag word: bit i set = physical register i valid
    fpop: int = 0
    fpip: int = 0
    fpdp: int = 0
    fpregs: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)] * 8)  # (mant, exp)
    mxcsr: int = legacy.MXCSR_INIT
    zmm: list[int] = field(default_factory=lambda: [0] * 32)  # 512-bit registers
    opmask: list[int] = field(default_factory=lambda: [0] * 8)
    bnd: list[tuple[int, int]] = field(default_factory=lambda: [(0, 0)] * 4)  # (lb, ub)
    bndcfgu: int = 0
    bndstatus: int = 0
    pkru: int = 0
    xtilecfg: bytes = bytes(64)
    xtiledata: bytes = bytes(8192)
    xstate_bv: int = 0
    xcr0: int = xf.FP
    xss: int = 0
    xfd: int = 0
    xfd_err: int = 0


def xsave_all_areas(
    env: QemuEnv, layout: XsaveLayout, size: int, mode: OffsetMode = "host-cpuid", kvm_xcr0: int | None = None
) -> bytes:
    """x86_cpu_xsave_all_areas: the buffer QEMU hands KVM_SET_XSAVE on a host with
    ``layout``. Zeroed first (so XCOMP_BV and MXCSR_MASK are 0); XSTATE_BV verbatim; each
    component at the offset ``mode`` gives (see the module docstring)."""
    if mode == "intel-fixed":
        size = max(size, 4096)  # sizeof(X86XSaveArea) + padding
    buf = bytearray(size)
    struct.pack_into("<HHB", buf, legacy.FCW, env.fpuc, env.fpus, env.fptag & 0xFF)
    struct.pack_into("<HQQ", buf, legacy.FOP, env.fpop, env.fpip, env.fpdp)
    struct.pack_into("<I", buf, legacy.MXCSR, env.mxcsr)
    for i, (mant, exp) in enumerate(env.fpregs[:8]):
        struct.pack_into("<QH", buf, legacy.ST_SPACE + 16 * i, mant & _MASK64, exp & 0xFFFF)
    for i in range(16):
        struct.pack_into(
            "<QQ", buf, legacy.XMM_SPACE + 16 * i, env.zmm[i] & _MASK64, env.zmm[i] >> 64 & _MASK64
        )
    struct.pack_into("<Q", buf, legacy.XSTATE_BV, env.xstate_bv)

    def at(bit: int) -> int | None:
        return _offset(layout, bit, size, mode, kvm_xcr0)

    if (o := at(xf.XFeature.YMM)) is not None:
        for i in range(16):
            buf[o + 16 * i : o + 16 * i + 16] = (env.zmm[i] >> 128 & (1 << 128) - 1).to_bytes(16, "little")
    if (o := at(xf.XFeature.BNDREGS)) is not None and (c := at(xf.XFeature.BNDCSR)) is not None:
        for i, (lb, ub) in enumerate(env.bnd[:4]):
            struct.pack_into("<QQ", buf, o + 16 * i, lb & _MASK64, ub & _MASK64)
        struct.pack_into("<QQ", buf, c, env.bndcfgu, env.bndstatus)
    if (o := at(xf.XFeature.OPMASK)) is not None:
        for i, k in enumerate(env.opmask[:8]):
            struct.pack_into("<Q", buf, o + 8 * i, k & _MASK64)
        if (z := at(xf.XFeature.ZMM_HI256)) is not None:
            for i in range(16):
                buf[z + 32 * i : z + 32 * i + 32] = (env.zmm[i] >> 256).to_bytes(32, "little")
        if (h := at(xf.XFeature.HI16_ZMM)) is not None:
            for i in range(16):
                buf[h + 64 * i : h + 64 * i + 64] = env.zmm[16 + i].to_bytes(64, "little")
    if (o := at(xf.XFeature.PKRU)) is not None:
        struct.pack_into("<I", buf, o, env.pkru)
    if (o := at(xf.XFeature.XTILECFG)) is not None:
        buf[o : o + 64] = env.xtilecfg[:64].ljust(64, b"\0")
    if (o := at(xf.XFeature.XTILEDATA)) is not None:
        buf[o : o + 8192] = env.xtiledata[:8192].ljust(8192, b"\0")
    return bytes(buf)


def xrstor_all_areas(
    buf: bytes,
    layout: XsaveLayout,
    env: QemuEnv | None = None,
    mode: OffsetMode = "host-cpuid",
    kvm_xcr0: int | None = None,
) -> QemuEnv:
    """x86_cpu_xrstor_all_areas: QEMU's fields from KVM_GET_XSAVE{2}'s buffer, read at the
    offsets ``mode`` gives (components the buffer or host lacks keep their previous values)."""
    env = env if env is not None else QemuEnv()
    n = len(buf)
    fcw, fsw, ftw = struct.unpack_from("<HHB", buf, legacy.FCW)
    env.fpuc, env.fpus, env.fptag = fcw, fsw, ftw
    env.fpop, env.fpip, env.fpdp = struct.unpack_from("<HQQ", buf, legacy.FOP)
    env.mxcsr = struct.unpack_from("<I", buf, legacy.MXCSR)[0]
    env.fpregs = [struct.unpack_from("<QH", buf, legacy.ST_SPACE + 16 * i) for i in range(8)]
    zmm = list(env.zmm)
    for i in range(16):
        lo, hi = struct.unpack_from("<QQ", buf, legacy.XMM_SPACE + 16 * i)
        zmm[i] = zmm[i] & ~((1 << 128) - 1) | hi << 64 | lo
    env.xstate_bv = struct.unpack_from("<Q", buf, legacy.XSTATE_BV)[0]

    def at(bit: int) -> int | None:
        return _offset(layout, bit, n, mode, kvm_xcr0)

    if (o := at(xf.XFeature.YMM)) is not None:
        for i in range(16):
            part = int.from_bytes(buf[o + 16 * i : o + 16 * i + 16], "little")
            zmm[i] = zmm[i] & ~(((1 << 128) - 1) << 128) | part << 128
    if (o := at(xf.XFeature.BNDREGS)) is not None and (c := at(xf.XFeature.BNDCSR)) is not None:
        env.bnd = [struct.unpack_from("<QQ", buf, o + 16 * i) for i in range(4)]
        env.bndcfgu, env.bndstatus = struct.unpack_from("<QQ", buf, c)
    if (o := at(xf.XFeature.OPMASK)) is not None:
        env.opmask = list(struct.unpack_from("<8Q", buf, o))
        if (z := at(xf.XFeature.ZMM_HI256)) is not None:
            for i in range(16):
                part = int.from_bytes(buf[z + 32 * i : z + 32 * i + 32], "little")
                zmm[i] = zmm[i] & ((1 << 256) - 1) | part << 256
        if (h := at(xf.XFeature.HI16_ZMM)) is not None:
            for i in range(16):
                zmm[16 + i] = int.from_bytes(buf[h + 64 * i : h + 64 * i + 64], "little")
    env.zmm = zmm
    if (o := at(xf.XFeature.PKRU)) is not None:
        env.pkru = struct.unpack_from("<I", buf, o)[0]
    if (o := at(xf.XFeature.XTILECFG)) is not None:
        env.xtilecfg = bytes(buf[o : o + 64])
    if (o := at(xf.XFeature.XTILEDATA)) is not None:
        env.xtiledata = bytes(buf[o : o + 8192])
    return env


def buffer_size(xsave2: int) -> int:
    """kvm_init_xsave: KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) rounded up to whole pages, at
    least 4096 (0 where the capability is absent)."""
    return max(4096, (xsave2 + 4095) & ~4095)
