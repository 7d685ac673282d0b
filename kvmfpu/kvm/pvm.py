"""kvm_pvm's rewrite of the guest CPUID at KVM_SET_CPUID2, as measured on the development
machine (Linux 6.18.44 with kvm_pvm, AMD Zen 5).

PVM guests run at hardware CPL 3 without CPUID faulting, so a guest sees the processor's
own answers for the leaves it can read natively, whatever the VMM asked for; kvm_pvm makes
KVM's copy agree. Measured by setting each leaf to all zeros and all ones and reading
KVM_GET_CPUID2 back (result(0) | ~result(~0) gives the bits kvm_pvm decides):

- leaf 1: ECX bits 0x7ED81203 and EDX bits 0xB7EBFBFF come from the processor (so XSAVE is
  always on once leaf 1 is given); the VMM's other bits stay.
- leaf 0xD subleaf 0: EAX/EDX become KVM's supported XCR0 whenever the table has the leaf or
  has leaf 1 (which then adds it), so guest_supported_xcr0 is the host's whatever the VMM
  wrote there (a guest CPUID offering only FP/SSE still gets AVX-512 in XCR0, and
  KVM_GET_XSAVE does not mask it away).
- leaves 7 and the other 0xD subleaves are rewritten too, in ways that depend on the rest of
  the table; kvmfpu does not reproduce those values (their xstate effects are the XSAVE
  and XCR0 ones above), and its differential tests compare leaf 0xD.0 EAX/EDX only.

Generalising the masks to other hosts is an assumption: the kvm_pvm source for this build
is not public.
"""

from __future__ import annotations

from typing import Final

from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm.cpuid import CpuidEntry

#: Leaf 1 bits kvm_pvm takes from the processor (ECX, EDX).
LEAF1_FROM_CPU: Final = (0x7ED8_1203, 0xB7EB_FBFF)
OSXSAVE: Final = 1 << 27      # a runtime bit: follows the guest's CR4 (KVM_GET_CPUID2)


def fixed_cpuid(entries: tuple[CpuidEntry, ...], host: HostModel,
                supported_xcr0: int) -> tuple[CpuidEntry, ...]:
    """The table kvm_pvm keeps for ``entries`` (leaf 1 and leaf 0xD.0 as measured)."""
    cpu1 = host.cpuid(1, 0)
    ecx_mask, edx_mask = LEAF1_FROM_CPU
    out: list[CpuidEntry] = []
    has1 = any(e.function == 1 for e in entries)
    has_d0 = any((e.function, e.index) == (0xD, 0) for e in entries)
    for e in entries:
        if e.function == 1:
            e = e._replace(ecx=(e.ecx & ~ecx_mask) | (cpu1[2] & ecx_mask & ~OSXSAVE),
                           edx=(e.edx & ~edx_mask) | (cpu1[3] & edx_mask))
        elif (e.function, e.index) == (0xD, 0):
            e = e._replace(eax=supported_xcr0 & 0xFFFF_FFFF, edx=supported_xcr0 >> 32)
        out.append(e)
    if has1 and not has_d0:
        d0 = host.cpuid(0xD, 0)
        out.append(CpuidEntry(0xD, 0, 1, supported_xcr0 & 0xFFFF_FFFF, d0[1], d0[2],
                              supported_xcr0 >> 32))
    return tuple(out)
