"""The host kernel's FPU layer: configuration, the save instruction and buffer format it
picks, and that host events between guest instructions preserve the guest's registers."""

from __future__ import annotations

import pytest

from kvmfpu import cpus
from kvmfpu.arch import xfeatures as xf
from kvmfpu.kvm import Kvm
from kvmfpu.kvm.profiles import profile
from kvmfpu.linux.config import fpu_config
from kvmfpu.linux.fpstate import INIT_PKRU_VALUE
from kvmfpu.linux.kernel import HostKernel


@pytest.mark.parametrize("host, kernel, insn, compacted", [
    ("sapphirerapids", "6.6", "xsaves", True),
    ("skylake-sp", "5.15", "xsaves", True),
    ("zen2", "6.1", "xsaves", True),
    ("zen2", "6.1.20", "xsavec", True),        # erratum, kernel XSAVEC (8ad7e8f69695, 6.1)
    ("zen2", "5.15.103", "xsaveopt", False),   # erratum, no kernel XSAVEC in 5.15
    ("zen2", "7.3", "xsavec", True),
    ("zen4", "6.12", "xsaves", True),
    ("nehalem", "6.6", "fxsave", False),
    ("sandybridge", "6.6", "xsaveopt", False),
])
def test_save_instruction_and_format(host: str, kernel: str, insn: str, compacted: bool) -> None:
    hk = HostKernel(cpus.load(host), profile(kernel))
    assert hk.save_insn == insn and hk.compacted == compacted


@pytest.mark.parametrize("host, kernel, xss", [
    ("sapphirerapids", "5.17", 0),                     # ENQCMD force-disabled until 5.18
    ("sapphirerapids", "6.1", xf.PASID),
    ("sapphirerapids", "6.6", xf.PASID | xf.CET_U),
    ("sapphirerapids", "6.18", xf.PASID | xf.CET),
    ("skylake-sp", "6.18", 0),          # PT is not a supervisor feature Linux manages
    ("zen4", "6.18", xf.CET),
    ("zen2", "6.1", 0),
])
def test_supervisor_features(host: str, kernel: str, xss: int) -> None:
    cfg = fpu_config(cpus.load(host), profile(kernel))
    assert cfg.xss == xss
    # CET_KERNEL is guest-only (6.18): in the guest default, not in the task default.
    assert not cfg.kernel_default & xf.CET_S
    assert cfg.guest_default & xf.CET_S == xss & xf.CET_S
    # KVM offers guests only the CET bits, and only as a pair (69cc3e886582).
    caps = Kvm(host, kernel).caps
    assert caps.supported_xss == (xf.CET if xss & xf.CET == xf.CET else 0)


def test_amx_is_dynamic_for_tasks() -> None:
    cfg = fpu_config(cpus.load("sapphirerapids"), profile("6.6"))
    assert cfg.user_max & xf.XTILE == xf.XTILE and not cfg.user_default & xf.XTILEDATA
    assert fpu_config(cpus.load("sapphirerapids"), profile("5.15")).user_max & xf.XTILE == 0


@pytest.mark.parametrize("event", ["kernel_fpu_begin", "preempt"])
@pytest.mark.parametrize("host, kernel", [("skylake-sp", "6.6"), ("zen2", "7.3"),
                                          ("sandybridge", "5.15"), ("sapphirerapids", "6.18")])
def test_host_events_between_guest_instructions_keep_guest_state(event: str, host: str,
                                                                 kernel: str) -> None:
    kvm = Kvm(host, kernel)
    v = kvm.create_vm().create_vcpu()
    v.set_cpuid2(kvm.get_supported_cpuid())
    v.set_sregs(cr4_osxsave=True)
    v.set_xcrs([(0, v.gsx)])
    with v.guest() as g:
        g.set_reg("xmm0", 0xABCD)
        g.set_reg("ymm5", 0x1234 << 200)
        g.set_reg("mxcsr", 0x1FA0)
        v.inject("irq_window", event)
        before = len(kvm.hk.log)
        g.xsetbv(0, v.gsx)                       # an exit: the event runs in its IRQ window
        # The registers went to the guest fpstate and came back at re-entry.
        saved, restored = kvm.hk.log[before], kvm.hk.log[-1]
        assert saved.startswith(kvm.hk.save_insn.upper()) and "<- fpstate" in restored
        assert g.reg("xmm0") == 0xABCD
        assert g.reg("ymm5") == 0x1234 << 200 and g.reg("mxcsr") == 0x1FA0


def test_tasks_carry_init_pkru_and_kvm_switches_the_guests() -> None:
    kvm = Kvm("skylake-sp", "6.6")
    v = kvm.create_vm().create_vcpu()
    v.set_cpuid2(kvm.get_supported_cpuid())
    v.set_sregs(cr4_osxsave=True, cr4_pke=True)
    v.set_xcrs([(0, v.gsx)])
    with v.guest() as g:
        assert g.reg("pkru") == 0                 # the guest's own (RESET) value
        g.set_reg("pkru", 0xC)
        g.xsetbv(0, v.gsx)                        # an exit and re-entry switch PKRU twice
        assert g.reg("pkru") == 0xC
    assert kvm.hk.cpu.reg("pkru") == INIT_PKRU_VALUE
    assert v.pkru == 0xC


def test_dynamic_thread_fpstate_arms_xfd() -> None:
    hk = HostKernel(cpus.load("sapphirerapids"), profile("6.6"))
    fps = hk.thread_fpstate()
    assert fps.xfd == xf.XTILEDATA and not fps.xfeatures & xf.XTILEDATA
    assert HostKernel(cpus.load("skylake-sp"), profile("6.6")).thread_fpstate().xfd == 0
