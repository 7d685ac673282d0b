"""XSAVE, XSAVEOPT, XSAVEC and XSAVES (SDM Vol. 1 §13.7, §13.9-13.11): what each writes,
by plans made once per (RFBM, written components)."""

from __future__ import annotations

from typing import Any

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED, bits
from kvmfpu.core.regfile import merge, merge_pairs
from kvmfpu.core.state import (
    _MXCSR_INIT_BYTES,
    _PKRU_BIT,
    _Q,
    _QQ,
    CoreState,
)


class Save(CoreState):
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

    def _saved_ranges(self, mask: int) -> list[tuple[int, int]]:
        """The register-file ranges a save writes for components ``mask``: whole components,
        but only ``pkru_save_bytes`` of PKRU (AMD leaves bytes 7:4 in memory untouched)."""
        rf = self._rf
        if not mask & xf.PKRU or self._beh.pkru_save_bytes == 8:
            return rf.component_ranges(mask)
        start = rf.start[_PKRU_BIT]
        pkru = (start, start + self._beh.pkru_save_bytes)
        return merge([*rf.component_ranges(mask & ~xf.PKRU), pkru])

    def _plan_save_standard(self, rfbm: int, write: int, armed: int) -> tuple[Any, ...]:
        rf = self._rf
        regs_ranges = self._saved_ranges(write & ~armed)
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
                if b == _PKRU_BIT:
                    e = s + self._beh.pkru_save_bytes
                copies.append((s, offsets[b], e - s))
        if write & 2:
            copies.append((legacy.MXCSR, legacy.MXCSR, 8))
        merged = [(r, m, n) for m, r, n in merge_pairs((m, r, n) for r, m, n in copies)]
        extent = max([legacy.EXTENDED] + [m + n for _, m, n in merged])
        return tuple(merged), extent

