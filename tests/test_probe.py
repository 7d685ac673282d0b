"""kvmfpu.probe: the probes tell kernel versions apart on models, and on this machine's
/dev/kvm the chosen model agrees with every probe."""

from __future__ import annotations

import os

import pytest

from kvmfpu.kvm import Kvm
from kvmfpu.probe import PROBES, candidate_kernels, run_probes


def test_probes_tell_the_abi_changes_apart() -> None:
    a = run_probes(Kvm("skylake-sp", "5.17"))
    b = run_probes(Kvm("skylake-sp", "6.6"))
    c = run_probes(Kvm("skylake-sp", "5.15"))
    assert set(a) == set(PROBES)
    assert a["fpsse_empty_cpuid"] == "EINVAL" and b["fpsse_empty_cpuid"] is None
    assert a["xsave_beyond_cpuid"] == "EINVAL" and b["xsave_beyond_cpuid"] is None
    assert a["xcrs_before_cpuid"] is None and b["xcrs_before_cpuid"] == "EINVAL"
    assert b["get_masks"] == 0x3 and c["get_masks"] == 0x3
    assert a["pkru_bv9_clear"] == 0xC and b["pkru_bv9_clear"] == 0
    assert c["xsave2"] == "EINVAL" and b["xsave2"] == 4096
    assert c["sw_reserved"] == 0 and b["sw_reserved"] == Kvm("skylake-sp", "6.6").hk.cfg.user_max


def test_pvm_keeps_guest_xcr0_whatever_the_vmm_says() -> None:
    """kvm_pvm forces CPUID.(0xD,0) to the host's XCR0 (measured), so GET does not mask."""
    assert run_probes(Kvm("devhost-zen5", "6.18", "pvm"))["get_masks"] == 0x7
    assert run_probes(Kvm("zen5", "6.18", "svm"))["get_masks"] == 0x3


def test_candidates_include_the_running_release() -> None:
    assert candidate_kernels("6.18.44")[-1] == "6.18.44"
    assert "9.1.2" not in candidate_kernels("9.1.2")          # newer than kvmfpu knows
    assert candidate_kernels("6.6")[-1] == "7.3"               # already a named profile


def test_this_machine() -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm")
    from kvmfpu.probe import ProbeUnavailable, fingerprint
    try:
        fp = fingerprint()
    except ProbeUnavailable as exc:
        pytest.skip(str(exc))
    best = fp.best
    assert best.score == len(PROBES), best.disagree
    assert best.flavor == fp.flavor
    scores = [c.score for c in fp.candidates]
    assert scores == sorted(scores, reverse=True)
    assert min(scores) < len(PROBES)           # the probes do tell profiles apart here


def test_unknown_kernel_gets_the_nearest_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm")
    import platform

    from kvmfpu.kvm.profiles import NAMED
    from kvmfpu.probe import ProbeUnavailable, fingerprint
    monkeypatch.setattr(platform, "release", lambda: "9.4.1-future")
    try:
        fp = fingerprint()
    except ProbeUnavailable as exc:
        pytest.skip(str(exc))
    assert fp.release == "9.4.1"
    assert fp.best.kernel in NAMED                      # a known profile stands in
    assert next(c.kernel for c in fp.candidates if c.score == fp.best.score) == fp.best.kernel
    assert all(isinstance(d[0], str) for d in fp.best.disagree)
