"""A state file reduced to what a migration verdict depends on: its state signature.

Millions of snapshots differ in their register *values*, but a verdict does not read them:
every path kvmfpu models (KVM_SET_XSAVE/KVM_GET_XSAVE, QEMU's field copy, a snapshot VMM's
verbatim buffer) carries a data register (st, xmm/ymm/zmm, k, bnd, tmm, APX r16-r31, FIP,
FDP) whole or not at all, so what decides whether one is lost is whether it holds anything
(a register that is zero reads the same as one that was dropped). Control and status
registers are different: KVM and XRSTOR check some of them (MXCSR against MXCSR_MASK, the
header, TILECFG), so the signature keeps their exact values. What the signature holds:

- the buffer's length, XSTATE_BV and XCOMP_BV;
- the exact value of every control field (FCW, FSW, FTW, FOP, MXCSR, MXCSR_MASK, the
  software-reserved bytes, the header's reserved bytes, PKRU, TILECFG, BNDCFGU/BNDSTATUS,
  U_CET and any field not listed as data);
- which data fields are non-zero, and which unnamed byte runs (padding) are non-zero;
- the vCPU's IA32_XFD where the file carries it;
- for a QEMU stream written under TCG, the components whose registers the destination will
  load in their initial state (XSTATE_BV is never set under TCG: blob.validate).

Two images with one signature get one verdict; tests/audit/test_signature.py checks that
on generated images whose data values differ, through the real check, for raw and
by-field VMMs. The image the verdict is computed on is the first one seen with that
signature (its bytes travel with the signature; the files themselves never do).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from kvmfpu.arch.layout import XsaveLayout
from kvmfpu.blob.decode import decode

#: Fields whose value no modelled path reads or checks: only "zero or not" matters.
DATA_FIELD: Final = re.compile(
    r"(st\d|xmm\d+|ymm\d+_hi|zmm\d+_hi256|zmm\d+|k\d|bnd\d_(lower|upper)|tmm\d|r\d+|fip|fdp)\Z"
)


@dataclass(frozen=True)
class Signature:
    length: int
    xstate_bv: int
    xcomp_bv: int
    exact: tuple[tuple[str, int], ...]
    nonzero: tuple[str, ...]
    rest: tuple[int, ...]
    xfd: int = 0
    restores_init: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "length": self.length,
            "xstate_bv": f"{self.xstate_bv:#x}",
            "xcomp_bv": f"{self.xcomp_bv:#x}",
            "exact": {k: f"{v:#x}" for k, v in self.exact},
            "nonzero": list(self.nonzero),
            "nonzero_runs": list(self.rest),
            "xfd": f"{self.xfd:#x}",
            "restores_init": f"{self.restores_init:#x}",
        }

    @property
    def digest(self) -> str:
        """A stable name for the signature (the same on every machine and run)."""
        return digest_of(self.to_json())


def signature(blob: bytes, layout: XsaveLayout, xfd: int = 0, restores_init: int = 0) -> Signature:
    """``blob`` (a kvm_xsave-shaped image laid out as ``layout``) reduced to its signature.
    InputError for what decode refuses."""
    d = decode(blob, layout, host="")
    exact: list[tuple[str, int]] = []
    nonzero: list[str] = []
    fields = (*d.legacy, *d.st, *d.xmm, *(f for c in d.components for f in c.fields))
    for f in fields:
        if DATA_FIELD.match(f.name):
            if f.value:
                nonzero.append(f.name)
        else:
            exact.append((f.name, f.value))
    rest = tuple(off for off, chunk in d.rest if chunk.count(0) != len(chunk))
    return Signature(
        d.length, d.xstate_bv, d.xcomp_bv, tuple(exact), tuple(nonzero), rest, xfd, restores_init
    )


def digest_of(doc: dict[str, Any]) -> str:
    """Signature.digest of the signature whose to_json is ``doc``."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]
