"""kvmfpu.testing.vcpus: a vCPU as a VMM leaves it before the guest runs."""

from __future__ import annotations

from kvmfpu.testing.vcpus import ready_vcpu


def test_ready_vcpu_enables_what_the_guest_cpuid_allows() -> None:
    v = ready_vcpu("skylake-sp", "6.6", pke=True)
    assert v.get_xcrs()[0][1] == v.gsx == 0x2FF           # MPX too: KVM still offers it
    with v.guest() as g:
        g.set_reg("pkru", 0xC)                           # WRPKRU needs CR4.PKE
    assert ready_vcpu("haswell", "5.15").get_xcrs()[0][1] == 0x7
