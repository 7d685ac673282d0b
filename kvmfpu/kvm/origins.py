"""Where each error path of the modelled ioctls came from: the commit that introduced the
behaviour and its first mainline release. Error reasons cite these.

Ids were read in stored sources (tip-bot and stable mails, "Fixes:" lines, git pull
shortlogs); where no source showed the id, ``commit`` is None and the release is the best
estimate, and the citation says so rather than guess an id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Origin:
    commit: str | None
    title: str
    release: str

    def cite(self) -> str:
        if self.commit is None:
            return f"since ~{self.release}, {self.title}; commit id not confirmed"
        return f"{self.commit}, {self.release}"


_O = Origin
ORIGINS: Final[dict[str, Origin]] = {
    "msr_io": _O(None, "KVM: Expose MSRs to userspace", "2.6.20"),
    "msr_index_list": _O(None, "KVM: Expose MSRs to userspace", "2.6.20"),
    "cpuid2": _O("0771671749b5", "KVM: Enhance guest cpuid management", "2.6.25"),
    "xcrs": _O("2d5b5a665508", "KVM_GET_XCRS/KVM_SET_XCRS", "2.6.36"),
    "xsetbv": _O("2acf923e38fb", "KVM: VMX: Enable XSAVE/XRSTOR for guest", "2.6.36"),
    "xcr0_supported": _O("d7876f1be40a", "KVM: x86: prevent setting unsupported XSAVE states",
                        "3.13"),
    "xcr0_mpx": _O(None, "KVM MPX enabling (BNDREGS/BNDCSR pair)", "3.15"),
    "xcr0_avx512": _O(None, "KVM AVX-512 enabling (opmask/ZMM_Hi256/Hi16_ZMM)", "3.19"),
    "xcr0_amx": _O("86aff7a47992", "kvm: x86: Add XCR0 support for Intel AMX", "5.17"),
    "check_cpuid_vaddr": _O(None, "KVM: x86: Introduce kvm_check_cpuid()", "5.9"),
    "cpuid_after_run_forbidden": _O("feb627e8d6f6",
                                   "KVM: x86: Forbid KVM_SET_CPUID{,2} after KVM_RUN", "5.16"),
    "cpuid_after_run_equal": _O("c6617c61e8fe",
                               "KVM: x86: Partially allow KVM_SET_CPUID{,2} after KVM_RUN", "5.17"),
    "set_xsave_5_15_xcr0": _O("d7876f1be40a",
                             "KVM: x86: prevent setting unsupported XSAVE states", "3.13"),
    "set_xsave_no_xsave": _O("2d5b5a665508", "KVM_GET/SET_XSAVE", "2.6.36"),
    "set_xsave_5_15_mxcsr": _O(None, "KVM_SET_XSAVE MXCSR check", "4.15"),
    "uabi_copy": _O("ea4d6938d4c0", "x86/fpu: Replace KVMs home brewed FPU copy from user", "5.16"),
    "uabi_xcomp_bv": _O("814fb7bb7db5", "x86/fpu: Don't let userspace set bogus xcomp_bv", "4.14"),
    "uabi_header": _O("5274e6c172c4", "x86/fpu/xstate: Rename validate_xstate_header() to "
                                     "validate_user_xstate_header()", "5.8"),
    "uabi_mxcsr": _O("947f4947cf00",
                    "x86/fpu: Reject invalid MXCSR values in copy_kernel_to_xstate()", "5.14"),
    "cr4_osxsave": _O("6d1068b3a985", "KVM: x86: invalid opcode oops on SET_SREGS with OSXSAVE "
                                     "bit set (CVE-2012-4461)", "3.7"),
    "vcpu_id": _O("a1c42ddedf35", "kvm: rename KVM_MAX_VCPU_ID to KVM_MAX_VCPU_IDS", "5.16"),
    "vcpu_exists": _O("73880c80aa9c", "KVM: Break dependency between vcpu index in vcpus array "
                                     "and vcpu_id.", "2.6.32"),
    "vm_type": _O("89ea60c2c7b5", "KVM: x86: Add support for \"protected VMs\" that can utilize "
                                 "private memory", "6.8"),
    "xcomp_perm": _O("db8268df0983", "x86/arch_prctl: Add controls for dynamic XSTATE components",
                    "5.16"),
    "guest_perm": _O("980fe2fddcff", "x86/fpu: Extend fpu_xstate_prctl() with guest permissions",
                    "5.17"),
    "xfd_enable": _O("5ab2f45bba48", "kvm: x86: Enable dynamic xfeatures at KVM_SET_CPUID2", "5.17"),
    "mp_state": _O("22c6a0ef6b26", "KVM: x86: check validity of argument to KVM_SET_MP_STATE",
                  "6.0"),
    "irqchip": _O(None, "KVM: in-kernel PIC/IOAPIC/LAPIC (KVM_CREATE_IRQCHIP)", "2.6.20"),
    "mp_state_lapic": _O(None, "KVM: in-kernel LAPIC MP states (KVM_SET_MP_STATE)", "2.6.25"),
    "get_xsave_uabi": _O("be50b2065dfa",
                        "kvm: x86: Add support for getting/setting expanded xstate buffer", "5.17"),
    "device_attr": _O("dd6e6312335d", "KVM: x86: add system attribute to retrieve full set of "
                                     "supported xsave states", "5.17"),
    "xfd_warn": _O("b45f72177594",
                  "x86/fpu: Clear XSTATE_BV[i] in guest XSAVE state whenever XFD[i]=1", "6.19"),
    "user_xfeatures_cpuid": _O("ad856280ddea",
                              "x86/kvm/fpu: Limit guest user_xfeatures to supported bits of XCR0",
                              "5.17"),
}


def cite(key: str) -> str:
    return ORIGINS[key].cite()
