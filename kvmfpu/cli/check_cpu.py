"""``kvmfpu check-cpu``: the model against this machine's processor."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kvmfpu.cli.common import UsageError
from kvmfpu.cli.document import document


def add_parser(sub: Any) -> None:
    k = sub.add_parser("check-cpu", help="compare the model with this machine's processor")
    k.add_argument("--cases", type=int, default=2000,
                   help="random instruction sequences to run on both (default 2000)")
    k.add_argument("--seed", type=int, default=1,
                   help="seed of the random sequences, to repeat a run (default 1)")
    k.add_argument("--json", action="store_true", help="print the kvmfpu-check-cpu/1 document")
    k.set_defaults(func=cmd_check_cpu)


def check_cpu(cases: int, seed: int) -> Any:
    from kvmfpu.native import differential
    from kvmfpu.native.hostcpuid import this_host
    from kvmfpu.native.xsave_probe import Op, RealCpu

    real = RealCpu()
    xcr0 = real.run([Op("XGETBV", ecx=0)]).results[0]
    return differential.run(this_host(), xcr0, cases, seed, real=real)


def cmd_check_cpu(args: argparse.Namespace) -> int:
    from kvmfpu.native.xsave_probe import probe_unavailable

    reason = probe_unavailable()
    if reason:
        raise UsageError(f"the real-CPU probe cannot run here: {reason}")
    if args.cases < 1:
        raise UsageError("--cases must be at least 1")
    rep = check_cpu(args.cases, args.seed)
    if args.json:
        print(json.dumps(document("kvmfpu-check-cpu/1", {
            "seed": args.seed, "cases": rep.cases, "agreed": rep.agreed, "faulting": rep.faulting,
            "fault_extra_xinuse": rep.fault_extra_xinuse, "reruns": rep.retried,
            "by_kind": rep.by_kind,
            "disagreements": [{"kind": c.kind, "differences": d} for c, d in rep.disagreements],
        }), indent=2))
    else:
        print(f"{rep.cases} cases ({rep.faulting} faulting): {rep.agreed} agree, "
              f"{len(rep.disagreements)} disagree; {rep.retried} re-runs after an interrupt")
        for case, diff in rep.disagreements[:20]:
            print(f"  {case.kind}: {'; '.join(diff)}")
    return 0 if not rep.disagreements else 1
