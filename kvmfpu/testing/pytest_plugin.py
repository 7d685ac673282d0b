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
``skylake-sp`` and the newest profile.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

DEFAULT_HOSTS = "skylake-sp"
MARKER = "kvmfpu(hosts=None, kernels=None, flavor=None): the host models and kernel versions " \
         "the kvmfpu_model/kvmfpu_vcpu fixtures run the test on"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvmfpu")
    group.addoption("--kvmfpu-hosts", default=None,
                    help=f"host models for kvmfpu_model (comma-separated; default {DEFAULT_HOSTS})")
    group.addoption("--kvmfpu-kernels", default=None,
                    help="kernel versions for kvmfpu_model (comma-separated; default newest)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    names = metafunc.fixturenames
    if "kvmfpu_model" in names or "kvmfpu_vcpu" in names:
        from kvmfpu.kvm.profiles import NEWEST

        mark = metafunc.definition.get_closest_marker("kvmfpu")
        kw = mark.kwargs if mark else {}
        opt = metafunc.config.getoption
        hosts = kw.get("hosts") or _split(opt("--kvmfpu-hosts")) or [DEFAULT_HOSTS]
        kernels = kw.get("kernels") or _split(opt("--kvmfpu-kernels")) or [NEWEST]
        flavor = kw.get("flavor")
        combos = [(h, k, flavor) for h in hosts for k in kernels]
        metafunc.parametrize("kvmfpu_target", combos, indirect=True,
                             ids=[f"{h}-{k}" for h, k, _ in combos])
    if "kvmfpu_backend" in names:
        metafunc.parametrize("kvmfpu_backend", ["model", "real"], indirect=True)


@pytest.fixture
def kvmfpu_target(request: pytest.FixtureRequest) -> tuple[str, str, str | None]:
    value: tuple[str, str, str | None] = request.param
    return value


@pytest.fixture
def kvmfpu_model(kvmfpu_target: tuple[str, str, str | None]) -> Any:
    from kvmfpu import Kvm

    host, kernel, flavor = kvmfpu_target
    return Kvm(host, kernel, flavor)


def _selftest_vcpu(kvm: Any) -> Any:
    from kvmfpu.testing.selftest import vm_create_with_one_vcpu
    return vm_create_with_one_vcpu(kvm)


@pytest.fixture
def kvmfpu_vcpu(kvmfpu_model: Any) -> Any:
    return _selftest_vcpu(kvmfpu_model)


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
