"""FXSAVE and FXRSTOR (SDM Vol. 2): the 512-byte legacy image, without the XSAVE header."""

from __future__ import annotations

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.core.faults import (
    DeviceNotAvailable,
    GeneralProtection,
    InvalidOpcode,
)
from kvmfpu.core.state import (
    _I,
    CoreState,
)


class Fxsr(CoreState):
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

