"""A port of kvm-unit-tests x86/xsave.c (test_no_xsave, test_xsave, test_write_xcr0,
test_unsupported_xcrs) to the emulated core, run on every packaged host.

Not ported: test_avx_vmovdqa (VMOVDQA/VMOVNTDQA data movement through YMM registers),
which tests instruction emulation rather than XSAVE state management.
"""

from __future__ import annotations

import pytest

from kvmfpu import cpus
from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import Cpu, GeneralProtection, InvalidOpcode

XSAVE_HOSTS = [n for n in cpus.names() if cpus.load(n).has("xsave")]
NO_XSAVE_HOSTS = [n for n in cpus.names() if not cpus.load(n).has("xsave")]


def fresh(host: str) -> Cpu:
    return Cpu(host, bytearray(4096))


@pytest.mark.parametrize("host", XSAVE_HOSTS + NO_XSAVE_HOSTS)
def test_kvm_unit_tests_xsave__test_no_xsave(host: str) -> None:
    cpu = fresh(host)
    cpu.cr4_osxsave = False
    assert not cpu.cpuid(1)[2] >> 27 & 1, "CPUID.1.ECX.OSXSAVE - expect 0"
    with pytest.raises(InvalidOpcode):
        cpu.xgetbv(0)      # Read XCR0 without OSXSAVE enabled - expect #UD
    with pytest.raises(InvalidOpcode):
        cpu.xsetbv(0, xf.FPSSE)


@pytest.mark.parametrize("host", NO_XSAVE_HOSTS)
def test_kvm_unit_tests_xsave__set_osxsave_without_xsave_gp(host: str) -> None:
    with pytest.raises(GeneralProtection):
        fresh(host).cr4_osxsave = True


def write_xcr0(cpu: Cpu, val: int) -> None:
    """test_write_xcr0: RCX[63:32] are ignored by XSETBV and XGETBV."""
    alias = 0x1234_5678 << 32
    cpu.xsetbv(alias, val)
    assert cpu.xgetbv(alias) == val
    assert cpu.xgetbv(0) == val
    cpu.xsetbv(0, val)
    assert cpu.xgetbv(0) == val


@pytest.mark.parametrize("host", XSAVE_HOSTS)
def test_kvm_unit_tests_xsave__test_xsave(host: str) -> None:
    cpu = fresh(host)
    supported = cpu.host.supported_xcr0
    assert supported & xf.FPSSE == xf.FPSSE, "FP and SSE should always be supported in XCR0"
    cpu.cr4_osxsave = True
    assert cpu.cpuid(1)[2] >> 27 & 1, "Check CPUID.1.ECX.OSXSAVE - expect 1"
    write_xcr0(cpu, xf.FP)
    write_xcr0(cpu, xf.FPSSE)
    if supported & xf.YMM:
        write_xcr0(cpu, xf.FPSSE | xf.YMM)
    for bad in (0, xf.SSE) + ((xf.YMM, xf.FP | xf.YMM) if supported & xf.YMM else ()):
        with pytest.raises(GeneralProtection):
            cpu.xsetbv(0, bad)
    cpu.cr4_osxsave = False
    assert not cpu.cpuid(1)[2] >> 27 & 1, "CPUID.1.ECX.OSXSAVE == CR4.OSXSAVE"


@pytest.mark.parametrize("host", XSAVE_HOSTS)
def test_kvm_unit_tests_xsave__test_unsupported_xcrs(host: str) -> None:
    cpu = fresh(host)
    cpu.cr4_osxsave = True
    cpu.xsetbv(0, xf.FPSSE)
    for i in range(1, 64):
        if i != 1:   # XGETBV(1) returns XCR0 & XINUSE on some CPUs
            with pytest.raises(GeneralProtection):
                cpu.xgetbv(i)
        for val in (xf.FP, xf.FPSSE):
            with pytest.raises(GeneralProtection):
                cpu.xsetbv(i, val)
        if i > 31:
            continue   # RCX[63:32] are ignored: BIT(i) would name XCR0
        with pytest.raises(GeneralProtection):
            cpu.xgetbv(1 << i)
        for val in (xf.FP, xf.FPSSE):
            with pytest.raises(GeneralProtection):
                cpu.xsetbv(1 << i, val)
    assert cpu.xgetbv(0) == xf.FPSSE


@pytest.mark.parametrize("host", XSAVE_HOSTS)
def test_kvm_unit_tests_xsave__xgetbv1_follows_cpuid(host: str) -> None:
    cpu = fresh(host)
    cpu.cr4_osxsave = True
    if cpu.host.has("xgetbv1"):
        assert cpu.xgetbv(1) == cpu.xgetbv(0) & cpu.xinuse
    else:
        with pytest.raises(GeneralProtection):
            cpu.xgetbv(1)
