"""The pytest plugin, run inside pytester sessions as a user's test suite would use it."""

from __future__ import annotations

import importlib.metadata

import pytest

PLUGIN = "kvmfpu.testing.pytest_plugin"


def _installed() -> bool:
    # Every distribution on the path, as pluggy loads them: a stale in-tree egg-info must
    # not hide the installed one (importlib.metadata.entry_points keeps the first by name).
    return any(ep.group == "pytest11" and ep.name == "kvmfpu"
               for dist in importlib.metadata.distributions() for ep in dist.entry_points)


#: Installed, the entry point loads the plugin; from the source tree, -p does.
LOAD = [] if _installed() else ["-p", PLUGIN]


def test_fixtures_parametrize_over_marker_hosts_and_kernels(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest
        from kvmfpu.arch import xfeatures as xf

        @pytest.mark.kvmfpu(hosts=["skylake-sp", "zen4"], kernels=["5.17", "6.6"])
        def test_xcr0(kvmfpu_vcpu):
            xcr0 = kvmfpu_vcpu.get_xcrs()[0][1]
            assert xcr0 & xf.YMM

        def test_default(kvmfpu_model):
            assert kvmfpu_model.host.name == "skylake-sp"
    """)
    result = pytester.runpytest(*LOAD, "-v")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*test_xcr0?skylake-sp-5.17?*PASSED*",
                                 "*test_xcr0?zen4-6.6?*PASSED*"])


def test_command_line_options(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_it(kvmfpu_model):
            assert kvmfpu_model.kernel.name in ("6.1", "6.12")
    """)
    result = pytester.runpytest(*LOAD, "--kvmfpu-hosts", "sapphirerapids,zen2",
                                "--kvmfpu-kernels", "6.1,6.12")
    result.assert_outcomes(passed=4)


def test_backend_fixture_runs_a_harness_on_both(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_xsave_round_trip(kvmfpu_backend):
            vm = kvmfpu_backend.create_vm()
            vcpu = vm.create_vcpu(0)
            blob = vcpu.get_xsave()
            vcpu.set_xsave(blob)
            assert vcpu.get_xsave() == blob
            vm.close()
    """)
    result = pytester.runpytest(*LOAD, "-rs")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 1              # the model side always runs
    assert outcomes.get("passed", 0) + outcomes.get("skipped", 0) == 2


def test_real_fixture_skips_cleanly_without_dev_kvm(pytester: pytest.Pytester,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile("""
        import os
        import pytest

        @pytest.fixture(scope="session", autouse=True)
        def no_kvm():                          # pretend /dev/kvm is not usable (restored after)
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(os, "access", lambda *a, **k: False)
                yield

        def test_real(kvmfpu_real_vcpu):
            raise AssertionError("must not run")
    """)
    result = pytester.runpytest(*LOAD, "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no usable /dev/kvm*"])


def test_entry_point_is_declared() -> None:
    names = {ep.value for dist in importlib.metadata.distributions() for ep in dist.entry_points
             if ep.group == "pytest11" and ep.name == "kvmfpu"}
    if not names:
        pytest.skip("kvmfpu is not installed (running from the source tree)")
    assert names == {PLUGIN}
