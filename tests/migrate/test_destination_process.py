"""A destination /dev/kvm reused across checks (the matrix and the audit build one per host
and kernel) behaves like a fresh destination VMM process each time: Linux keeps guest
xstate permissions per process and locks them once a vCPU exists (xstate_request_perm ->
-EBUSY, fpu_init_guest_permissions; 980fe2fddcff, 5.17), and every incoming migration is a
new QEMU process."""

from __future__ import annotations

from kvmfpu import cpus
from kvmfpu.kvm.system import Kvm
from kvmfpu.migrate.check import endpoint, guest_at, run_destination, run_source, vmm_of


def _findings(r: object) -> list[tuple[str, str, str]]:
    return [(f.level, f.stage, f.text) for f in r.findings]  # type: ignore[attr-defined]


def test_reused_destination_matches_a_fresh_one() -> None:
    v = vmm_of("qemu")
    dst = endpoint("sapphirerapids@6.8")
    shared = Kvm(cpus.load("sapphirerapids"), "6.8")
    # First a named model without AMX: the destination QEMU asks no permission, and its
    # vCPU locks the (shared) process's permissions.
    first = run_source(endpoint("zen4@6.8"), guest_at("EPYC-Genoa", v), v)
    run_destination(first, dst, kvm=shared)
    # Then a guest with AMX, whose destination QEMU asks ARCH_REQ_XCOMP_GUEST_PERM.
    amx = run_source(endpoint("sapphirerapids@6.8"), guest_at("host", v), v)
    assert "amx-tile" in amx.cpu.features
    reused = run_destination(amx, dst, kvm=shared)
    fresh = run_destination(amx, dst)
    assert _findings(reused) == _findings(fresh)
    assert not any("EBUSY" in t for _, _, t in _findings(reused))
