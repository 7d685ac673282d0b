"""The emulated processor core for the XSAVE feature set.

``Cpu(model, memory)`` executes XSAVE, XSAVEOPT, XSAVEC, XSAVES, XRSTOR, XRSTORS, FXSAVE,
FXRSTOR, XGETBV, XSETBV, RDMSR and WRMSR against a caller-owned memory buffer, the way
the host CPU model's processor does: the same bytes written, the same faults.

Sources, by rule: Intel SDM Vol. 1 ch. 13 (§13.6 XINUSE and the optimisations, §13.7-13.12
operation of each instruction, §13.14 XFD) and Vol. 2 instruction pages (the exception
lists); where the SDM leaves a choice, what the real processor does (see
:mod:`kvmfpu.cpus.behaviour`, measured by tests/native). Check order: #UD, #NM, #GP for
CPL and alignment, #PF for memory, then header and MXCSR #GP, then XFD #NM; nothing is
written until every check has passed.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from typing_extensions import Buffer

from kvmfpu import cpus
from kvmfpu.arch import legacy, tilecfg
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, bits, name_of
from kvmfpu.core import msrs
from kvmfpu.core.faults import (
    DeviceNotAvailable,
    GeneralProtection,
    InvalidOpcode,
    PageFault,
)
from kvmfpu.core.regfile import REGISTERS, RegFileLayout, merge, merge_pairs
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


@dataclass(frozen=True)
class CpuState:
    """Everything architectural the core holds, as one comparable value."""

    regs: bytes
    fcs: int
    fds: int
    xcr0: int
    xss: int
    xfd: int
    xfd_err: int
    s_cet: int
    int_ssp_tab: int
    xinuse: int
    xmodified: int
    xrstor_info: tuple[int, bool, int, int] | None
    cpl: int
    cr0_ts: bool
    cr0_em: bool
    cr4_osxsave: bool
    cr4_osfxsr: bool
    vmx_nonroot: bool


#: CpuState field -> Cpu attribute, in CpuState order after ``regs``.
_STATE_ATTRS: Final = (
    ("fcs", "_fcs"), ("fds", "_fds"), ("xcr0", "_xcr0"), ("xss", "_xss"), ("xfd", "_xfd"),
    ("xfd_err", "_xfd_err"), ("s_cet", "_s_cet"), ("int_ssp_tab", "_int_ssp_tab"),
    ("xinuse", "_xinuse"), ("xmodified", "_xmodified"), ("xrstor_info", "_xrstor_info"),
    ("cpl", "cpl"), ("cr0_ts", "cr0_ts"), ("cr0_em", "cr0_em"), ("cr4_osxsave", "_osxsave"),
    ("cr4_osfxsr", "cr4_osfxsr"), ("vmx_nonroot", "vmx_nonroot"),
)


class Cpu:
    """One logical processor of a host CPU model, executing the XSAVE feature set.

    ``memory`` is the caller's writable buffer (bytearray, mmap, ctypes array, ...);
    instruction addresses are offsets into it. Without one, 64 KiB are allocated.
    The processor starts in its RESET state (SDM Vol. 3A table 9-1): CPL 0,
    CR4.OSXSAVE=0, XCR0=1, IA32_XSS=0, IA32_XFD=0.
    """

    def __init__(self, model: HostModel | str | os.PathLike[str], memory: Buffer | None = None,
                 *, cpl: int = 0):
        host = cpus.load(model)
        self.host: Final = host
        mem = memoryview(bytearray(1 << 16) if memory is None else memory)
        if mem.readonly:
            raise TypeError("memory must be a writable buffer")
        self.memory: Final = mem.cast("B") if mem.format != "B" or mem.ndim != 1 else mem
        self._mem = self.memory
        self._memsize = len(self.memory)

        beh = host.behaviour
        self._beh = beh
        self._has_xsave = host.has("xsave")
        self._has_xsaveopt = host.has("xsaveopt")
        self._has_xsavec = host.has("xsavec")
        self._has_xgetbv1 = host.has("xgetbv1")
        self._has_xsaves = host.has("xsaves")
        self._has_xfd = host.has("xfd")
        self._has_fxsr = host.has("fxsr")
        self._has_shstk = host.has("shstk")
        self._has_ibt = host.has("ibt")
        self._la57 = host.has("la57")
        self._supported_xcr0 = host.supported_xcr0
        self._supported_xss = host.supported_xss
        self._xfd_capable = host.xfd_capable
        self._mxcsr_rsvd = ~beh.mxcsr_mask & 0xFFFFFFFF
        self._layout = host.layout

        self._rf = RegFileLayout(host.layout)
        self._init: Final = bytes(self._rf.init_image(beh.mxcsr_mask))
        self._regs = bytearray(self._init)
        self._plans: dict[tuple[Any, ...], Any] = {}

        self.cpl = cpl
        self.cr0_ts = False
        self.cr0_em = False
        self._osxsave = False
        self.cr4_osfxsr = True
        self.vmx_nonroot = False
        self.reset()

    # -- architectural state ---------------------------------------------------------------
    def reset(self) -> None:
        """RESET (SDM Vol. 3A table 9-1): FCW=0040h, FTW=5555h (every register +0.0, valid),
        MXCSR=1F80h, all other XSAVE state zero, XCR0=1, IA32_XSS=IA32_XFD=0."""
        self._regs[:] = self._init
        _X87.pack_into(self._regs, 0, 0x0040, 0, 0xFF, 0, 0, 0, 0)
        self._fcs = self._fds = 0
        self._xcr0 = xf.FP
        self._xss = 0
        self._xfd = 0
        self._xfd_err = 0
        self._s_cet = 0
        self._int_ssp_tab = 0
        self._xinuse = xf.FP      # the x87 RESET state is not its initial configuration
        self._xmodified = M64
        self._xrstor_info: tuple[int, bool, int, int] | None = None
        self._osxsave = False
        self.cr0_ts = False
        self.cr0_em = False

    def snapshot(self) -> CpuState:
        """The full architectural state (compare two snapshots to see what changed)."""
        return CpuState(bytes(self._regs), *(getattr(self, a) for _, a in _STATE_ATTRS))

    def restore_snapshot(self, state: CpuState) -> None:
        """Put back a state taken with :meth:`snapshot` on a Cpu of the same host."""
        if len(state.regs) != len(self._regs):
            raise ValueError("the snapshot comes from a different host model")
        self._regs[:] = state.regs
        for field_name, attr in _STATE_ATTRS:
            setattr(self, attr, getattr(state, field_name))

    @property
    def cr4_osxsave(self) -> bool:
        return self._osxsave

    @cr4_osxsave.setter
    def cr4_osxsave(self, value: bool) -> None:
        if value and not self._has_xsave:
            raise GeneralProtection("MOV CR4", "CR4.OSXSAVE=1 but CPUID.1:ECX.XSAVE=0")
        self._osxsave = bool(value)

    @property
    def xcr0(self) -> int:
        return self._xcr0

    @property
    def xss(self) -> int:
        return self._xss

    @property
    def xfd(self) -> int:
        return self._xfd

    @property
    def xfd_err(self) -> int:
        return self._xfd_err

    @property
    def xinuse(self) -> int:
        """XINUSE as the SDM defines it (XINUSE[1] covers XMM0-15, not MXCSR)."""
        return self._xinuse

    @property
    def xmodified(self) -> int:
        return self._xmodified

    @property
    def xrstor_info(self) -> tuple[int, bool, int, int] | None:
        """(CPL, VMX non-root, linear address, XCOMP_BV or 0) of the last XRSTOR/XRSTORS."""
        return self._xrstor_info

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        """CPUID as software on this processor sees it now (OSXSAVE and the XSAVE sizes
        follow CR4, XCR0 and IA32_XSS, SDM CPUID leaf 1 ECX[27] and leaf 0DH EBX)."""
        a, b, c, d = self.host.cpuid(leaf, subleaf)
        if leaf == 1:
            c = c | 1 << 27 if self._osxsave else c & ~(1 << 27)
        elif leaf == 0xD and subleaf == 0 and self._has_xsave:
            b = self._layout.standard_size(self._xcr0)
        elif leaf == 0xD and subleaf == 1 and self._has_xsave and (a & 0xA):
            b = self._layout.compacted_size(self._xcr0 | self._xss)
        return a, b, c, d

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

    def _check_loaded_values(self, mn: str, address: int, mask: int,
                             offset_of: Callable[[int], int]) -> None:
        """Value checks for components whose load can fault: AMX TILECFG, CET."""
        mem = self._mem
        if mask & xf.XTILECFG:
            problem = tilecfg.problem(bytes(mem[address + offset_of(17):
                                               address + offset_of(17) + 64]))
            if problem:
                raise GeneralProtection(mn, f"invalid XTILECFG being loaded: {problem} "
                                            "(XRSTOR checks it as LDTILECFG does: SDM vol. 2)")
        if mask & xf.CET_U:
            u_cet, pl3 = _QQ.unpack_from(mem, address + offset_of(11))
            problem = (msrs.u_s_cet_problem(u_cet, self._has_shstk, self._has_ibt)
                       or msrs.ssp_problem(pl3, self._la57))
            if problem:
                raise GeneralProtection(mn, f"CET_U state being loaded is invalid: {problem} "
                                            "(XRSTORS checks CET state like WRMSR; Bochs xsave.cc)")
        if mask & xf.CET_S:
            base = address + offset_of(12)
            for i in range(3):
                problem = msrs.ssp_problem(_Q.unpack_from(mem, base + 8 * i)[0], self._la57)
                if problem:
                    raise GeneralProtection(mn, f"CET_S state being loaded is invalid: "
                                                f"IA32_PL{i}_SSP {problem}")

    def _xfd_check(self, mn: str, needed: int) -> None:
        """#NM when a restore needs an XFD-armed component (SDM §13.14)."""
        armed = needed & self._xfd & self._xcr0
        if armed:
            self._xfd_err = armed
            raise DeviceNotAvailable(
                mn, f"XFD armed for {xf.describe_mask(armed)} (IA32_XFD & XCR0 & RFBM & "
                    f"XSTATE_BV != 0); IA32_XFD_ERR <- {armed:#x}")

    # -- restore ---------------------------------------------------------------------------
    def xrstor(self, address: int, rfbm: int, *, rex_w: bool = True) -> None:
        """XRSTOR (REX.W form by default): restore RFBM = EDX:EAX & XCR0 from ``address``."""
        mn = "XRSTOR64" if rex_w else "XRSTOR"
        self._xsave_checks(mn, address)
        mem = self._mem
        self._bounds(mn, address, legacy.EXTENDED)
        bv, cb = _QQ.unpack_from(mem, address + legacy.XSTATE_BV)
        xcr0 = self._xcr0
        rfbm &= xcr0
        if cb >> 63:
            if not self._has_xsavec:
                raise GeneralProtection(mn, "XCOMP_BV[63]=1 but CPUID.(EAX=0DH,ECX=1):"
                                            "EAX.XSAVEC=0: the compacted form is not supported")
            comp = cb & ~XCOMP_COMPACTED
            if comp & ~xcr0:
                raise GeneralProtection(mn, f"XCOMP_BV[62:0] sets {xf.describe_mask(comp & ~xcr0)}"
                                            f" not in XCR0={xcr0:#x} (compacted form)")
            self._check_compacted_header(mn, address, bv, comp)
            self._restore_compacted(mn, address, rfbm, bv, comp, cb, rex_w, supervisor=False)
            return
        if bv & ~xcr0:
            raise GeneralProtection(mn, f"XSTATE_BV sets {xf.describe_mask(bv & ~xcr0)} "
                                        f"not in XCR0={xcr0:#x} (standard form)")
        if mem[address + legacy.XCOMP_BV:address + legacy.XCOMP_BV + 16] != _Z16:
            raise GeneralProtection(mn, "bytes 23:8 of the XSAVE header are not zero "
                                        "(standard form: XCOMP_BV and the next 8 bytes must be 0)")
        self._restore_standard(mn, address, rfbm, bv, rex_w)

    def xrstors(self, address: int, rfbm: int, *, rex_w: bool = True) -> None:
        """XRSTORS: restore RFBM = EDX:EAX & (XCR0 | IA32_XSS), compacted form only."""
        mn = "XRSTORS64" if rex_w else "XRSTORS"
        self._xsave_checks(mn, address, "xsaves", supervisor=True)
        self._bounds(mn, address, legacy.EXTENDED)
        bv, cb = _QQ.unpack_from(self._mem, address + legacy.XSTATE_BV)
        enabled = self._xcr0 | self._xss
        if not cb >> 63:
            raise GeneralProtection(mn, "XCOMP_BV[63]=0: XRSTORS requires the compacted form")
        comp = cb & ~XCOMP_COMPACTED
        if comp & ~enabled:
            raise GeneralProtection(
                mn, f"XCOMP_BV sets {xf.describe_mask(comp & ~enabled)} not in XCR0|IA32_XSS="
                    f"{enabled:#x} (SDM §13.12: XCOMP_BV[62:0] must be within XCR0|IA32_XSS)")
        self._check_compacted_header(mn, address, bv, comp)
        self._restore_compacted(mn, address, rfbm & enabled, bv, comp, cb, rex_w,
                                supervisor=True)

    def _check_compacted_header(self, mn: str, address: int, bv: int, comp: int) -> None:
        if bv & ~comp:
            raise GeneralProtection(mn, f"XSTATE_BV sets {xf.describe_mask(bv & ~comp)} not in "
                                        "XCOMP_BV[62:0] (compacted form)")
        if self._mem[address + legacy.HEADER_RESERVED:address + legacy.EXTENDED] != _Z48:
            raise GeneralProtection(mn, "bytes 63:16 of the XSAVE header are not zero "
                                        "(compacted form)")

    def _restore_standard(self, mn: str, address: int, rfbm: int, bv: int, rex_w: bool) -> None:
        key = ("rs", rfbm, bv)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan_restore_standard(rfbm, bv)
        loads, inits, extent, mx_mode = plan
        self._bounds(mn, address, extent)
        mem = self._mem
        if mx_mode == _MX_LOAD:
            mxcsr = _I.unpack_from(mem, address + legacy.MXCSR)[0]
            if mxcsr & self._mxcsr_rsvd:
                raise GeneralProtection(mn, f"MXCSR={mxcsr:#x} sets reserved bits (MXCSR_MASK="
                                            f"{self._beh.mxcsr_mask:#x}); the standard form loads "
                                            "MXCSR when RFBM[1] or RFBM[2] is set")
        loaded = rfbm & bv
        if loaded & (xf.XTILECFG | xf.CET):
            self._check_loaded_values(mn, address, loaded, self._layout.standard_offset)
        if self._xfd:
            self._xfd_check(mn, loaded)
        regs, init = self._regs, self._init
        for s, e in loads:
            regs[s:e] = mem[address + s:address + e]
        for s, e in inits:
            regs[s:e] = init[s:e]
        self._finish_restore(rfbm, loaded, rex_w, (self.cpl, self.vmx_nonroot, address, 0))

    def _finish_restore(self, rfbm: int, loaded: int, rex_w: bool,
                        info: tuple[int, bool, int, int]) -> None:
        if loaded & 1:
            self._canon_x87(rex_w)
        elif rfbm & 1:
            self._fcs = self._fds = 0
        if loaded & xf.PKRU:
            start = self._rf.start[_PKRU_BIT]
            self._regs[start + 4:start + 8] = b"\0\0\0\0"
        self._xinuse = (self._xinuse & ~rfbm) | self._loaded(loaded)
        self._xmodified = ~rfbm & M64
        self._xrstor_info = info

    def _plan_restore_standard(self, rfbm: int, bv: int) -> tuple[Any, ...]:
        rf = self._rf
        load_ranges = rf.component_ranges(rfbm & bv)
        mx_mode = _MX_LOAD if rfbm & 6 else _MX_NONE
        if mx_mode == _MX_LOAD:
            load_ranges = merge([*load_ranges, (legacy.MXCSR, legacy.MXCSR + 4)])
        init_ranges = rf.component_ranges(rfbm & ~bv)
        extent = max([legacy.EXTENDED] + [e for _, e in load_ranges])
        return tuple(load_ranges), tuple(init_ranges), extent, mx_mode

    def _restore_compacted(self, mn: str, address: int, rfbm: int, bv: int, comp: int, cb: int,
                           rex_w: bool, *, supervisor: bool) -> None:
        key = ("rc", rfbm, bv, comp)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan_restore_compacted(rfbm, bv, comp)
        loads, inits, extent, mx_mode = plan
        self._bounds(mn, address, extent)
        mem = self._mem
        if mx_mode == _MX_LOAD:
            mxcsr = _I.unpack_from(mem, address + legacy.MXCSR)[0]
            if mxcsr & self._mxcsr_rsvd:
                raise GeneralProtection(mn, f"MXCSR={mxcsr:#x} sets reserved bits (MXCSR_MASK="
                                            f"{self._beh.mxcsr_mask:#x}); the compacted form "
                                            "loads MXCSR when RFBM[1] and XSTATE_BV[1] are set")
        loaded = rfbm & bv
        if loaded & (xf.XTILECFG | xf.CET):
            offsets = self._layout.compacted(comp)[0]
            self._check_loaded_values(mn, address, loaded, offsets.__getitem__)
        if self._xfd:
            self._xfd_check(mn, loaded)
        regs, init = self._regs, self._init
        for m, r, n in loads:
            regs[r:r + n] = mem[address + m:address + m + n]
        for s, e in inits:
            regs[s:e] = init[s:e]
        if mx_mode == _MX_INIT:
            regs[legacy.MXCSR:legacy.MXCSR + 4] = _MXCSR_INIT_BYTES
        self._finish_restore(rfbm, loaded, rex_w, (self.cpl, self.vmx_nonroot, address, cb))

    def _plan_restore_compacted(self, rfbm: int, bv: int, comp: int) -> tuple[Any, ...]:
        rf = self._rf
        offsets, _ = self._layout.compacted(comp)
        loaded = rfbm & bv
        copies: list[tuple[int, int, int]] = []
        for b in bits(loaded):
            if b < 2:
                copies.extend((s, s, e - s) for s, e in rf.ranges[b])
            else:
                s, e = rf.ranges[b][0]
                copies.append((offsets[b], s, e - s))
        if loaded & 2:
            mx_mode = _MX_LOAD
            copies.append((legacy.MXCSR, legacy.MXCSR, 4))
        else:
            mx_mode = _MX_INIT if rfbm & 2 else _MX_NONE
        loads = merge_pairs(copies)
        inits = rf.component_ranges(rfbm & ~bv)
        extent = max([legacy.EXTENDED] + [m + n for m, _, n in loads])
        return tuple(loads), tuple(inits), extent, mx_mode

    # -- save ------------------------------------------------------------------------------
    def xsave(self, address: int, rfbm: int, *, rex_w: bool = True) -> None:
        """XSAVE: save RFBM = EDX:EAX & XCR0 in the standard format; XSTATE_BV bits outside
        RFBM are left as they were, XCOMP_BV is not written (SDM §13.7)."""
        mn = "XSAVE64" if rex_w else "XSAVE"
        self._xsave_checks(mn, address)
        rfbm &= self._xcr0
        armed = rfbm & self._xfd
        self._save_standard(mn, address, rfbm, rfbm, armed, rex_w)

    def xsaveopt(self, address: int, rfbm: int, *, rex_w: bool = True) -> None:
        """XSAVEOPT: XSAVE that skips components in their initial configuration (XINUSE=0)
        and, when XRSTOR_INFO matches (CPL, VMX non-root, address, 0), those not modified
        since that XRSTOR (SDM §13.9). MXCSR is written whenever RFBM[1] or RFBM[2] is set."""
        mn = "XSAVEOPT64" if rex_w else "XSAVEOPT"
        self._xsave_checks(mn, address, "xsaveopt")
        rfbm &= self._xcr0
        armed = rfbm & self._xfd
        write = rfbm & self._xinuse & ~armed
        if self._xrstor_info == (self.cpl, self.vmx_nonroot, address, 0):
            write &= self._xmodified
        self._save_standard(mn, address, rfbm, write, 0, rex_w)

    def _save_standard(self, mn: str, address: int, rfbm: int, write: int, armed: int,
                       rex_w: bool) -> None:
        key = ("ss", rfbm, write, armed)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan_save_standard(rfbm, write, armed)
        from_regs, from_init, extent = plan
        self._bounds(mn, address, extent)
        mem = self._mem
        bv = _Q.unpack_from(mem, address + legacy.XSTATE_BV)[0]
        regs, init = self._regs, self._init
        for s, e in from_regs:
            mem[address + s:address + e] = regs[s:e]
        for s, e in from_init:
            mem[address + s:address + e] = init[s:e]
        if write & 1 and not rex_w:
            self._store_x87_32(address)
        bv = (bv & ~rfbm) | (self._xinuse & rfbm & ~self._xfd)
        _Q.pack_into(mem, address + legacy.XSTATE_BV, bv)

    def _plan_save_standard(self, rfbm: int, write: int, armed: int) -> tuple[Any, ...]:
        rf = self._rf
        regs_ranges = rf.component_ranges(write & ~armed)
        if rfbm & 6:
            regs_ranges = merge([*regs_ranges, (legacy.MXCSR, legacy.MXCSR_MASK + 4)])
        init_ranges = rf.component_ranges(write & armed)
        extent = max([legacy.XSTATE_BV + 8] + [e for _, e in regs_ranges + init_ranges])
        return tuple(regs_ranges), tuple(init_ranges), extent

    def xsavec(self, address: int, rfbm: int, *, rex_w: bool = True) -> None:
        """XSAVEC: compacted save of RFBM = EDX:EAX & XCR0. XSTATE_BV = RFBM & XINUSE, with
        bit 1 also set when MXCSR != 1F80h; XCOMP_BV = RFBM | 1<<63; only components in
        XSTATE_BV are written; header bytes 63:16 and legacy bytes 416-511 untouched
        (SDM §13.10; the header bytes seen untouched on Zen 5)."""
        mn = "XSAVEC64" if rex_w else "XSAVEC"
        self._xsave_checks(mn, address, "xsavec")
        rfbm &= self._xcr0
        self._save_compacted(mn, address, rfbm, modified_opt=False, rex_w=rex_w)

    def xsaves(self, address: int, rfbm: int, *, rex_w: bool = True) -> None:
        """XSAVES: as XSAVEC over RFBM = EDX:EAX & (XCR0 | IA32_XSS), CPL 0 only, with the
        modified optimisation when XRSTOR_INFO matches (CPL, VMX non-root, address,
        RFBM | 1<<63) (SDM §13.11)."""
        mn = "XSAVES64" if rex_w else "XSAVES"
        self._xsave_checks(mn, address, "xsaves", supervisor=True)
        rfbm &= self._xcr0 | self._xss
        self._save_compacted(mn, address, rfbm, modified_opt=True, rex_w=rex_w)

    def _save_compacted(self, mn: str, address: int, rfbm: int, *, modified_opt: bool,
                        rex_w: bool) -> None:
        bv = rfbm & self._xinuse & ~self._xfd
        if rfbm & 2 and self._regs[legacy.MXCSR:legacy.MXCSR + 4] != _MXCSR_INIT_BYTES:
            bv |= 2
        cb = rfbm | XCOMP_COMPACTED
        write = bv
        if modified_opt and self._xrstor_info == (self.cpl, self.vmx_nonroot, address, cb):
            write &= self._xmodified
        key = ("sc", rfbm, write)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._plan_save_compacted(rfbm, write)
        copies, extent = plan
        self._bounds(mn, address, extent)
        mem, regs = self._mem, self._regs
        for r, m, n in copies:
            mem[address + m:address + m + n] = regs[r:r + n]
        if write & 1 and not rex_w:
            self._store_x87_32(address)
        _QQ.pack_into(mem, address + legacy.XSTATE_BV, bv, cb)

    def _plan_save_compacted(self, rfbm: int, write: int) -> tuple[Any, ...]:
        rf = self._rf
        offsets, _ = self._layout.compacted(rfbm)
        copies: list[tuple[int, int, int]] = []
        for b in bits(write):
            if b < 2:
                copies.extend((s, s, e - s) for s, e in rf.ranges[b])
            else:
                s, e = rf.ranges[b][0]
                copies.append((s, offsets[b], e - s))
        if write & 2:
            copies.append((legacy.MXCSR, legacy.MXCSR, 8))
        merged = [(r, m, n) for m, r, n in merge_pairs((m, r, n) for r, m, n in copies)]
        extent = max([legacy.EXTENDED] + [m + n for _, m, n in merged])
        return tuple(merged), extent

    # -- FXSAVE / FXRSTOR ------------------------------------------------------------------
    def _fx_checks(self, mn: str, address: int) -> None:
        if not self._has_fxsr:
            raise InvalidOpcode(mn, "CPUID.1:EDX.FXSR[bit 24]=0")
        if self.cr0_ts or self.cr0_em:
            raise DeviceNotAvailable(mn, "CR0.TS=1" if self.cr0_ts else "CR0.EM=1")
        if address & 15:
            raise GeneralProtection(mn, f"the address {address:#x} is not 16-byte aligned")
        self._bounds(mn, address, legacy.RESERVED)

    def fxsave(self, address: int, *, rex_w: bool = True) -> None:
        """FXSAVE: x87, MXCSR, MXCSR_MASK and XMM0-15 (bytes 0-415); 416-511 untouched."""
        mn = "FXSAVE64" if rex_w else "FXSAVE"
        self._fx_checks(mn, address)
        self._mem[address:address + legacy.RESERVED] = self._regs[:legacy.RESERVED]
        if not rex_w:
            self._store_x87_32(address)

    def fxrstor(self, address: int, *, rex_w: bool = True) -> None:
        """FXRSTOR: load x87, MXCSR and XMM0-15; #GP on reserved MXCSR bits."""
        mn = "FXRSTOR64" if rex_w else "FXRSTOR"
        self._fx_checks(mn, address)
        mem = self._mem
        mxcsr = _I.unpack_from(mem, address + legacy.MXCSR)[0]
        if mxcsr & self._mxcsr_rsvd:
            raise GeneralProtection(mn, f"MXCSR={mxcsr:#x} sets reserved bits "
                                        f"(MXCSR_MASK={self._beh.mxcsr_mask:#x})")
        regs = self._regs
        regs[0:legacy.MXCSR_MASK] = mem[address:address + legacy.MXCSR_MASK]
        regs[legacy.ST_SPACE:legacy.RESERVED] = mem[address + legacy.ST_SPACE:
                                                    address + legacy.RESERVED]
        self._canon_x87(rex_w)
        self._xinuse = (self._xinuse & ~xf.FPSSE) | self._loaded(xf.FPSSE)
        self._xmodified |= xf.FPSSE

    # -- XCR0 ------------------------------------------------------------------------------
    def xgetbv(self, ecx: int) -> int:
        """XGETBV: XCR0 for ECX=0; XCR0 & XINUSE for ECX=1 where XGETBV1 is enumerated.
        RCX[63:32] are ignored (kvm-unit-tests x86/xsave.c test_write_xcr0)."""
        ecx &= 0xFFFFFFFF
        if not self._has_xsave:
            raise InvalidOpcode("XGETBV", "CPUID.1:ECX.XSAVE[bit 26]=0")
        if not self._osxsave:
            raise InvalidOpcode("XGETBV", "CR4.OSXSAVE[bit 18]=0")
        if ecx == 0:
            return self._xcr0
        if ecx == 1 and self._has_xgetbv1:
            inuse = self._xinuse
            if (self._beh.xgetbv1_sse_counts_mxcsr
                    and self._regs[legacy.MXCSR:legacy.MXCSR + 4] != _MXCSR_INIT_BYTES):
                inuse |= 2
            return self._xcr0 & inuse
        if ecx == 1:
            raise GeneralProtection("XGETBV", "ECX=1 but CPUID.(EAX=0DH,ECX=1):EAX.XGETBV1=0")
        raise GeneralProtection("XGETBV", f"ECX={ecx:#x} does not name a supported XCR")

    def xsetbv(self, ecx: int, value: int) -> None:
        """XSETBV: write XCR0 (SDM Vol. 2 XSETBV exceptions, plus the AMX pair rule
        XCR0[17] = XCR0[18] that Bochs and Xen enforce)."""
        mn = "XSETBV"
        ecx &= 0xFFFFFFFF   # RCX[63:32] are ignored
        if not self._has_xsave:
            raise InvalidOpcode(mn, "CPUID.1:ECX.XSAVE[bit 26]=0")
        if not self._osxsave:
            raise InvalidOpcode(mn, "CR4.OSXSAVE[bit 18]=0")
        if self.cpl:
            raise GeneralProtection(mn, f"CPL={self.cpl}: XSETBV requires CPL 0")
        if ecx != 0:
            raise GeneralProtection(mn, f"ECX={ecx:#x}: only XCR0 can be written")
        problem = xcr0_problem(value, self._supported_xcr0)
        if problem:
            raise GeneralProtection(mn, problem)
        # Clearing an XCR0 bit leaves the component's registers (and XINUSE) as they are:
        # "the processor will preserve MPX state unmodified if software clears XCR0[4:3]",
        # likewise AVX-512 (SDM Vol. 1 13.3, referring to 13.1). A host PKRU thus survives a
        # guest that runs with XCR0[9] = 0 (what the KVM PKRU leak before ad856280ddea rests on).
        self._xcr0 = value
        # Conservative: no XSAVEOPT/XSAVES skipping across an XCR0 change.
        self._xrstor_info = None

    # -- MSRs ------------------------------------------------------------------------------
    def _msr_exists(self, msr: int) -> bool:
        if msr == msrs.IA32_XSS:
            return self._has_xsaves
        if msr in (msrs.IA32_XFD, msrs.IA32_XFD_ERR):
            return self._has_xfd
        if msr in (msrs.IA32_U_CET, msrs.IA32_S_CET):
            return self._has_shstk or self._has_ibt
        if msr in (msrs.IA32_PL0_SSP, msrs.IA32_PL1_SSP, msrs.IA32_PL2_SSP, msrs.IA32_PL3_SSP,
                   msrs.IA32_INT_SSP_TAB):
            return self._has_shstk
        return False

    def rdmsr(self, msr: int) -> int:
        mn = "RDMSR"
        if self.cpl:
            raise GeneralProtection(mn, f"CPL={self.cpl}: RDMSR requires CPL 0")
        if not self._msr_exists(msr):
            raise GeneralProtection(mn, f"{msrs.name(msr)} is not implemented on this processor")
        if msr == msrs.IA32_XSS:
            return self._xss
        if msr == msrs.IA32_XFD:
            return self._xfd
        if msr == msrs.IA32_XFD_ERR:
            return self._xfd_err
        if msr == msrs.IA32_S_CET:
            return self._s_cet
        if msr == msrs.IA32_INT_SSP_TAB:
            return self._int_ssp_tab
        return self.reg(_CET_MSR_REGS[msr])

    def wrmsr(self, msr: int, value: int) -> None:
        mn = "WRMSR"
        if self.cpl:
            raise GeneralProtection(mn, f"CPL={self.cpl}: WRMSR requires CPL 0")
        if not self._msr_exists(msr):
            raise GeneralProtection(mn, f"{msrs.name(msr)} is not implemented on this processor")
        if not 0 <= value <= M64:
            raise GeneralProtection(mn, f"{value:#x} is not a 64-bit value")
        name = msrs.name(msr)
        if msr == msrs.IA32_XSS:
            bad = value & ~self._supported_xss
            if bad:
                raise GeneralProtection(mn, f"{name}={value:#x} sets {xf.describe_mask(bad)} not "
                                            "supported by CPUID.(EAX=0DH,ECX=1):EDX:ECX")
            self._xss = value
            return
        if msr in (msrs.IA32_XFD, msrs.IA32_XFD_ERR):
            bad = value & ~self._xfd_capable
            if bad:
                raise GeneralProtection(mn, f"{name}={value:#x} sets {xf.describe_mask(bad)} that "
                                            "are not XFD-capable (CPUID.(EAX=0DH,ECX=i):ECX[2]=0)")
            if msr == msrs.IA32_XFD:
                self._xfd = value
            else:
                self._xfd_err = value
            return
        if msr in (msrs.IA32_U_CET, msrs.IA32_S_CET):
            problem = msrs.u_s_cet_problem(value, self._has_shstk, self._has_ibt)
            if problem:
                raise GeneralProtection(mn, f"{name}={value:#x}: {problem}")
            if msr == msrs.IA32_S_CET:
                self._s_cet = value
                return
        elif msr == msrs.IA32_INT_SSP_TAB:
            if not msrs.canonical(value, self._la57):
                raise GeneralProtection(mn, f"{name}={value:#x} is not canonical")
            self._int_ssp_tab = value
            return
        else:
            problem = msrs.ssp_problem(value, self._la57)
            if problem:
                raise GeneralProtection(mn, f"{name}: {problem}")
        self.set_reg(_CET_MSR_REGS[msr], value)

    # -- registers by name -----------------------------------------------------------------
    def _register(self, name: str) -> Any:
        try:
            reg = REGISTERS[name.lower()]
        except KeyError:
            raise KeyError(f"unknown register {name!r}") from None
        for p in reg.pieces:
            if p.bit not in self._rf.ranges:
                raise KeyError(f"{name}: component {name_of(p.bit)} is not on "
                               f"{self.host.name}")
        return reg

    def reg_bytes(self, name: str) -> bytes:
        """The register's bytes, least significant first (``fcs``/``fds`` included)."""
        key = name.lower()
        if key in ("fcs", "fds"):
            return (self._fcs if key == "fcs" else self._fds).to_bytes(2, "little")
        reg = self._register(key)
        out = bytearray()
        for p in reg.pieces:
            s = self._rf.start[p.bit] + p.offset
            out += self._regs[s:s + p.size]
        return bytes(out)

    def reg(self, name: str) -> int:
        """A register's value: x87 (fcw fsw ftw fop fip fdp fcs fds st0-7 mm0-7), mxcsr,
        xmm/ymm/zmm0-31, k0-7, bnd0-3, bndcfgu, bndstatus, pkru, pasid, u_cet, pl0-3_ssp,
        tilecfg, tmm0-7, r16-r31."""
        return int.from_bytes(self.reg_bytes(name), "little")

    def set_reg(self, name: str, value: int | bytes) -> None:
        """Write a register as an instruction would (for tests and the layers above).

        Components it touches are marked modified (XMODIFIED) and in use (XINUSE): on
        processors that track XINUSE by value (AMD), only if the result is not initial.
        x87 fields are held in their canonical form (FCW reserved bits, 11-bit FOP).
        """
        key = name.lower()
        if key in ("fcs", "fds"):
            v = int.from_bytes(value, "little") if isinstance(value, bytes) else value
            setattr(self, "_" + key, v & 0xFFFF)
            self._touch(1)
            return
        reg = self._register(key)
        if not reg.writable:
            raise ValueError(f"{name} is read-only")
        size = reg.size
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            if len(data) != size:
                raise ValueError(f"{name} holds {size} bytes, got {len(data)}")
        else:
            if not 0 <= value < 1 << (8 * size):
                raise ValueError(f"{value:#x} does not fit the {8 * size}-bit register {name}")
            data = value.to_bytes(size, "little")
        if key == "mxcsr" and int.from_bytes(data, "little") & self._mxcsr_rsvd:
            raise GeneralProtection("LDMXCSR", f"MXCSR={int.from_bytes(data, 'little'):#x} sets "
                                               "reserved bits")
        pos = 0
        for p in reg.pieces:
            s = self._rf.start[p.bit] + p.offset
            self._regs[s:s + p.size] = data[pos:pos + p.size]
            pos += p.size
        if reg.mask & 1 and key in ("fcw", "fsw", "fop", "fip", "fdp"):
            self._canon_x87_fields()
        if key == "mxcsr":
            self._xmodified |= xf.SSE   # MXCSR is SSE state but not part of XINUSE[1]
        else:
            self._touch(reg.mask)

    def _canon_x87_fields(self) -> None:
        regs = self._regs
        fcw, fsw, ftw, _, fop, fip, fdp = _X87.unpack_from(regs, 0)
        fcw = (fcw & legacy.FCW_KEEP) | legacy.FCW_ONE
        bits_ = self._beh.x87_pointer_bits
        if bits_ < 64:
            fip, fdp = _sext(fip, bits_), _sext(fdp, bits_)
        _X87.pack_into(regs, 0, fcw, fsw, ftw, 0, fop & legacy.FOP_MASK, fip, fdp)

    def _touch(self, mask: int) -> None:
        self._xmodified |= mask
        if self._beh.xinuse_compares_init:
            self._xinuse = (self._xinuse & ~mask) | self._nonzero_components(mask)
        else:
            self._xinuse |= mask

    def component_bytes(self, bit: int) -> bytes:
        """The current contents of component ``bit`` as the standard format lays them out
        (x87/SSE: the 512-byte legacy region)."""
        if bit < 2:
            return bytes(self._regs[:legacy.LEGACY_SIZE])
        try:
            s, e = self._rf.ranges[bit][0]
        except KeyError:
            raise KeyError(f"component {name_of(bit)} is not on {self.host.name}") from None
        return bytes(self._regs[s:e])

    def set_component(self, bit: int, data: bytes) -> None:
        """Write a whole extended component (bit >= 2) in its standard layout, as
        instructions writing its registers would (XINUSE/XMODIFIED as for set_reg)."""
        if bit < 2:
            raise ValueError("x87 and SSE live in the legacy region: use set_reg")
        try:
            s, e = self._rf.ranges[bit][0]
        except KeyError:
            raise KeyError(f"component {name_of(bit)} is not on {self.host.name}") from None
        if len(data) != e - s:
            raise ValueError(f"{name_of(bit)} is {e - s} bytes, got {len(data)}")
        self._regs[s:e] = data
        self._touch(1 << bit)

    def use(self, mask: int, mnemonic: str = "instruction") -> None:
        """Execute an instruction that uses components ``mask`` (e.g. TILELOADD: XTILEDATA).

        #UD when a component is not enabled in XCR0; #NM with IA32_XFD_ERR set when one
        is XFD-armed (SDM §13.14); otherwise the components count as modified.
        """
        user = mask & xf.USER_MASK
        if user & ~self._xcr0:
            raise InvalidOpcode(mnemonic, f"{xf.describe_mask(user & ~self._xcr0)} not enabled "
                                          "in XCR0")
        armed = user & self._xfd
        if armed:
            self._xfd_err = armed
            raise DeviceNotAvailable(mnemonic, f"IA32_XFD arms {xf.describe_mask(armed)}; "
                                               f"IA32_XFD_ERR <- {armed:#x}")
        self._xmodified |= mask

    def tilerelease(self) -> None:
        """TILERELEASE: TILECFG and TILEDATA return to their initial configuration
        (XINUSE[18:17] = 0). #UD/#NM as for the other AMX instructions (``use``)."""
        self.use(xf.XTILE, "TILERELEASE")
        for bit in (int(xf.XFeature.XTILECFG), int(xf.XFeature.XTILEDATA)):
            s, e = self._rf.ranges[bit][0]
            self._regs[s:e] = bytes(e - s)
        self._xinuse &= ~xf.XTILE


_CET_MSR_REGS: Final = {
    msrs.IA32_U_CET: "u_cet",
    msrs.IA32_PL0_SSP: "pl0_ssp",
    msrs.IA32_PL1_SSP: "pl1_ssp",
    msrs.IA32_PL2_SSP: "pl2_ssp",
    msrs.IA32_PL3_SSP: "pl3_ssp",
}


def xcr0_problem(value: int, supported: int) -> str | None:
    """Why XSETBV(0, value) raises #GP, or None (SDM Vol. 2 XSETBV; AMX pair per Bochs/Xen)."""
    if not 0 <= value <= M64:
        return f"{value:#x} is not a 64-bit value"
    unsupported = value & ~supported
    if unsupported:
        return (f"XCR0={value:#x} sets {xf.describe_mask(unsupported)} not supported by "
                "CPUID.(EAX=0DH,ECX=0):EDX:EAX")
    if not value & xf.FP:
        return f"XCR0={value:#x}: bit 0 (x87) must be 1"
    if value & xf.YMM and not value & xf.SSE:
        return f"XCR0={value:#x}: YMM (bit 2) requires SSE (bit 1)"
    if value & xf.AVX512 and ((value & xf.AVX512) != xf.AVX512 or value & 6 != 6):
        return (f"XCR0={value:#x}: AVX-512 bits 7:5 must be all set or all clear, and set "
                "only with bits 2:1")
    if bool(value & xf.BNDREGS) != bool(value & xf.BNDCSR):
        return f"XCR0={value:#x}: MPX bits 4:3 must be both set or both clear"
    if bool(value & xf.XTILECFG) != bool(value & xf.XTILEDATA):
        return f"XCR0={value:#x}: AMX bits 18:17 must be both set or both clear"
    return None
