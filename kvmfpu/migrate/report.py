"""What a migration check answers: the verdict, the findings behind it, the advice, and the
scope of what was checked (so a "compatible" is never read wider than it is).

Verdict levels: a finding of level "error" makes the migration incompatible (exit 1); a
"condition" is something the operator can satisfy without changing the guest's CPU (AMX
permission, KVM_GET_XSAVE2, a minimum kernel, a QEMU option on the destination); "info" is a
harmless difference worth knowing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from kvmfpu.blob import regdiff
from kvmfpu.blob.compare import Difference
from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm.errors import KvmError

if TYPE_CHECKING:
    from kvmfpu.migrate.vmm import Vmm
    from kvmfpu.qemu.models import GuestModel

COMPATIBLE: Final = "compatible"
CONDITIONS: Final = "compatible with conditions"
INCOMPATIBLE: Final = "incompatible"
#: Verdicts best first (advice keeps only changes that rank better).
RANK: Final = {COMPATIBLE: 0, CONDITIONS: 1, INCOMPATIBLE: 2}


@dataclass(frozen=True)
class Endpoint:
    host: HostModel
    kernel: str
    flavor: str | None = None

    @property
    def label(self) -> str:
        return f"{self.host.name}@{self.kernel}"


@dataclass(frozen=True)
class Finding:
    level: str  # "error", "condition" or "info"
    stage: str  # "source", "transport", "destination", "cpu" or "guest"
    text: str
    errno: str | None = None
    function: str | None = None
    condition: str | None = None
    commit: str | None = None
    features: tuple[str, ...] = ()  # the guest CPU features this finding is about

    @classmethod
    def of(cls, level: str, stage: str, text: str, exc: KvmError) -> Finding:
        return cls(
            level,
            stage,
            f"{text}: -{exc.errno_name}: {exc.reason}",
            exc.errno_name,
            exc.function,
            exc.condition,
            exc.commit,
        )

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v is not None and k != "features"}
        if self.features:
            out["features"] = list(self.features)
        return out


@dataclass
class Advice:
    kind: str  # "guest model", "kernel", "QEMU option", "VMM"
    change: str
    verdict: str
    why: str

    def to_json(self) -> dict[str, str]:
        return dict(self.__dict__)


@dataclass
class Scope:
    """What one check covered and what it did not."""

    checked: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, list[str]]:
        return {"checked": list(self.checked), "not_checked": list(self.not_checked)}


@dataclass
class Report:
    src: Endpoint
    dst: Endpoint
    guest: GuestModel
    vmm: Vmm
    findings: list[Finding]
    steps: list[tuple[str, str, str]]
    #: The registers that differ after the restore (blob.compare.register_diff).
    lost: list[Difference] = field(default_factory=list)
    advice: list[Advice] = field(default_factory=list)
    blob: str | None = None
    lost_msrs: set[int] = field(default_factory=set)
    dst_vmm: Vmm | None = None
    #: The guest CPUID's XCR0/XSS components as built on the source (host: the host's own).
    guest_xcr0: int = 0
    guest_xss: int = 0
    #: Guest CPU features present on the source and absent on the destination.
    lost_features: tuple[str, ...] = ()
    #: The CPU features the guest had on the source (QEMU's realize there).
    guest_features: frozenset[str] = frozenset()
    scope: Scope = field(default_factory=Scope)

    @property
    def verdict(self) -> str:
        levels = {f.level for f in self.findings}
        return INCOMPATIBLE if "error" in levels else CONDITIONS if "condition" in levels else COMPATIBLE

    @property
    def reason(self) -> str:
        """The first error (or condition): one line for a matrix cell."""
        for level in ("error", "condition"):
            for f in self.findings:
                if f.level == level:
                    return f.text
        return "every guest CPU feature, register, XCR0 and xstate MSR arrives intact"

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "source": self.src.label,
            "destination": self.dst.label,
            "guest": {
                **self.guest.to_json(),
                "guest_xcr0": f"{self.guest_xcr0:#x}",
                "guest_xss": f"{self.guest_xss:#x}",
            },
            "vmm": self.vmm.label,
            "destination_vmm": (self.dst_vmm or self.vmm).label,
            "blob": self.blob,
            "findings": [f.to_json() for f in self.findings],
            "lost_features": list(self.lost_features),
            "scope": self.scope.to_json(),
            "steps": [{"side": a, "step": b, "outcome": c} for a, b, c in self.steps],
            "lost": [regdiff.to_json(d, "source", "destination") for d in self.lost],
            "advice": [a.to_json() for a in self.advice],
        }
