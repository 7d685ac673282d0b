"""What every instruction family of the emulated core shares: the register and control
state it acts on, the common checks (#UD/#NM/#GP/#PF order of SDM Vol. 2) and the
canonical x87 form the processor holds after a load."""

from __future__ import annotations

import struct
from typing import Any, Final

from kvmfpu.arch import legacy
from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.arch.xfeatures import bits
from kvmfpu.core.faults import (
    DeviceNotAvailable,
    GeneralProtection,
    InvalidOpcode,
    PageFault,
)
from kvmfpu.core.regfile import RegFileLayout
from kvmfpu.cpus.behaviour import CoreBehaviour
from kvmfpu.cpus.model import HostModel

M64: Final = (1 << 64) - 1
_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
_I = struct.Struct("<I")
_X87 = struct.Struct("<HHBBHQQ")
_X87_32 = struct.Struct("<IHHIHH")
_Z16: Final = bytes(16)
_Z48: Final = bytes(48)
_MXCSR_INIT_BYTES: Final = legacy.MXCSR_INIT.to_bytes(4, "little")
_ST_PADS: Final = tuple(legacy.ST_SPACE + 16 * i + legacy.ST_BYTES for i in range(8))
_PKRU_BIT: Final = 9

# (copy-from-memory ranges, init ranges, bytes of memory read, MXCSR handling)
_MX_NONE, _MX_LOAD, _MX_INIT = 0, 1, 2


def _sext(value: int, width: int) -> int:
    """Sign-extend the low ``width`` bits to 64 (57-bit FIP/FDP on AMD)."""
    value &= (1 << width) - 1
    if value >> (width - 1):
        value |= M64 ^ ((1 << width) - 1)
    return value


class CoreState:
    """The processor's registers and control state, and the checks and canonical forms
    every instruction family shares. :class:`kvmfpu.core.cpu.Cpu` sets these up; the
    families (restore, save, fxsr, control, registers) each add their instructions."""

    host: HostModel
    memory: memoryview
    _mem: memoryview
    _memsize: int
    _beh: CoreBehaviour
    _has_xsave: bool
    _has_xsaveopt: bool
    _has_xsavec: bool
    _has_xgetbv1: bool
    _has_xsaves: bool
    _has_xfd: bool
    _has_fxsr: bool
    _has_shstk: bool
    _has_ibt: bool
    _la57: bool
    _supported_xcr0: int
    _supported_xss: int
    _xfd_capable: int
    _mxcsr_rsvd: int
    _layout: XsaveLayout
    _rf: RegFileLayout
    _init: bytes
    _regs: bytearray
    _plans: dict[tuple[Any, ...], Any]
    cpl: int
    cr0_ts: bool
    cr0_em: bool
    _osxsave: bool
    cr4_osfxsr: bool
    vmx_nonroot: bool
    _fcs: int
    _fds: int
    _xcr0: int
    _xss: int
    _xfd: int
    _xfd_err: int
    _s_cet: int
    _int_ssp_tab: int
    _xinuse: int
    _xmodified: int
    _xrstor_info: tuple[int, bool, int, int] | None

    # -- helpers ---------------------------------------------------------------------------
    def _bounds(self, mn: str, address: int, length: int) -> None:
        if address < 0 or address + length > self._memsize:
            raise PageFault(mn, f"bytes [{address:#x}, {address + length:#x}) are outside the "
                                f"{self._memsize:#x}-byte memory buffer")

    def _xsave_checks(self, mn: str, address: int, feature: str | None = None,
                      supervisor: bool = False) -> None:
        if not self._has_xsave:
            raise InvalidOpcode(mn, "CPUID.1:ECX.XSAVE[bit 26]=0")
        if not self._osxsave:
            raise InvalidOpcode(mn, "CR4.OSXSAVE[bit 18]=0")
        if feature is not None and not getattr(self, "_has_" + feature):
            sub = {"xsaveopt": 0, "xsavec": 1, "xsaves": 3}[feature]
            raise InvalidOpcode(mn, f"CPUID.(EAX=0DH,ECX=1):EAX.{feature.upper()}[bit {sub}]=0")
        if self.cr0_ts:
            raise DeviceNotAvailable(mn, "CR0.TS[bit 3]=1")
        if supervisor and self.cpl:
            raise GeneralProtection(mn, f"CPL={self.cpl}: the instruction requires CPL 0")
        if address & 63:
            raise GeneralProtection(mn, f"the address {address:#x} is not 64-byte aligned")

    def _nonzero_components(self, mask: int) -> int:
        """Components of ``mask`` not in their initial configuration (AMD's XINUSE rule)."""
        regs, init, ranges = self._regs, self._init, self._rf.ranges
        out = 0
        for b in bits(mask):
            for s, e in ranges[b]:
                if regs[s:e] != init[s:e]:
                    out |= 1 << b
                    break
            else:
                if b == 0 and (self._fcs or self._fds):
                    out |= 1
        return out

    def _loaded(self, mask: int) -> int:
        """XINUSE bits for components just loaded from memory (SDM §13.6)."""
        return self._nonzero_components(mask) if self._beh.xinuse_compares_init else mask

    def _canon_x87(self, rex_w: bool) -> None:
        """Bring freshly loaded x87 bytes into the form the processor holds (and saves)."""
        regs = self._regs
        fcw, fsw, ftw, _, fop, fip, fdp = _X87.unpack_from(regs, 0)
        if rex_w:
            fcs = fds = 0
        else:
            fip, fcs, _, fdp, fds, _ = _X87_32.unpack_from(regs, legacy.FIP32)
        fcw = (fcw & legacy.FCW_KEEP) | legacy.FCW_ONE
        es = fsw & ~fcw & 0x3F
        fsw = fsw | legacy.FSW_ES | legacy.FSW_B if es else fsw & ~(legacy.FSW_ES | legacy.FSW_B)
        fop &= legacy.FOP_MASK
        beh = self._beh
        if beh.x87_pointers_need_es and not es:
            fop = fip = fdp = fcs = fds = 0
        elif beh.x87_pointer_bits < 64:
            fip = _sext(fip, beh.x87_pointer_bits)
            fdp = _sext(fdp, beh.x87_pointer_bits)
        _X87.pack_into(regs, 0, fcw, fsw, ftw, 0, fop, fip, fdp)
        self._fcs, self._fds = fcs, fds
        for off in _ST_PADS:
            regs[off:off + 6] = b"\0\0\0\0\0\0"

    def _store_x87_32(self, address: int) -> None:
        """Rewrite bytes 8-23 of a saved x87 image in the 32-bit form (FIP/FCS, FDP/FDS)."""
        fip, fdp = _QQ.unpack_from(self._regs, legacy.FIP)
        fcs, fds = (0, 0) if self._beh.zero_fcs_fds else (self._fcs, self._fds)
        _X87_32.pack_into(self._mem, address + legacy.FIP32,
                          fip & 0xFFFFFFFF, fcs, 0, fdp & 0xFFFFFFFF, fds, 0)

