"""Model vCPUs set up the way a VMM sets one up before its guest runs."""

from __future__ import annotations

import os

from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm import Kvm
from kvmfpu.kvm.profiles import NEWEST
from kvmfpu.kvm.vcpu import Vcpu


def ready_vcpu(host: HostModel | str | os.PathLike[str], kernel: str = NEWEST,
               flavor: str | None = None, *, pke: bool = False) -> Vcpu:
    """A vCPU with KVM_GET_SUPPORTED_CPUID as its CPUID, CR4.OSXSAVE (and CR4.PKE with
    ``pke``) set, and XCR0 = everything that CPUID lets the guest enable."""
    kvm = Kvm(host, kernel, flavor)
    v = kvm.create_vm().create_vcpu()
    v.set_cpuid2(kvm.get_supported_cpuid())
    v.set_sregs(cr4_osxsave=True, cr4_pke=pke)
    v.set_xcrs([(0, v.gsx)])
    return v
