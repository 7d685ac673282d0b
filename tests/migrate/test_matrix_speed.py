"""What the matrix shares between cells changes no verdict: the caches (QEMU's supported
features and guest CPUID per modelled /dev/kvm, the register comparison per pair of
buffers) give exactly what the checks compute without them, a reused destination /dev/kvm
gives what a fresh one gives, and --jobs N gives the document --jobs 1 gives."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvmfpu import cpus
from kvmfpu.cli.document import document
from kvmfpu.kvm.system import Kvm
from kvmfpu.migrate import check as check_mod
from kvmfpu.migrate import matrix_views
from kvmfpu.migrate.check import endpoint, guest_at, run_destination, run_source, vmm_of
from kvmfpu.migrate.matrix import Pool, compute, load_hosts
from kvmfpu.qemu import guest_cpuid, host_cpu

#: A sample across vendors, XSAVE generations (none, AVX-512, AMX) and kernels before and
#: after the 5.17 fpu_guest rework (tests/migrate/test_matrix.py's verdicts).
HOSTS = ["nehalem", "skylake-sp", "sapphirerapids", "zen1", "zen3", "zen4"]
KERNELS = ["5.15", "6.6", "5.15:6.6", "6.18"]
GUEST = "Skylake-Server-v5"


def _doc(m: Any) -> str:
    """The kvmfpu-matrix/1 document without its run time (the one field a run changes)."""
    body = matrix_views.to_json(m)
    body["seconds"] = 0
    return json.dumps(document(matrix_views.SCHEMA, body), indent=2)


class _Miss(dict):  # type: ignore[type-arg]
    """A cache that never answers (every lookup computed)."""

    def get(self, *_: object) -> None:  # type: ignore[override]
        return None


def test_cached_equals_uncached(monkeypatch: pytest.MonkeyPatch) -> None:
    cached = _doc(compute(GUEST, HOSTS, KERNELS))
    assert check_mod._DIFFS and guest_cpuid._BUILT  # the caches were used
    monkeypatch.setattr(host_cpu, "model_key", lambda kvm: None)
    monkeypatch.setattr(check_mod, "_DIFFS", _Miss())
    uncached = _doc(compute(GUEST, HOSTS, KERNELS))
    assert cached == uncached


def test_cache_key_follows_the_process_permission() -> None:
    """KVM_GET_SUPPORTED_CPUID's leaf 0xD follows the process's guest permission (5.17+,
    xstate_get_guest_group_perm): the key holds it, so a table read before the request is
    not the answer after it; each caller gets its own list."""
    from kvmfpu.kvm.system import ARCH_REQ_XCOMP_GUEST_PERM

    kvm = Kvm(cpus.load("sapphirerapids"), "6.6")
    model = guest_at("SapphireRapids", vmm_of("qemu"))
    before_key, before = host_cpu.model_key(kvm), kvm.get_supported_cpuid()
    first = guest_cpuid.build(kvm, model, ask_perm=False)
    kvm.arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, 18)
    assert host_cpu.model_key(kvm) != before_key and kvm.get_supported_cpuid() != before
    fresh = Kvm(cpus.load("sapphirerapids"), "6.6")
    assert host_cpu.model_key(fresh) == before_key
    again = guest_cpuid.build(fresh, model, ask_perm=False)
    assert again.entries == first.entries and again.entries is not first.entries
    assert host_cpu.model_key(object()) is None  # anything but the model: always asked


@pytest.mark.parametrize("guest", ["EPYC", "host", "SapphireRapids"])
def test_reused_destination_kvm_equals_a_fresh_one(guest: str) -> None:
    v = vmm_of("qemu")
    for src in ("zen4@6.6", "sapphirerapids@6.6", "skylake-sp@5.15"):
        run = run_source(endpoint(src), guest_at(guest, v), v)
        for dst in ("zen4", "sapphirerapids", "skylake-sp"):
            shared = Kvm(cpus.load(dst), "6.6")
            for _ in range(2):  # the second run on the reused /dev/kvm too
                reused = run_destination(run, endpoint(f"{dst}@6.6"), kvm=shared)
                fresh = run_destination(run, endpoint(f"{dst}@6.6"))
                assert reused.to_json() == fresh.to_json(), (src, dst)


def test_jobs_give_the_same_document() -> None:
    one = _doc(compute(GUEST, HOSTS, KERNELS, jobs=1))
    assert _doc(compute(GUEST, HOSTS, KERNELS, jobs=2)) == one
    # a pool kept across matrices (the catalog) too, and for a per-source guest
    models, _ = load_hosts(HOSTS)
    with Pool(models, 2) as pool:
        assert _doc(compute(GUEST, HOSTS, KERNELS, pool=pool)) == one
        per = compute("host-model", HOSTS, ["6.6"], pool=pool)
    assert _doc(per) == _doc(compute("host-model", HOSTS, ["6.6"], jobs=1))
