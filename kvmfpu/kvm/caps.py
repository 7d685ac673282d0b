"""What KVM supports on a host: kvm_caps.supported_xcr0/xss and the CPUID caps, by
vendor flavour.

Sources: arch/x86/kvm/x86.c (KVM_SUPPORTED_XCR0, kvm_x86_vendor_init), vmx.c
hardware_setup/vmx_set_cpu_caps (MPX only with VMX MPX support), svm.c svm_hardware_setup
(MPX always cleared; 6.18 SVM shadow stacks without IBT, 8db428fd5229), the 6.18 CET
gate (69cc3e886582: XSAVES, SHSTK or IBT, both CET_USER and CET_KERNEL in host XSS),
cpuid.c kvm_set_cpu_caps (CPUID.(0DH,1).EAX = XSAVEOPT|XSAVEC|XGETBV1|XSAVES|XFD filtered
by the kernel's own caps: the Zen erratum removes XSAVES). pvm (kvm_pvm, the development
machine's module): supported_xss = 0 and XSAVES cleared (PVM source, pvm_set_cpu_caps);
its KVM_GET_SUPPORTED_CPUID feature filter as measured on the machine (see PVM_FILTER).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kvmfpu.arch import xfeatures as xf
from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm.flavors import FLAVORS, Flavor, default_flavor, flavor
from kvmfpu.kvm.profiles import KernelProfile
from kvmfpu.linux.config import FpuConfig

__all__ = ["FLAVORS", "PVM_FILTER", "PVM_FILTER_HOST", "KvmCaps", "default_flavor", "kvm_caps"]

# CPUID.(0DH,1):EAX bits.
D1_XSAVEOPT, D1_XSAVEC, D1_XGETBV1, D1_XSAVES, D1_XFD = 1, 2, 4, 8, 16

#: kvm_pvm's KVM_GET_SUPPORTED_CPUID, measured on Linux 6.18.44 kvm_pvm (the development
#: machine, AMD Zen 5): per (leaf, subleaf, register) the bits it reported. Bits the host
#: lacks were forced by KVM. Applied by kvmfpu.kvm.cpu_caps after kvm_set_cpu_caps on other
#: hosts too, but only to the bits the measurement tested (the measuring host had them, or
#: KVM reported them); untested bits follow mainline (a Zen 3 kvm_pvm host confirmed 7.0 EDX
#: INTEL_STIBP/SPEC_CTRL_SSBD pass). The kvm_pvm source of this build is not public.
#: The leaves kvm_pvm does not filter here follow mainline __do_cpuid_func (shadow paging:
#: no GuestPhysBits, GBPAGES set, PKU/SHSTK off), which the machine confirms row for row.
PVM_FILTER: Final[dict[tuple[int, int, int], int]] = {
    (1, 0, 2): 0x81202000, (1, 0, 3): 0x078BFBFF,
    (7, 0, 1): 0x01800002, (7, 0, 2): 0x00000104, (7, 0, 3): 0x20000000,
    (7, 1, 0): 0x00000000,
    (0xD, 1, 0): 0x00000000,
    (0x8000_0001, 0, 2): 0x00400393, (0x8000_0001, 0, 3): 0x23D3FBFF,
}
#: The host CPUID those numbers came from (to tell filtered from forced bits).
PVM_FILTER_HOST: Final[dict[tuple[int, int, int], int]] = {
    (1, 0, 2): 0xFFFA3203, (1, 0, 3): 0x178BFBFF,
    (7, 0, 1): 0xF1BF07AB, (7, 0, 2): 0x00405FC6, (7, 0, 3): 0x00000110,
    (7, 1, 0): 0x00000030,
    (0xD, 1, 0): 0x0000000F,
    (0x8000_0001, 0, 2): 0x004003F3, (0x8000_0001, 0, 3): 0x2FD3FBFF,
}


@dataclass(frozen=True)
class KvmCaps:
    flavor: str
    host_xcr0: int
    host_xss: int
    supported_xcr0: int
    supported_xss: int
    d1_eax: int            # CPUID.(0DH,1).EAX KVM can offer
    mpx: bool
    xfd: bool
    shstk: bool
    ibt: bool
    xsaves: bool
    pku: bool
    ops: Flavor            # the vendor module's choices (kvmfpu.kvm.flavors)


def kvm_caps(host: HostModel, kernel: KernelProfile, cfg: FpuConfig, name: str) -> KvmCaps:
    ops = flavor(name)
    supported = xf.FP | xf.SSE | xf.YMM | xf.MPX | xf.AVX512 | xf.PKRU
    if kernel.has("amx"):
        supported |= xf.XTILE
    xcr0 = cfg.xcr0 & supported
    mpx = bool(xcr0 & xf.MPX == xf.MPX) and host.has("mpx")
    if not ops.mpx or not mpx:
        xcr0 &= ~xf.MPX
        mpx = False
    xsaves = cfg.uses_xsaves and ops.xsaves
    d1 = host.cpuid(0xD, 1)[0] & (D1_XSAVEOPT | D1_XSAVEC | D1_XGETBV1 | D1_XSAVES)
    if not xsaves:
        d1 &= ~D1_XSAVES
    xfd = kernel.has("amx") and host.has("xfd") and bool(xcr0 & xf.XTILEDATA)
    if xfd:
        d1 |= D1_XFD
    shstk = ibt = False
    xss = 0
    if kernel.has("cet") and xsaves and ops.cet:
        shstk = host.has("shstk")
        ibt = host.has("ibt") and ops.ibt
        xss = cfg.xss & xf.CET
        if not (shstk or ibt) or xss != xf.CET:
            xss, shstk, ibt = 0, False, False
    if ops.measured_cpuid_filter:
        d1 &= PVM_FILTER[(0xD, 1, 0)]
    return KvmCaps(ops.name, cfg.xcr0, cfg.xss, xcr0, xss, d1, mpx, xfd, shstk, ibt, xsaves,
                   host.has("pku") and ops.pku, ops)
