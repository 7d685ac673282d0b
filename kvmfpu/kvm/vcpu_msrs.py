"""KVM_GET_MSRS and KVM_SET_MSRS for the xstate MSRs (IA32_XSS, IA32_XFD/XFD_ERR, CET):
kvm_set/get_msr_common and msr_io (arch/x86/kvm/x86.c; msrs.c in 7.x)."""

from __future__ import annotations

import errno
from collections.abc import Iterable

from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import msrs as msr
from kvmfpu.kvm.errors import KvmError
from kvmfpu.kvm.origins import cite
from kvmfpu.kvm.vcpu_base import CET_MSRS, MAX_IO_MSRS, MsrFailure, VcpuBase, serialised


class MsrOps(VcpuBase):
    """The MSR ioctls of a vCPU."""

    __slots__ = ()

    def _guest_supported_xfd(self) -> int:
        p = self.kvm.kernel
        if p.has("xcr0_valid_from_user_xfeatures"):
            return self.gfpu.fpstate.user_xfeatures & xf.XTILEDATA
        return self.gsx & xf.XTILEDATA

    def _advertised(self, index: int) -> bool:
        return index in self.kvm.msr_index_list()

    def _set_msr(self, index: int, data: int, host: bool) -> None:
        kvm = self.kvm
        p = kvm.kernel
        name = msr.name(index)
        if index == msr.IA32_XSS:
            if p.has("cet"):
                if not self._cpuid_has("xsaves"):
                    raise MsrFailure(f"{name}: guest CPUID lacks XSAVES "
                                     "(KVM_MSR_RET_UNSUPPORTED, 338543cbe033)", unsupported=True)
                if data & ~self.gss:
                    raise MsrFailure(f"{name}={data:#x} sets bits outside guest_supported_xss "
                                     f"{self.gss:#x}")
            else:
                if not host and not self._cpuid_has("xsaves"):
                    raise MsrFailure(f"{name}: guest CPUID lacks XSAVES")
                if data & ~kvm.caps.supported_xss:
                    raise MsrFailure(f"{name}={data:#x}: KVM supports no IA32_XSS bits "
                                     f"(kvm_caps.supported_xss = {kvm.caps.supported_xss:#x})")
            self.ia32_xss = data
            return
        if index in (msr.IA32_XFD, msr.IA32_XFD_ERR) and p.has("amx"):
            if not host and not self._cpuid_has("xfd"):
                raise MsrFailure(f"{name}: guest CPUID lacks XFD")
            supported = self._guest_supported_xfd()
            if data & ~supported:
                raise MsrFailure(f"{name}={data:#x} outside kvm_guest_supported_xfd "
                                 f"{supported:#x} (guest XCR0 support & XTILEDATA)")
            if index == msr.IA32_XFD:
                running = self._running and self.thread.fpstate is self.gfpu.fpstate
                kvm.hk.fpu_update_guest_xfd(self.thread if running else None, self.gfpu, data)
                if not host and data and kvm.ops.xfd_write_passthrough:
                    # b5274b1b7ba8: stop intercepting XFD writes after the first non-zero one.
                    self.xfd_no_write_intercept = True
            else:
                self.gfpu.xfd_err = data
            return
        if index in CET_MSRS and p.has("cet"):
            self._set_cet_msr(index, data, host)
            return
        raise MsrFailure(f"{name} is not an MSR KVM handles here", unsupported=False)

    def _set_cet_msr(self, index: int, data: int, host: bool) -> None:
        name = msr.name(index)
        shstk, ibt = self._cpuid_has("shstk"), self._cpuid_has("ibt")
        la57 = self.kvm.host.has("la57")
        if index in (msr.IA32_U_CET, msr.IA32_S_CET):
            if not (shstk or ibt):
                raise MsrFailure(f"{name}: guest CPUID has neither SHSTK nor IBT",
                                 unsupported=True)
            problem = msr.u_s_cet_problem(data, shstk, ibt)
        else:
            if not shstk:
                raise MsrFailure(f"{name}: guest CPUID lacks SHSTK", unsupported=True)
            if index == msr.IA32_INT_SSP_TAB:
                problem = None if msr.canonical(data, la57) else f"{data:#x} is not canonical"
            else:
                problem = msr.ssp_problem(data, la57)
        if problem:
            raise MsrFailure(f"{name}: {problem} (kvm_is_valid_u_s_cet / SSP checks)")
        if index == msr.IA32_S_CET:
            self.cet_s = data
        elif index == msr.IA32_INT_SSP_TAB:
            self.int_ssp_tab = data
        else:
            self._xstate_msr(index, data)

    def _xstate_msr(self, index: int, data: int | None) -> int:
        """kvm_set/get_xstate_msr: load the guest FPU, WRMSR/RDMSR, put it back."""
        hk = self.kvm.hk
        with self._guest_fpu_loaded():
            cpu = hk.cpu
            cpu.cpl = 0
            if data is None:
                return int(cpu.rdmsr(index))
            cpu.wrmsr(index, data)
            return data

    def _get_msr(self, index: int, host: bool) -> int:
        kvm = self.kvm
        p = kvm.kernel
        name = msr.name(index)
        if index == msr.IA32_XSS:
            if not host and not self._cpuid_has("xsaves"):
                raise MsrFailure(f"{name}: guest CPUID lacks XSAVES")
            return self.ia32_xss
        if index in (msr.IA32_XFD, msr.IA32_XFD_ERR) and p.has("amx"):
            if not host and not self._cpuid_has("xfd"):
                raise MsrFailure(f"{name}: guest CPUID lacks XFD")
            return self.gfpu.fpstate.xfd if index == msr.IA32_XFD else self.gfpu.xfd_err
        if index in CET_MSRS and p.has("cet"):
            shstk, ibt = self._cpuid_has("shstk"), self._cpuid_has("ibt")
            if index in (msr.IA32_U_CET, msr.IA32_S_CET):
                if not (shstk or ibt):
                    raise MsrFailure(f"{name}: guest CPUID has neither SHSTK nor IBT", True)
            elif not shstk:
                raise MsrFailure(f"{name}: guest CPUID lacks SHSTK", True)
            if index == msr.IA32_S_CET:
                return self.cet_s
            if index == msr.IA32_INT_SSP_TAB:
                return self.int_ssp_tab
            return self._xstate_msr(index, None)
        raise MsrFailure(f"{name} is not an MSR KVM handles here")

    def _do_msr(self, index: int, value: int, write: bool) -> int:
        """kvm_do_msr_access for a host-initiated access (KVM_GET/SET_MSRS)."""
        try:
            if write:
                self._set_msr(index, value, host=True)
                return value
            return self._get_msr(index, host=True)
        except MsrFailure as failure:
            p = self.kvm.kernel
            if (failure.unsupported and p.has("msr_host_zero_write_advertised")
                    and (not write or value == 0) and self._advertised(index)):
                return 0
            raise

    @serialised
    def get_msrs(self, indices: Iterable[int]) -> list[tuple[int, int]]:
        """KVM_GET_MSRS: the (index, value) pairs read, stopping at the first failure (the
        ioctl returns their count). Why it stopped is in ``last_msr_failure``."""
        self._usable("KVM_GET_MSRS")
        idx = list(indices)
        if len(idx) >= MAX_IO_MSRS:
            raise KvmError(errno.E2BIG, "msr_io", f"nmsrs {len(idx)} >= MAX_IO_MSRS (256)",
                           commit=cite("msr_io"))
        out: list[tuple[int, int]] = []
        self.last_msr_failure = None
        for index in idx:
            try:
                out.append((index, self._do_msr(index, 0, write=False)))
            except MsrFailure as failure:
                self.last_msr_failure = failure.reason
                break
        return out

    @serialised
    def set_msrs(self, entries: Iterable[tuple[int, int]]) -> int:
        """KVM_SET_MSRS: how many entries were written before the first failure."""
        self._usable("KVM_SET_MSRS")
        pairs = list(entries)
        if len(pairs) >= MAX_IO_MSRS:
            raise KvmError(errno.E2BIG, "msr_io", f"nmsrs {len(pairs)} >= MAX_IO_MSRS (256)",
                           commit=cite("msr_io"))
        self.last_msr_failure = None
        for n, (index, value) in enumerate(pairs):
            try:
                self._do_msr(index, value, write=True)
            except MsrFailure as failure:
                self.last_msr_failure = failure.reason
                return n
        return len(pairs)

