"""The model against this machine's real KVM: hypothesis draws sequences of CPUID settings
(full, trimmed, XSAVE-less, empty), KVM_SET_XSAVE buffers (valid, near-valid, garbage),
KVM_SET_XCRS values, MSR writes, INIT and MP-state changes, in any order; both backends run
them and must return the same errnos and byte-identical KVM_GET_XSAVE/KVM_GET_XSAVE2/
KVM_GET_XCRS/KVM_GET_MSRS output.

KVM_GET_CPUID2 is compared on CPUID.(0xD,0) only: kvm_pvm rewrites leaves 7 and the other
0xD subleaves at KVM_SET_CPUID2 in ways kvmfpu does not reproduce (kvmfpu/kvm/pvm.py).
KVM_GET_SUPPORTED_CPUID is compared whole, row for row (test_supported_cpuid_whole_table).

KVMFPU_DIFF_EXAMPLES sets the number of sequences (default 2000).
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmfpu.core import msrs as msr
from kvmfpu.testing import strategies as ks
from kvmfpu.testing.sequences import Op, differences, run

EXAMPLES = int(os.environ.get("KVMFPU_DIFF_EXAMPLES", "2000"))
MSRS = (msr.IA32_XSS, msr.IA32_XFD, msr.IA32_XFD_ERR)


def op_strategy(supported: list[Any], host: Any) -> st.SearchStrategy[Op]:
    cpuid = ks.guest_cpuids(supported, host).map(lambda t: Op("cpuid", t))
    xsave = st.one_of(
        ks.valid_xsave(host).map(lambda b: Op("xsave", ("valid", bytes(b)))),
        ks.near_valid_xsave(host).map(lambda t: Op("xsave", (t[0], bytes(t[1])))),
        ks.garbage_xsave().map(lambda b: Op("xsave", ("garbage", b))))
    xcrs = ks.xcr0_values(host).map(lambda v: Op("xcrs", (v,)))
    msr_write = st.tuples(st.sampled_from(MSRS),
                          st.sampled_from([0, 1 << 18, 1 << 11, 1 << 12, 0x1800, 1 << 8, 1])
                          ).map(lambda t: Op("msr", t))
    init = st.just(Op("init"))
    mp = st.sampled_from([0, 1, 2, 3, 4, 42]).map(lambda v: Op("mp_state", (v,)))
    osxsave = st.booleans().map(lambda b: Op("osxsave", (b,)))
    return st.one_of(cpuid, xsave, xsave, xcrs, xcrs, msr_write, init, mp, osxsave)


def test_model_matches_real_kvm(backends: tuple[Any, Any]) -> None:
    real, model = backends
    supported = real.get_supported_cpuid()
    host = model.host
    count = {"sequences": 0, "ops": 0}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(op_strategy(supported, host), min_size=1, max_size=10))
    def check(ops: list[Op]) -> None:
        got_real = run(real, ops)
        got_model = run(model, ops)
        diff = differences(got_real, got_model, host)
        assert not diff, "real vs model after " + " ; ".join(map(repr, ops)) + \
            "\n  " + "\n  ".join(diff)
        count["sequences"] += 1
        count["ops"] += len(ops)

    check()
    assert count["sequences"] >= EXAMPLES * 0.9
    print(f"\ndifferential: {count['sequences']} sequences, {count['ops']} ops, all equal")


def test_supported_cpuid_whole_table(backends: tuple[Any, Any]) -> None:
    """Every row of KVM_GET_SUPPORTED_CPUID (function, index, flags, EAX..EDX, order) of the
    model equals the real one. Pinned to one CPU, with the host CPUID captured there: KVM
    reports the APIC IDs of the CPU the ioctl ran on (leaf 1 EBX[31:24], 0xB.0 EDX)."""
    from kvmfpu.cpus.model import HostModel
    from kvmfpu.kvm.system import Kvm
    from kvmfpu.native.differential import supported_cpuid_differences
    from kvmfpu.native.hostcpuid import capture

    real, model = backends
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        host = HostModel(capture(), name="this-host-pinned")
        got = real.get_supported_cpuid()
    finally:
        os.sched_setaffinity(0, before)
    want = Kvm(host, model.kernel, model.flavor).get_supported_cpuid()
    diff = supported_cpuid_differences(got, want)
    assert not diff, "\n".join(diff)
    print(f"\nKVM_GET_SUPPORTED_CPUID: {len(got)} rows, all equal")
