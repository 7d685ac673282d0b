"""The model against this machine's processor, byte for byte and fault for fault."""

from __future__ import annotations

import pytest

from kvmfpu.native.xsave_probe import Op, probe_unavailable

reason = probe_unavailable()
pytestmark = [pytest.mark.realcpu,
              pytest.mark.skipif(reason is not None, reason=reason or "")]

CASES = 3000


@pytest.fixture(scope="module")
def env():  # type: ignore[no-untyped-def]
    from kvmfpu.native.hostcpuid import this_host
    from kvmfpu.native.xsave_probe import RealCpu
    real = RealCpu()
    xcr0 = real.run([Op("XGETBV", ecx=0)]).results[0]
    return this_host(), real, xcr0


def test_random_sequences_agree(env) -> None:  # type: ignore[no-untyped-def]
    from kvmfpu.native import differential
    host, real, xcr0 = env
    rep = differential.run(host, xcr0, CASES, seed=20261121, real=real)
    print(f"\n{rep.cases} cases: {rep.agreed} agree, {rep.faulting} faulting, "
          f"{rep.fault_extra_xinuse} with extra XINUSE bits at a fault, {rep.retried} re-runs; "
          f"by kind {rep.by_kind}")
    assert rep.by_kind.get("fault", 0) >= 500 and rep.by_kind.get("standard", 0) >= 500
    assert not rep.disagreements, "\n".join(
        f"{case.kind}: {diff}" for case, diff in rep.disagreements[:10])
    assert rep.retried <= CASES // 100


@pytest.mark.parametrize("which", ["misaligned", "std_header", "cmp_header", "mxcsr",
                                   "bv_outside", "cb_outside", "bv_not_in_cb", "cpl_xsaves",
                                   "cpl_xrstors", "cpl_xsetbv", "xgetbv_ecx", "fx_misaligned",
                                   "fx_mxcsr", "save_misaligned"])
def test_each_fault_kind_agrees(env, which: str) -> None:  # type: ignore[no-untyped-def]
    import random

    from kvmfpu.native import differential
    host, real, xcr0 = env
    gen = differential.Generator(host, xcr0, random.Random(which))
    for _ in range(25):
        case = gen.fault_case(which)
        model = differential.run_model(host, xcr0, case, gen.size)
        assert model.fault is not None, f"{which} did not fault in the model"
        for _attempt in range(3):
            real_out = differential.run_real(real, case, gen.size,
                                             differential.unheld_ranges(host, xcr0))
            diff = differential.differences(real_out, model, case)
            if not diff:
                break
        assert not diff, (which, diff, model.fault_reason)


def test_host_model_matches_the_machine(env) -> None:  # type: ignore[no-untyped-def]
    host, _, xcr0 = env
    assert xcr0 & ~host.supported_xcr0 == 0
    assert host.layout.standard_size(xcr0) == host.cpuid(0xD, 0)[1]
