"""pytest plugin (entry point ``kvmfpu`` in ``pytest11``): fixtures for model and real
vCPUs, a marker to choose hosts and kernels.

Fixtures:

- ``kvmfpu_model``: a ``kvmfpu.Kvm`` per (host, kernel) combination; the test runs once per
  combination (ids ``host-kernel``).
- ``kvmfpu_vcpu``: a vCPU of ``kvmfpu_model`` set up as the KVM selftests do (full
  supported CPUID, CR4.OSXSAVE, XCR0 = every supported feature).
- ``kvmfpu_real`` / ``kvmfpu_real_vcpu``: the same on this machine's /dev/kvm (skipped
  where it cannot be opened).
- ``kvmfpu_backend``: runs the test twice, on the model of this machine
  (``kvmfpu.model_of_running_host()``) and on the real device, for harnesses written once.

Choosing hosts and kernels: ``@pytest.mark.kvmfpu(hosts=[...], kernels=[...])`` on a test,
or ``--kvmfpu-hosts`` / ``--kvmfpu-kernels`` (comma-separated) for the whole run; defaults
``skylake-sp`` and the newest profile. A host/kernel pair where the kernel predates the
host's features is skipped with the reason. ``guest=True`` marks a test that runs guest
code: ``kvmfpu_backend`` skips its real side (the real backend has no ``guest()``; see
``kvmfpu.real.device.GuestUnavailable``).

A bad option value, an unknown host or kernel in the marker, or a misspelled marker
argument is one usage error for the run (at configure or at the end of collection), not
an ERROR in every test.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator
from typing import Any

import pytest

DEFAULT_HOSTS = "skylake-sp"
MARKER = ("kvmfpu(hosts=None, kernels=None, flavor=None, guest=False): the host models and "
          "kernel versions the kvmfpu_model/kvmfpu_vcpu fixtures run the test on; guest=True: "
          "the test runs guest code, so kvmfpu_backend runs it on the model only")
#: The marker's arguments (a misspelling is a usage error, not a silently ignored keyword).
MARKER_ARGS = ("hosts", "kernels", "flavor", "guest")
#: Where configure and collection leave the problems they found (one UsageError at the end
#: of collection lists them all).
_PROBLEMS = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvmfpu")
    group.addoption("--kvmfpu-hosts", default=None,
                    help=f"host models for kvmfpu_model (comma-separated; default {DEFAULT_HOSTS})")
    group.addoption("--kvmfpu-kernels", default=None,
                    help="kernel versions for kvmfpu_model (comma-separated; default newest)")


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _host_problem(host: str) -> str | None:
    from kvmfpu import cpus

    try:
        cpus.load(host)
    except cpus.UnknownHost as exc:
        return str(exc)
    return None


def _kernel_problem(kernel: str) -> str | None:
    from kvmfpu.kvm.profiles import UnknownKernel, profile

    try:
        profile(kernel)
    except UnknownKernel as exc:
        return str(exc)
    return None


def _names_problems(what: str, values: object, check: Any) -> list[str]:
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
        return [f"{what} must be a list of strings, not {values!r}"]
    if not values:
        return [f"{what} is empty (leave it out for the default)"]
    return [f"{what}: {p}" for p in map(check, values) if p]


def pytest_configure(config: pytest.Config) -> None:
    """Check --kvmfpu-hosts and --kvmfpu-kernels once: a bad value stops the run with one
    usage error instead of an ERROR in every test that uses the fixtures."""
    config.addinivalue_line("markers", MARKER)
    config.stash[_PROBLEMS] = []
    problems = []
    for option, check in (("--kvmfpu-hosts", _host_problem), ("--kvmfpu-kernels", _kernel_problem)):
        values = _split(config.getoption(option))
        if not values and config.getoption(option) is not None:
            problems.append(f"{option}: empty list")
        for value in values or ():
            found = check(value)
            if found:
                problems.append(f"{option} {value!r}: {found}")
    if problems:
        raise pytest.UsageError("kvmfpu: " + "; ".join(problems))


def _marker_problems(kw: dict[str, Any], args: tuple[Any, ...]) -> list[str]:
    """What is wrong with one @pytest.mark.kvmfpu(...)."""
    from kvmfpu.kvm.flavors import FLAVORS

    out = []
    if args:
        out.append(f"positional arguments {args!r} (use {', '.join(a + '=' for a in MARKER_ARGS)})")
    for key in kw:
        if key not in MARKER_ARGS:
            close = difflib.get_close_matches(key, MARKER_ARGS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            out.append(f"unknown argument {key!r}{hint}; it takes {', '.join(MARKER_ARGS)}")
    if kw.get("hosts") is not None:
        out += _names_problems("hosts", kw["hosts"], _host_problem)
    if kw.get("kernels") is not None:
        out += _names_problems("kernels", kw["kernels"], _kernel_problem)
    flavor = kw.get("flavor")
    if flavor is not None and flavor not in FLAVORS:
        out.append(f"flavor {flavor!r} is not one of {', '.join(FLAVORS)}")
    if not isinstance(kw.get("guest", False), bool):
        out.append(f"guest must be True or False, not {kw['guest']!r}")
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = metafunc.fixturenames
    mark = metafunc.definition.get_closest_marker("kvmfpu")
    kw = dict(mark.kwargs) if mark else {}
    if mark:
        found = _marker_problems(kw, mark.args)
        if found:
            # Reported once for the whole run at the end of collection; nothing to
            # parametrize from arguments that are wrong.
            where = metafunc.definition.nodeid
            metafunc.config.stash[_PROBLEMS] += [f"{where}: @pytest.mark.kvmfpu: {p}" for p in found]
            return
    if "kvmfpu_model" in names or "kvmfpu_vcpu" in names:
        from kvmfpu.kvm.profiles import NEWEST

        opt = metafunc.config.getoption
        hosts = kw.get("hosts") or _split(opt("--kvmfpu-hosts")) or [DEFAULT_HOSTS]
        kernels = kw.get("kernels") or _split(opt("--kvmfpu-kernels")) or [NEWEST]
        flavor = kw.get("flavor")
        combos = [(h, k, flavor) for h in hosts for k in kernels]
        metafunc.parametrize("kvmfpu_target", combos, indirect=True,
                             ids=[f"{h}-{k}" for h, k, _ in combos])
    if "kvmfpu_backend" in names:
        from kvmfpu.real.device import GUEST_UNAVAILABLE

        real: Any = "real"
        if kw.get("guest"):
            real = pytest.param("real", marks=pytest.mark.skip(reason=GUEST_UNAVAILABLE))
        metafunc.parametrize("kvmfpu_backend", ["model", real], indirect=True)


def pytest_collection_modifyitems(config: pytest.Config) -> None:
    problems = config.stash.get(_PROBLEMS, [])
    if problems:
        raise pytest.UsageError("kvmfpu: " + "; ".join(dict.fromkeys(problems)))


@pytest.fixture
def kvmfpu_target(request: pytest.FixtureRequest) -> tuple[str, str, str | None]:
    value: tuple[str, str, str | None] = request.param
    return value


@pytest.fixture
def kvmfpu_model(kvmfpu_target: tuple[str, str, str | None]) -> Any:
    """A Kvm for the (host, kernel, flavour); a kernel older than the host's features is
    a skip with the reason (kvmfpu.testing.vcpus.predates_host), not a setup error."""
    from kvmfpu import Kvm, cpus
    from kvmfpu.kvm.flavors import flavor as flavor_ops
    from kvmfpu.testing.vcpus import predates_host

    host, kernel, flavor = kvmfpu_target
    if flavor is not None and not flavor_ops(flavor).runs_on(model := cpus.load(host)):
        pytest.skip(f"{host} {kernel}: flavour {flavor} does not run on a {model.vendor} host")
    kvm = Kvm(host, kernel, flavor)
    why = predates_host(host, kernel, flavor)
    if why:
        pytest.skip(why)
    return kvm


def _selftest_vcpu(kvm: Any) -> Any:
    from kvmfpu.testing.selftest import vm_create_with_one_vcpu
    return vm_create_with_one_vcpu(kvm)


@pytest.fixture
def kvmfpu_vcpu(kvmfpu_model: Any) -> Any:
    """The selftests' vCPU; where their set-up fails on this host and kernel as it does on
    the real one (e.g. 5.17-6.3 offer XTILECFG without XTILEDATA before the guest
    permission, so XCR0 = supported is refused), a skip with the kernel's reason."""
    from kvmfpu.kvm.errors import KvmError

    try:
        return _selftest_vcpu(kvmfpu_model)
    except KvmError as exc:
        pytest.skip(f"{kvmfpu_model.host.name} {kvmfpu_model.kernel.name}: the selftests' "
                    f"vm_create_with_one_vcpu fails as on the real kernel: {exc}")


@pytest.fixture(scope="session")
def kvmfpu_real() -> Iterator[Any]:
    from kvmfpu.kvm.errors import KvmError
    from kvmfpu.real import open_kvm

    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm")
    try:
        kvm = open_kvm()
    except KvmError as exc:
        pytest.skip(f"/dev/kvm: {exc}")
    try:
        yield kvm
    finally:
        kvm.close()


@pytest.fixture
def kvmfpu_real_vcpu(kvmfpu_real: Any) -> Iterator[Any]:
    vcpu = _selftest_vcpu(kvmfpu_real)
    try:
        yield vcpu
    finally:
        vcpu.vm.close()


@pytest.fixture(scope="session")
def _kvmfpu_running_model() -> Any:
    """The model of this machine's KVM, or (without /dev/kvm) the default host model on
    the newest profile."""
    from kvmfpu import Kvm
    from kvmfpu.kvm.profiles import NEWEST
    from kvmfpu.probe import ProbeUnavailable, model_of_running_host

    try:
        return model_of_running_host()
    except ProbeUnavailable:
        return Kvm(DEFAULT_HOSTS, NEWEST)


@pytest.fixture
def kvmfpu_backend(request: pytest.FixtureRequest) -> Any:
    """The model of this machine, then the real /dev/kvm: the same test body on both."""
    if request.param == "model":
        return request.getfixturevalue("_kvmfpu_running_model")
    return request.getfixturevalue("kvmfpu_real")
