"""XRSTOR and XRSTORS (SDM Vol. 1 §13.8, §13.12): header checks, the value checks of
components whose load can fault (TILECFG, CET), XFD's #NM, then the load by plans made
once per (RFBM, XSTATE_BV, XCOMP_BV)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kvmfpu.arch import legacy, tilecfg
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, bits
from kvmfpu.core import msrs
from kvmfpu.core.faults import (
    DeviceNotAvailable,
    GeneralProtection,
)
from kvmfpu.core.regfile import merge, merge_pairs
from kvmfpu.core.state import (
    _I,
    _MX_INIT,
    _MX_LOAD,
    _MX_NONE,
    _MXCSR_INIT_BYTES,
    _PKRU_BIT,
    _Q,
    _QQ,
    _Z16,
    _Z48,
    M64,
    CoreState,
)


class Restore(CoreState):
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
        if self._beh.pkru_stays_modified:
            self._xmodified |= xf.PKRU
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

