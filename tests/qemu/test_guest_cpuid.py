"""QEMU's guest CPUID for a model on a host: filtering, leaf 0xD, AMX permission."""

from __future__ import annotations

from kvmfpu.arch import xfeatures as xf
from kvmfpu.kvm.system import Kvm
from kvmfpu.qemu import guest_cpuid
from kvmfpu.qemu.models import resolve


def leaf(cpu: guest_cpuid.QemuCpu, fn: int, idx: int = 0) -> tuple[int, int, int, int]:
    e = next(e for e in cpu.entries if (e.function, e.index) == (fn, idx))
    return e.eax, e.ebx, e.ecx, e.edx


def test_model_on_a_host_that_has_everything() -> None:
    kvm = Kvm("skylake-sp", "6.6")
    cpu = guest_cpuid.build(kvm, resolve("Skylake-Server-v5"))
    # Everything but spec-ctrl (Skylake-Server-v2's IBRS): libvirt's Xeon-Gold-6148 dump was
    # taken before the Spectre microcode, leaf 7 EDX[26] = 0, so QEMU filters it there. The
    # bits QEMU adds itself (hypervisor, tsc-deadline) are not filtered (kvm_arch_get_supported_cpuid).
    assert cpu.filtered == ["spec-ctrl (CPUID[eax=7h,ecx=0h].EDX[26])"]
    assert not kvm.host.cpuid(7, 0)[3] >> 26 & 1
    assert not guest_cpuid.build(kvm, resolve("Skylake-Server-v5,-spec-ctrl")).filtered
    assert cpu.xcr0 == 0x2E7
    eax, ebx, ecx, _ = leaf(cpu, 0xD, 0)
    assert (eax, ebx, ecx) == (0x2E7, 0xA88, 0xA88)       # Skylake-SP standard size
    assert leaf(cpu, 0xD, 9)[:2] == (8, 0xA80)             # the host's PKRU offset
    assert leaf(cpu, 0xD, 1)[0] == 0xF                     # xsaveopt|xsavec|xgetbv1|xsaves
    assert leaf(cpu, 7)[2] >> 3 & 1                        # pku


def test_missing_features_are_filtered_with_a_warning() -> None:
    kvm = Kvm("zen1", "6.6")
    cpu = guest_cpuid.build(kvm, resolve("EPYC-Milan"))
    assert not cpu.runs_with_enforce
    assert any(f.startswith("pku (CPUID[eax=7h,ecx=0h].ECX[3])") for f in cpu.filtered)
    assert cpu.xcr0 == 0x7 and not leaf(cpu, 7)[2] >> 3 & 1
    assert not leaf(cpu, 0xD, 0)[0] & xf.PKRU


def test_no_xsave_model_has_no_leaf_d() -> None:
    cpu = guest_cpuid.build(Kvm("skylake-sp", "6.6"), resolve("Nehalem"))
    assert cpu.xcr0 == 0 and not any(e.function == 0xD for e in cpu.entries)
    assert not leaf(cpu, 1)[2] >> 26 & 1


def test_amx_permission_requested_at_realize() -> None:
    kvm = Kvm("sapphirerapids", "6.6")
    cpu = guest_cpuid.build(kvm, resolve("SapphireRapids"))
    assert cpu.perm_requested and cpu.perm_error is None
    assert cpu.xcr0 & xf.XTILE == xf.XTILE
    vcpu = kvm.create_vm().create_vcpu()
    vcpu.set_cpuid2(cpu.entries)
    assert vcpu.gfpu.uabi_size == 11008


def test_without_permission_the_cpuid_still_names_amx() -> None:
    """KVM_X86_XCOMP_GUEST_SUPP is not limited by permission: QEMU keeps XTILEDATA."""
    kvm = Kvm("sapphirerapids", "6.6")
    cpu = guest_cpuid.build(kvm, resolve("SapphireRapids"), ask_perm=False)
    assert cpu.xcr0 & xf.XTILEDATA and not cpu.perm_requested


def test_cet_model_gets_xss_where_kvm_supports_it() -> None:
    cpu = guest_cpuid.build(Kvm("sapphirerapids", "6.18"), resolve("SapphireRapids-v5"))
    assert cpu.xss == xf.CET and leaf(cpu, 0xD, 1)[2] == xf.CET
    old = guest_cpuid.build(Kvm("sapphirerapids", "6.12"), resolve("SapphireRapids-v5"))
    assert old.xss == 0 and any("cet-ss" in f for f in old.filtered)


def test_host_passthrough_takes_what_kvm_offers() -> None:
    kvm = Kvm("zen4", "6.6")
    cpu = guest_cpuid.build(kvm, resolve("host"))
    assert cpu.xcr0 == kvm.caps.supported_xcr0 and not cpu.filtered
