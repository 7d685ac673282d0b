"""XGETBV/XSETBV (XCR0, XINUSE) and RDMSR/WRMSR of the XSAVE-managed MSRs (IA32_XSS,
IA32_XFD, IA32_XFD_ERR, CET)."""

from __future__ import annotations

from typing import Final

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import msrs
from kvmfpu.core.faults import (
    GeneralProtection,
    InvalidOpcode,
)
from kvmfpu.core.registers import Registers
from kvmfpu.core.state import (
    _MXCSR_INIT_BYTES,
    M64,
)


class Control(Registers):
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
