"""MP state, INIT and RESET, and the sregs (arch/x86/kvm/x86.c
kvm_arch_vcpu_ioctl_get/set_mpstate, kvm_vcpu_reset, __set_sregs_common; lapic.c
kvm_apic_accept_events)."""

from __future__ import annotations

from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import bits
from kvmfpu.kvm.cpuid import EMPTY
from kvmfpu.kvm.errors import closed_fd, einval
from kvmfpu.kvm.origins import cite
from kvmfpu.kvm.vcpu_base import (
    MP_INIT_RECEIVED,
    MP_NAMES,
    MP_RUNNABLE,
    MP_SIPI_RECEIVED,
    X86_MP_STATES,
    SRegs,
    VcpuBase,
    serialised,
)


class EventOps(VcpuBase):
    """MP state, INIT/RESET and sregs of a vCPU."""

    __slots__ = ()

    @serialised
    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE: runs kvm_apic_accept_events, so a pending INIT is emulated."""
        self._usable("KVM_GET_MP_STATE")
        p = self.kvm.kernel
        # Before 6.18 (and until 8819a49f9ff8 in 6.18-rc6) KVM_GET_MP_STATE loads the guest
        # FPU when MPX is supported, for the INIT path's sake.
        load = self.kvm.caps.mpx and (not p.has("xstate_reset_on_init_only")
                                      or p.has("init_fpu_put_imbalance_bug"))
        if load:     # "All paths that lead to INIT are required to load the guest's FPU"
            self._load_guest_fpu(["kvm_arch_vcpu_ioctl_get_mpstate", "kvm_load_guest_fpu"])
        try:
            self._accept_events()
        finally:
            if load:
                self._put_guest_fpu(["kvm_arch_vcpu_ioctl_get_mpstate", "kvm_put_guest_fpu"])
        return self.mp_state

    @serialised
    def set_mp_state(self, state: int) -> None:
        self._usable("KVM_SET_MP_STATE")
        p = self.kvm.kernel
        if p.has("mp_state_validation") and state not in X86_MP_STATES:
            raise einval("kvm_arch_vcpu_ioctl_set_mpstate",
                         f"mp_state {state} is not an x86 state", cite("mp_state"))
        if state != MP_RUNNABLE and not self.vm.irqchip:
            raise einval("kvm_arch_vcpu_ioctl_set_mpstate",
                         f"mp_state {MP_NAMES.get(state, state)} needs an in-kernel LAPIC "
                         "(KVM_CREATE_IRQCHIP)", cite("mp_state_lapic"))
        if state == MP_SIPI_RECEIVED:
            # KVM keeps INIT_RECEIVED and latches the SIPI (kvm_arch_vcpu_ioctl_set_mpstate).
            self.mp_state = MP_INIT_RECEIVED
            self.pending_sipi = True
        else:
            self.mp_state = state

    @serialised
    def send_init(self) -> None:
        """Latch an INIT (KVM_SET_VCPU_EVENTS with KVM_VCPUEVENT_VALID_SMM and
        smi.latched_init=1); the next KVM_GET_MP_STATE or KVM_RUN emulates it
        (kvm_apic_accept_events). Without an in-kernel LAPIC KVM ignores the latch
        (kvm_vcpu_ioctl_x86_set_vcpu_events), and so does the model."""
        self._usable("KVM_SET_VCPU_EVENTS")
        if self.vm.irqchip:
            self.pending_init = True

    def _accept_events(self) -> None:
        """kvm_apic_accept_events: a latched INIT resets the vCPU (the BSP becomes RUNNABLE,
        an AP waits for SIPI), then a latched SIPI starts a vCPU waiting in INIT_RECEIVED."""
        if self.pending_init:
            self.pending_init = False
            self.reset(init_event=True)
            self.at_reset_vector = True
            self.mp_state = MP_RUNNABLE if self.id == 0 else MP_INIT_RECEIVED
        if self.pending_sipi:
            self.pending_sipi = False
            if self.mp_state == MP_INIT_RECEIVED:
                self.mp_state = MP_RUNNABLE

    def reset(self, *, init_event: bool) -> None:
        """kvm_vcpu_reset's xstate part (x86.c; kvm_xstate_reset from 6.18)."""
        kvm = self.kvm
        p = kvm.kernel
        hk = kvm.hk
        fps = self.gfpu.fpstate
        if p.has("xstate_reset_on_init_only"):
            mask = (kvm.caps.supported_xcr0 | kvm.caps.supported_xss) & (xf.MPX | xf.CET)
            if init_event and mask:
                # 6.18-rc1..rc5 put/load unconditionally; 8819a49f9ff8 only if in use.
                in_use = fps.in_use or p.has("init_fpu_put_imbalance_bug")
                if in_use:
                    self._put_guest_fpu(["kvm_xstate_reset", "kvm_put_guest_fpu"])
                for b in bits(mask):
                    hk.fpstate_clear_xstate_component(self.gfpu.fpstate, b)
                if in_use:
                    self._load_guest_fpu(["kvm_xstate_reset", "kvm_load_guest_fpu"])
        elif kvm.caps.mpx:
            if init_event:
                self._put_guest_fpu(["kvm_vcpu_reset", "kvm_put_guest_fpu"])
            for b in (3, 4):
                hk.fpstate_clear_xstate_component(self.gfpu.fpstate, b)
            if init_event:
                self._load_guest_fpu(["kvm_vcpu_reset", "kvm_load_guest_fpu"])
        if not init_event:
            self.xcr0 = xf.FP
            self.ia32_xss = 0
        elif not p.has("xss_keep_on_init"):
            self.ia32_xss = 0
        # INIT and RESET: CR0 = 60000010h (TS clear), CR4 = 0, CPL 0 (SDM Vol. 3 §10.1.1;
        # checked on this machine's kvm_pvm); XCR0 survives INIT.
        self.sregs = SRegs()

    # -- sregs -------------------------------------------------------------------------------
    @serialised
    def get_sregs(self) -> SRegs:
        if self.closed:
            raise closed_fd("vCPU")
        return SRegs(**self.sregs.__dict__)

    @serialised
    def set_sregs(self, /, sregs: SRegs | None = None, **changes: object) -> None:
        """KVM_SET_SREGS for the xstate-relevant bits (CR0.TS, CR4.OSXSAVE, CR4.PKE, CPL)."""
        self._usable("KVM_SET_SREGS")
        new = SRegs(**(sregs or self.sregs).__dict__)
        for k, v in changes.items():
            if not hasattr(new, k):
                raise TypeError(f"unknown sreg {k}")
            setattr(new, k, v)
        kvm = self.kvm
        if new.cr4_osxsave and not kvm.hk.cfg.has_xsave:
            raise einval("kvm_set_cr4", "CR4.OSXSAVE on a host without XSAVE "
                                        "(cr4_reserved_bits)", cite("cr4_osxsave"))
        if new.cr4_pke and not kvm.caps.pku:
            raise einval("kvm_set_cr4", "CR4.PKE: KVM offers no PKU (cr4_reserved_bits)",
                         cite("cr4_osxsave"))
        # __kvm_is_valid_cr4: cr4_guest_rsvd_bits come from the guest CPUID once
        # KVM_SET_CPUID2 ran. kvm_pvm accepts OSXSAVE regardless (measured here).
        if self.cpuid is not EMPTY and kvm.ops.cr4_from_guest_cpuid:
            if new.cr4_osxsave and not self._cpuid_has("xsave"):
                raise einval("kvm_set_cr4", "CR4.OSXSAVE but the guest CPUID has no XSAVE "
                                            "(cr4_guest_rsvd_bits)", cite("cr4_osxsave"))
            if new.cr4_pke and not self._cpuid_has("pku"):
                raise einval("kvm_set_cr4", "CR4.PKE but the guest CPUID has no PKU "
                                            "(cr4_guest_rsvd_bits)", cite("cr4_osxsave"))
        self.sregs = new
        # __set_sregs_common: "older userspace won't unhalt the vcpu on reset" - the BSP at
        # the reset vector becomes RUNNABLE.
        if self.id == 0 and self.at_reset_vector:
            self.mp_state = MP_RUNNABLE

