"""Seed 000: the ACRN XSAVES/XRSTORS sequence under different IA32_XSS, on the core."""

from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import GeneralProtection
from kvmfpu.scenarios import acrn_xss


def test_buggy_sequence_raises_gp_naming_the_xss_bit() -> None:
    trace = acrn_xss.run(fixed=False)
    fault = trace.fault
    assert isinstance(fault, GeneralProtection) and fault.vector == 13
    assert fault.mnemonic.startswith("XRSTORS")
    assert "XCOMP_BV sets 0x100 (pt) not in XCR0|IA32_XSS" in fault.reason
    saved = trace.steps[1]
    assert saved.xss == xf.PT and saved.xcomp_bv is not None and saved.xcomp_bv & xf.PT
    assert trace.steps[2].xss == 0


def test_fixed_sequence_restores_without_fault() -> None:
    trace = acrn_xss.run(fixed=True)
    assert trace.fault is None
    assert all(s.fault is None for s in trace.steps)
    assert trace.steps[1].xcomp_bv is not None and not trace.steps[1].xcomp_bv & xf.PT


def test_any_host_with_supervisor_state_reproduces() -> None:
    # Hypervisor-agnostic and host-agnostic: CET on Sapphire Rapids, PT on Skylake-SP.
    for host in ("sapphirerapids", "skylake-sp", "zen4"):
        assert isinstance(acrn_xss.run(fixed=False, host=host).fault, GeneralProtection)
        assert acrn_xss.run(fixed=True, host=host).fault is None
