"""``kvmfpu probe``: fingerprint the running KVM and name the model that matches it."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kvmfpu.cli.common import UsageError
from kvmfpu.cli.document import document


def add_parser(sub: Any) -> None:
    p = sub.add_parser("probe", help="fingerprint this machine's /dev/kvm and pick the model "
                                     "profile and flavour that behave like it")
    p.add_argument("--device", default="/dev/kvm",
                   help="the KVM device to probe (default /dev/kvm)")
    p.add_argument("--json", action="store_true", help="print the kvmfpu-probe/1 document")
    p.set_defaults(func=cmd_probe)


def cmd_probe(args: argparse.Namespace) -> int:
    from kvmfpu.probe import PROBES, ProbeUnavailable, fingerprint

    try:
        fp = fingerprint(args.device)
    except ProbeUnavailable as exc:
        raise UsageError(f"cannot probe: {exc}") from None
    if args.json:
        print(json.dumps(document("kvmfpu-probe/1", fp.to_json()), indent=2))
        return 0
    best = fp.best
    fam, mod, _ = fp.host.signature
    print(f"running kernel {fp.release}, module {fp.module} (flavour {fp.flavor}), "
          f"{fp.host.vendor} family {fam:#x} model {mod:#x}")
    print(f"match: kernel profile {best.kernel}, flavour {best.flavor}: {best.score} of "
          f"{len(PROBES)} probes agree")
    for name, real, model in best.disagree:
        print(f"  disagrees: {name} ({PROBES[name][0]}): real {real!r}, model {model!r}")
    print("candidates: " + ", ".join(f"{c.kernel} {c.score}/{len(PROBES)}"
                                     for c in fp.candidates))
    return 0
