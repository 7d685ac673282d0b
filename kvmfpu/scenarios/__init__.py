"""Executable reproductions of the seed bugs (../shared/seeds in the project history).

Each scenario runs the sequence its seed describes on the model and decides from what it
observed (errno, fault and vector, register contents) whether the bug showed. ``replay``
runs one by name; ``SCENARIOS`` lists them with the seed file, the commits and the first
and last affected releases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvmfpu.kvm.profiles import NEWEST
from kvmfpu.scenarios import (
    acrn_xss,
    fpsse_migration,
    init_xstate,
    pkru_leak,
    xfd_xstate_bv,
    zen_xsaves,
)
from kvmfpu.scenarios.replay import Event, NotApplicable, Replay

__all__ = ["SCENARIOS", "Event", "NotApplicable", "Replay", "Scenario", "UnknownScenario", "get",
           "replay"]


class UnknownScenario(KeyError):
    pass


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: str
    title: str
    versions: str                  # what a version names: "linux" or "acrn"
    host: str                      # default host model(s)
    run: Callable[..., Replay] = field(repr=False)
    introduced_by: str | None = None   # the change that brought the behaviour in
    fixed_by: str | None = None        # the fixing change, None while unfixed
    first_affected: str | None = None
    last_affected: str = NEWEST
    first_fixed: str | None = None
    last_unaffected: str | None = None   # for unfixed behaviour: the release before it
    stable_fixes: tuple[str, ...] = ()
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "title": self.title,
                "versions": self.versions, "host": self.host,
                "introduced_by": self.introduced_by, "fixed_by": self.fixed_by,
                "first_affected": self.first_affected, "last_affected": self.last_affected,
                "first_fixed": self.first_fixed, "last_unaffected": self.last_unaffected,
                "stable_fixes": list(self.stable_fixes),
                "note": self.note}


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "acrn-xss", acrn_xss.SEED,
        "ACRN: XSAVES under the host's IA32_XSS, XRSTORS under the guest's -> #GP",
        "acrn", "kabylake", acrn_xss.run,
        introduced_by="XSAVES context switching (acrn-hypervisor #4166, 2020)",
        fixed_by="projectacrn/acrn-hypervisor#6435 (v2.6 backport #6439)",
        last_affected="acrn-2.5", first_fixed="acrn-2.6",
        note="hypervisor-agnostic, on the emulated core; a Service VM kernel from 5.8 "
             "(71581eefd7a0) writes IA32_XSS at boot and hides the bug (--guest-kernel)"),
    Scenario(
        "zen-xsaves", zen_xsaves.SEED,
        "Zen 1/2: KVM_GET_SUPPORTED_CPUID without XSAVES after the erratum; a guest given "
        "XSAVES anyway", "linux", "zen2", zen_xsaves.run,
        introduced_by="b0563468eeac", first_affected="6.3", last_affected=NEWEST,
        last_unaffected="6.2",
        note="not fixed: the seed's patch was rejected; d52734d00b8e (6.8) logs a notice for "
             "Windows Server 2016 guests; the erratum commit reached stable in 6.2.7, 6.1.20 "
             "and 5.15.103"),
    Scenario(
        "fpsse-migration", fpsse_migration.SEED,
        "Nehalem-era source to a newer destination: KVM_SET_XSAVE of an FP/SSE buffer into "
        "a vCPU without XSAVE in CPUID", "linux", "nehalem->skylake-sp", fpsse_migration.run,
        introduced_by="ad856280ddea", fixed_by="a1020a25e697", first_affected="5.17",
        last_affected="5.19", first_fixed="6.0", stable_fixes=("5.19.12",),
        note="5.16.y never took ad856280ddea (only its AUTOSEL posting exists; it needs 5.17's "
             "c270ce393dfd), so 5.16 is unaffected"),
    Scenario(
        "xfd-xstate-bv", xfd_xstate_bv.SEED,
        "XFD[18]=1 with XSTATE_BV[18]=1 in the saved guest state -> host #NM",
        "linux", "sapphirerapids", xfd_xstate_bv.run,
        introduced_by="820a6ee944e7", fixed_by="b45f72177594", first_affected="5.17",
        last_affected="6.18", first_fixed="6.19",
        stable_fixes=("6.18.7", "6.12.67", "6.6.122", "6.1.162")),
    Scenario(
        "pkru-leak", pkru_leak.SEED,
        "Ubuntu/Proxmox 5.15 source leaks the host PKRU bit into a qemu64 guest's "
        "KVM_GET_XSAVE; a 6.2 destination refuses it", "linux (source)",
        "skylake-sp->skylake-sp", pkru_leak.run,
        introduced_by="Ubuntu jammy's backport of the 5.16 guest-FPU rework (69f6ed1d14c6) "
                      "without ad856280ddea",
        fixed_by="mainline 5.15's fill_xsave (never leaks); on the destination 8647c52e9504 "
                 "(6.6; 6.5.9, 6.1.60) or pve-kernel 1559d22 (6.2.16-5-pve)",
        first_affected="5.16", last_affected="5.15.0-91-generic", first_fixed="5.15",
        note="the version is the source kernel (--dst-kernel: the destination, default 6.2); "
             "mainline 5.15 is the unaffected counterpart, not a later fix"),
    Scenario(
        "init-xstate", init_xstate.SEED,
        "INIT zeroes MPX and CET xstate and keeps the rest; 6.18-rc crash on a CET host "
        "without MPX", "linux", "sapphirerapids", init_xstate.run,
        introduced_by="69cc3e886582", fixed_by="8819a49f9ff8", first_affected="6.18-rc1",
        last_affected="6.18-rc5", first_fixed="6.18",
        note="before 6.18 MPX is cleared on INIT and RESET and CET is not virtualised"),
)

BY_NAME = {s.name: s for s in SCENARIOS}


def get(name: str) -> Scenario:
    try:
        return BY_NAME[name]
    except KeyError:
        raise UnknownScenario(f"unknown scenario {name!r} (one of {', '.join(BY_NAME)})") from None


def replay(name: str, version: str | None = None, **options: Any) -> Replay:
    """Run scenario ``name`` on ``version`` (default: its last affected release)."""
    s = get(name)
    return s.run(version or s.last_affected, **options)
