"""What the pytest plugin promises, run in pytester sessions as a user's suite runs it:
wrong arguments are one usage error, kernels older than a host are skips, and the real
backend's missing guest() is a clear error (and a skip under guest=True)."""

from __future__ import annotations

import importlib.metadata
import os

import pytest

from kvmfpu.kvm import Vcpu
from kvmfpu.kvm.profiles import NAMED
from kvmfpu.kvm.system import Kvm
from kvmfpu.kvm.vm import Vm
from kvmfpu.real import GuestUnavailable, RealKvm, RealVcpu, RealVm
from kvmfpu.testing.vcpus import SharedKvm, SharedVcpu, SharedVm, predates_host

#: Installed, the entry point loads the plugin; from the source tree, -p does (as in
#: test_pytest_plugin.py).
LOAD = (
    []
    if any(
        ep.group == "pytest11" and ep.name == "kvmfpu"
        for dist in importlib.metadata.distributions()
        for ep in dist.entry_points
    )
    else ["-p", "kvmfpu.testing.pytest_plugin"]
)
USAGE_ERROR = int(pytest.ExitCode.USAGE_ERROR)


def _usage_error(result: pytest.RunResult, *needles: str) -> str:
    """The run stopped before any test with exactly one kvmfpu usage error line."""
    assert result.ret == USAGE_ERROR, result.stdout.str() + result.stderr.str()
    lines = [ln for ln in result.stderr.lines if ln.startswith("ERROR: kvmfpu")]
    assert len(lines) == 1, result.stderr.str()
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "passed" not in result.stdout.str() and " error" not in result.stdout.str()
    return lines[0]


def test_misspelled_marker_argument_is_one_usage_error(pytester: pytest.Pytester) -> None:
    # Three tests carry the typo: still one error, naming each test and the right spelling.
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvmfpu(host=["zen4"])
        def test_a(kvmfpu_model):
            pass

        @pytest.mark.kvmfpu(kernel=["6.6"])
        @pytest.mark.parametrize("n", [1, 2])
        def test_b(kvmfpu_vcpu, n):
            pass

        def test_unmarked(kvmfpu_model):
            pass
    """)
    line = _usage_error(
        pytester.runpytest(*LOAD), "did you mean 'hosts'?", "did you mean 'kernels'?", "test_a", "test_b"
    )
    assert line.count("test_b") == 1  # one entry per test function, not per param


@pytest.mark.parametrize(
    ("marker", "needle"),
    [
        ('hosts=["zen4", "nosuch"]', "unknown host 'nosuch'"),
        ('kernels=["6.x"]', "'6.x' is not a kernel version"),
        ('hosts="zen4"', "hosts must be a list of strings"),
        ("kernels=[]", "kernels is empty"),
        ('flavor="kvm"', "flavor 'kvm' is not one of vmx, svm, pvm"),
        ('"zen4"', "positional arguments"),
        ('guest="yes"', "guest must be True or False"),
    ],
)
def test_bad_marker_values_are_one_usage_error(pytester: pytest.Pytester, marker: str, needle: str) -> None:
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.kvmfpu({marker})
        def test_a(kvmfpu_model):
            pass

        @pytest.mark.kvmfpu({marker})
        def test_b(kvmfpu_model):
            pass
    """)
    _usage_error(pytester.runpytest(*LOAD), needle, "test_a", "test_b")


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--kvmfpu-hosts", "skylake-sp,nosuch", "--kvmfpu-hosts 'nosuch': unknown host"),
        ("--kvmfpu-kernels", "6.6,banana", "--kvmfpu-kernels 'banana'"),
        ("--kvmfpu-kernels", ",", "--kvmfpu-kernels: empty list"),
    ],
)
def test_bad_option_is_one_usage_error(
    pytester: pytest.Pytester, option: str, value: str, needle: str
) -> None:
    pytester.makepyfile("""
        def test_a(kvmfpu_model):
            pass

        def test_b(kvmfpu_vcpu):
            pass
    """)
    _usage_error(pytester.runpytest(*LOAD, option, value), needle)


def test_kernel_older_than_the_host_is_a_skip(pytester: pytest.Pytester) -> None:
    # Sapphire Rapids enumerates AMX; KVM offers XTILECFG|XTILEDATA from 5.17 (86aff7a47992,
    # the "amx" switch in kvmfpu/kvm/profiles.py): 5.15 predates the host. 6.6 has both and
    # the guest permission filter (55cd57b596e8, 6.4), so the selftests' vCPU is made.
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvmfpu(hosts=["sapphirerapids"], kernels=["5.15", "6.6"])
        def test_vcpu(kvmfpu_vcpu):
            assert kvmfpu_vcpu.get_xcrs()
    """)
    result = pytester.runpytest(*LOAD, "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*kernel 5.15 predates host sapphirerapids*xtilecfg|xtiledata*from 5.17*"])


def test_selftest_setup_refused_by_the_kernel_is_a_skip(pytester: pytest.Pytester) -> None:
    # 5.17 offers XTILECFG without XTILEDATA before ARCH_REQ_XCOMP_GUEST_PERM (fixed by
    # 55cd57b596e8 in 6.4), so __kvm_set_xcr refuses the selftests' XCR0 (86aff7a47992's
    # XTILE pair check): the real kernel fails the same set-up, which is a skip with why.
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvmfpu(hosts=["sapphirerapids"], kernels=["5.17"])
        def test_vcpu(kvmfpu_vcpu):
            raise AssertionError("must not run")

        @pytest.mark.kvmfpu(hosts=["sapphirerapids"], kernels=["5.17"])
        def test_model(kvmfpu_model):
            assert kvmfpu_model.kernel.name == "5.17"
    """)
    result = pytester.runpytest(*LOAD, "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["*vm_create_with_one_vcpu fails as on the real kernel*XTILECFG and XTILEDATA must be set together*"]
    )


def test_flavour_of_the_other_vendor_is_a_skip(pytester: pytest.Pytester) -> None:
    # SVM does not run on Intel (kvm_amd refuses to load): the Intel host of the list skips.
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvmfpu(hosts=["zen4", "skylake-sp"], flavor="svm")
        def test_it(kvmfpu_model):
            assert kvmfpu_model.flavor == "svm"
    """)
    result = pytester.runpytest(*LOAD, "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*skylake-sp*svm does not run on a GenuineIntel host*"])


def test_guest_marker_runs_backend_tests_on_the_model_only(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.kvmfpu(guest=True)
        def test_guest(kvmfpu_backend):
            vcpu = kvmfpu_backend.create_vm().create_vcpu(0)
            vcpu.set_cpuid2(kvmfpu_backend.get_supported_cpuid())
            vcpu.set_sregs(cr4_osxsave=True)
            with vcpu.guest() as g:
                assert g.xgetbv(0) & 1
    """)
    result = pytester.runpytest(*LOAD, "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*the real backend runs no guest code*"])


def _members(protocol: type) -> list[str]:
    return [n for n in vars(protocol) if not n.startswith("_")]


@pytest.mark.parametrize(
    ("protocol", "model", "real"),
    [(SharedVcpu, Vcpu, RealVcpu), (SharedVm, Vm, RealVm), (SharedKvm, Kvm, RealKvm)],
)
def test_shared_interface_is_on_both_backends(protocol: type, model: type, real: type) -> None:
    members = _members(protocol)
    assert len(members) >= 6
    for name in members:
        assert callable(getattr(model, name, None)), f"{model.__name__}.{name}"
        assert callable(getattr(real, name, None)), f"{real.__name__}.{name}"
    assert "guest" not in members


def test_model_objects_satisfy_the_shared_interface() -> None:
    kvm = Kvm("skylake-sp")
    vm = kvm.create_vm()
    assert isinstance(kvm, SharedKvm)
    assert isinstance(vm, SharedVm)
    assert isinstance(vm.create_vcpu(0), SharedVcpu)


@pytest.fixture
def real_vcpu() -> RealVcpu:
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm")
    from kvmfpu.real import open_kvm

    return open_kvm().create_vm().create_vcpu(0)


def test_real_vcpu_has_no_guest_and_says_why(real_vcpu: RealVcpu) -> None:
    # What this machine's kvm_pvm did (6.18.44): KVM_RUN of a real-mode vCPU exits with
    # KVM_EXIT_INTERNAL_ERROR; the kit runs no guest code on the device anywhere.
    assert isinstance(real_vcpu, SharedVcpu)
    assert not hasattr(real_vcpu, "guest")
    with pytest.raises(GuestUnavailable, match=r"runs no guest code.*guest=True"):
        real_vcpu.guest()  # type: ignore[operator]
    with pytest.raises(AttributeError):
        real_vcpu.guest  # noqa: B018


def test_real_kvm_describes_the_running_system(real_vcpu: RealVcpu) -> None:
    kvm = real_vcpu.kvm
    release = os.uname().release
    assert release.startswith(kvm.kernel.name + "-") or release == kvm.kernel.name
    assert kvm.host.cpuid(0, 0) != (0, 0, 0, 0)  # this machine's CPUID was read


@pytest.mark.parametrize("host", ["sapphirerapids", "emeraldrapids", "graniterapids"])
def test_amx_hosts_predate_5_17(host: str) -> None:
    # Their CPUID enumerates AMX (cpus/data/*.json); KVM gains XTILE in 5.17 (86aff7a47992).
    assert "from 5.17" in (predates_host(host, "5.15") or "")
    assert predates_host(host, "5.17") is None
    assert predates_host(host, "5.16.10") is not None


@pytest.mark.parametrize("kernel", NAMED)
def test_hosts_without_late_features_meet_every_named_kernel(kernel: str) -> None:
    # Nothing in these hosts' user xstate (x87..AVX-512, PKRU) needs a KVM newer than 5.15.
    for host in ("haswell", "skylake-sp", "icelake-sp", "zen4", "zen5", "sapphirerapids-noamx"):
        assert predates_host(host, kernel) is None, (host, kernel)
