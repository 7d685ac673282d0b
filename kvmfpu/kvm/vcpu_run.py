"""KVM_RUN: ``with vcpu.guest() as g`` and the guest's instructions (arch/x86/kvm/x86.c
vcpu_enter_guest, the vendor exit handlers), with host events injected at entry and at
the IRQ window."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar, cast

from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import msrs as msr
from kvmfpu.core.faults import DeviceNotAvailable, Fault, GeneralProtection, InvalidOpcode
from kvmfpu.kvm.errors import closed_fd
from kvmfpu.kvm.vcpu_base import MsrFailure, serialised
from kvmfpu.kvm.vcpu_events import EventOps

if TYPE_CHECKING:
    from kvmfpu.kvm.vcpu import Vcpu
    from kvmfpu.linux.kernel import HostKernel

T = TypeVar("T")


class RunOps(EventOps):
    """KVM_RUN and injected host events of a vCPU."""

    __slots__ = ()

    @serialised
    def inject(self, point: str, event: str | Callable[[], None]) -> None:
        """Run a host event at the next ``point`` of KVM_RUN: "irq_window" (after a VM exit,
        IRQs enabled, before the exit handler) or "entry" (before the next VM entry).
        Events: "kernel_fpu_begin" (an interrupt that uses the FPU), "preempt" (a context
        switch away and back), or any callable."""
        if self.closed:
            raise closed_fd("vCPU")
        if point not in ("irq_window", "entry"):
            raise ValueError(f"unknown injection point {point!r}")
        if isinstance(event, str):
            hk = self.kvm.hk
            if event == "kernel_fpu_begin":
                def run() -> None:
                    hk.kernel_fpu_begin(self.thread, "irq")
                    hk.kernel_fpu_end()
            elif event == "preempt":
                def run() -> None:
                    hk.context_switch_out(self.thread)
            else:
                raise ValueError(f"unknown event {event!r}")
            self._hooks.setdefault(point, []).append(run)
        else:
            self._hooks.setdefault(point, []).append(event)

    def _fire(self, point: str) -> None:
        for fn in self._hooks.pop(point, []):
            fn()

    # -- KVM_RUN ---------------------------------------------------------------------------------
    @contextmanager
    def guest(self) -> Iterator[Guest]:
        """One KVM_RUN: ``with vcpu.guest() as g: g.xsetbv(0, v); g.wrmsr(...); ...``.

        The guest FPU is loaded on entry (kvm_load_guest_fpu) and put back on exit; host
        faults (seed 003's #NM) surface as HostOops. The block holds the core's lock (KVM_RUN
        holds vcpu->mutex): other threads' ioctls wait until it ends."""
        lock = self._lock
        lock.acquire()
        try:
            self._usable("KVM_RUN")
            kvm = self.kvm
            g = Guest(cast("Vcpu", self))
            self._accept_events()
            self.has_run = True
            self.at_reset_vector = False
            with kvm.hk.running(self.thread):
                self._load_guest_fpu(["kvm_arch_vcpu_ioctl_run", "kvm_load_guest_fpu"])
                self._running = True
                try:
                    yield g
                    g._leave()
                finally:
                    self._running = False
                    if g.in_guest:
                        g._vmexit()
                    if self.thread.fpstate is self.gfpu.fpstate:
                        self._put_guest_fpu(["kvm_arch_vcpu_ioctl_run", "kvm_put_guest_fpu"])
        finally:
            lock.release()



class Guest:
    """Instructions of a running guest. Intercepted ones (XSETBV, WRMSR to XSS/XFD/...) exit
    to KVM's handlers; the rest execute on the emulated core with the guest's XCR0, XSS, XFD
    and PKRU loaded. A guest-visible fault raises the core's Fault."""

    def __init__(self, vcpu: Vcpu):
        self.vcpu = vcpu
        self.in_guest = False
        self._host_pkru = 0

    @property
    def _hk(self) -> HostKernel:
        return self.vcpu.kvm.hk

    def _chain(self) -> list[str]:
        return ["kvm_arch_vcpu_ioctl_run", "vcpu_enter_guest"]

    def _enter(self) -> None:
        """vcpu_enter_guest up to VM entry."""
        if self.in_guest:
            return
        v = self.vcpu
        hk = self._hk
        v._fire("entry")
        if v.thread.need_fpu_load:
            hk.fpregs_restore_userregs(v.thread, self._chain())
        cpu = hk.cpu
        cpu.cpl = 0
        if v.gfpu.xfd_err:
            cpu.wrmsr(msr.IA32_XFD_ERR, v.gfpu.xfd_err)
        host_cfg = hk.cfg
        if v.sregs.cr4_osxsave:
            if v.xcr0 != host_cfg.xcr0:
                cpu.xsetbv(0, v.xcr0)
            if self._xsaves_enabled() and v.ia32_xss != host_cfg.xss:
                cpu.wrmsr(msr.IA32_XSS, v.ia32_xss)
        if self._pkru_switched():
            self._host_pkru = cpu.reg("pkru")
            if v.pkru != self._host_pkru:
                cpu.set_reg("pkru", v.pkru)
        cpu.cr4_osxsave = v.sregs.cr4_osxsave and host_cfg.has_xsave
        cpu.cr0_ts = v.sregs.cr0_ts
        cpu.cpl = v.sregs.cpl
        self.in_guest = True

    def _xsaves_enabled(self) -> bool:
        """guest_cpu_cap_has(XSAVES): VMX enables it with guest XSAVE + XSAVES in CPUID and
        KVM support; SVM cannot hide XSAVES, so it is enabled whenever the host uses XSAVES
        and the guest has XSAVE (svm_vcpu_after_set_cpuid)."""
        v = self.vcpu
        kvm = v.kvm
        if not kvm.ops.hides_xsaves:
            return kvm.hk.cfg.uses_xsaves and v._cpuid_has("xsave")
        return kvm.caps.xsaves and v._cpuid_has("xsave") and v._cpuid_has("xsaves")

    def _pkru_switched(self) -> bool:
        v = self.vcpu
        return (v.kvm.host.has("pku") and v.kvm.ops.pku
                and bool(v.xcr0 & xf.PKRU or v.sregs.cr4_pke))

    def _vmexit(self) -> None:
        """VM exit up to the exit handler (kvm_load_host_xsave_state, XFD sync, IRQ window)."""
        v = self.vcpu
        hk = self._hk
        cpu = hk.cpu
        cpu.cpl = 0
        cpu.cr0_ts = False
        cpu.cr4_osxsave = hk.cfg.has_xsave
        if self._pkru_switched():
            v.pkru = cpu.reg("pkru")
            if v.pkru != self._host_pkru:
                cpu.set_reg("pkru", self._host_pkru)
        host_cfg = hk.cfg
        if v.sregs.cr4_osxsave:
            if v.xcr0 != host_cfg.xcr0:
                cpu.xsetbv(0, host_cfg.xcr0)
            if self._xsaves_enabled() and v.ia32_xss != host_cfg.xss:
                cpu.wrmsr(msr.IA32_XSS, host_cfg.xss)
        if v.xfd_no_write_intercept and hk.dynamic:      # fpu_sync_guest_vmexit_xfd_state
            v.gfpu.fpstate.xfd = cpu.xfd
            hk.xfd_state = cpu.xfd
        if v.gfpu.xfd_err and hk.dynamic:
            cpu.wrmsr(msr.IA32_XFD_ERR, 0)
        self.in_guest = False
        v._fire("irq_window")

    def _leave(self) -> None:
        if self.in_guest:
            self._vmexit()

    def _native(self, fn: Callable[[], T]) -> T:
        self._enter()
        try:
            return fn()
        except DeviceNotAvailable as fault:
            v = self.vcpu
            hk = self._hk
            if hk.dynamic and v.gfpu.fpstate.xfd:
                v.gfpu.xfd_err = hk.cpu.xfd_err     # handle_nm_fault_irqoff (ec5be88ab29f)
            raise fault

    def _exit_to_kvm(self, handler: Callable[[], Fault | None]) -> None:
        """An intercepted instruction: VM exit, the handler, and re-entry (which is where a
        stale XSTATE_BV meets XFD in seed 003)."""
        self._enter()
        self._vmexit()
        fault = handler()
        self._enter()
        if fault is not None:
            raise fault

    def _gpa(self, gpa: int, size: int) -> int:
        vm = self.vcpu.vm
        if gpa < 0 or gpa + size > vm.memory_size:
            raise GeneralProtection("guest", f"guest physical address {gpa:#x} outside the "
                                             f"VM's {vm.memory_size:#x} bytes of memory")
        return int(vm.memory_base + gpa)

    # intercepted
    def xsetbv(self, ecx: int, value: int) -> None:
        """kvm_emulate_xsetbv: #GP(0) when CPL != 0 or __kvm_set_xcr fails."""
        v = self.vcpu
        if not v.sregs.cr4_osxsave:
            raise InvalidOpcode("XSETBV", "CR4.OSXSAVE=0 (#UD has priority over the intercept)")

        def handler() -> Fault | None:
            if v.sregs.cpl:
                return GeneralProtection("XSETBV", f"CPL={v.sregs.cpl} (kvm_emulate_xsetbv)")
            problem = v.xcr_problem(ecx & 0xFFFFFFFF, value)
            if problem:
                return GeneralProtection("XSETBV", f"__kvm_set_xcr: {problem}")
            v.xcr0 = value
            return None
        self._exit_to_kvm(handler)

    def wrmsr(self, index: int, value: int) -> None:
        v = self.vcpu
        if index == msr.IA32_XFD and v.xfd_no_write_intercept:
            self._native(lambda: self._hk.cpu.wrmsr(index, value))
            return

        def handler() -> Fault | None:
            if v.sregs.cpl:
                return GeneralProtection("WRMSR", f"CPL={v.sregs.cpl}")
            try:
                v._set_msr(index, value, host=False)
            except MsrFailure as failure:
                return GeneralProtection("WRMSR", f"kvm_set_msr_common: {failure.reason}")
            return None
        self._exit_to_kvm(handler)

    def rdmsr(self, index: int) -> int:
        v = self.vcpu
        result: list[int] = []

        def handler() -> Fault | None:
            try:
                result.append(v._get_msr(index, host=False))
            except MsrFailure as failure:
                return GeneralProtection("RDMSR", f"kvm_get_msr_common: {failure.reason}")
            return None
        self._exit_to_kvm(handler)
        return int(result[0])

    # native
    def xgetbv(self, ecx: int) -> int:
        return self._native(lambda: self._hk.cpu.xgetbv(ecx))

    def set_reg(self, name: str, value: int | bytes) -> None:
        """An instruction writing a register (e.g. VMOVDQU, LDTILECFG, WRPKRU)."""
        self._native(lambda: self._hk.cpu.set_reg(name, value))

    def reg(self, name: str) -> int:
        return self._native(lambda: self._hk.cpu.reg(name))

    def use(self, mask: int, mnemonic: str = "instruction") -> None:
        """An instruction using components ``mask`` (TILELOADD: XTILEDATA): #NM when armed."""
        self._native(lambda: self._hk.cpu.use(mask, mnemonic))

    def tilerelease(self) -> None:
        self._native(self._hk.cpu.tilerelease)

    def _mem_insn(self, name: str, gpa: int, rfbm: int, size: int) -> None:
        addr = self._gpa(gpa, size)
        self._native(lambda: getattr(self._hk.cpu, name)(addr, rfbm))

    def fxsave(self, gpa: int) -> None:
        addr = self._gpa(gpa, 512)
        self._native(lambda: self._hk.cpu.fxsave(addr))

    def xsave(self, gpa: int, rfbm: int) -> None:
        self._mem_insn("xsave", gpa, rfbm, self._area())

    def xsaveopt(self, gpa: int, rfbm: int) -> None:
        self._mem_insn("xsaveopt", gpa, rfbm, self._area())

    def xsavec(self, gpa: int, rfbm: int) -> None:
        self._mem_insn("xsavec", gpa, rfbm, self._area())

    def xrstor(self, gpa: int, rfbm: int) -> None:
        self._mem_insn("xrstor", gpa, rfbm, self._area())

    def xsaves(self, gpa: int, rfbm: int) -> None:
        self._require_xsaves("XSAVES")
        self._mem_insn("xsaves", gpa, rfbm, self._area())

    def xrstors(self, gpa: int, rfbm: int) -> None:
        self._require_xsaves("XRSTORS")
        self._mem_insn("xrstors", gpa, rfbm, self._area())

    def _require_xsaves(self, mnemonic: str) -> None:
        kvm = self.vcpu.kvm
        if not kvm.ops.hides_xsaves:
            # SVM cannot hide XSAVES: the hardware runs it whatever the guest CPUID says
            # (svm_vcpu_after_set_cpuid); the core raises #UD only without hardware XSAVES.
            return
        if not self._xsaves_enabled():
            raise InvalidOpcode(mnemonic, "XSAVES not enabled for the guest (VMX secondary "
                                          "control ENABLE_XSAVES clear)")

    def _area(self) -> int:
        return self._hk.layout.standard_size(self._hk.cfg.xcr0) + 4096
