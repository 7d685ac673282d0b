"""``kvmfpu replay``: the seed scenarios. Exit 1 when the run shows the bug, 0 when not."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kvmfpu.cli.common import UsageError
from kvmfpu.cli.document import document
from kvmfpu.scenarios import SCENARIOS, get


def add_parser(sub: Any) -> None:
    r = sub.add_parser("replay", help="replay a seed bug on a kernel (or ACRN) version",
                       description="Exit status: 1 when the replay shows the bug, 0 when not.")
    r.add_argument("name", nargs="?", help="scenario name (see --list)")
    r.add_argument("--kernel", help="kernel version (e.g. 5.17, 6.18.7, 6.18-rc5, or a "
                                    "distribution's uname -r such as 5.15.0-91-generic; for "
                                    "acrn-xss an ACRN release such as acrn-2.5; for pkru-leak "
                                    "the source kernel); default: the last affected release")
    r.add_argument("--host", help="host CPU model or dump file (default: the scenario's)")
    r.add_argument("--src", help="fpsse-migration: the source host (default nehalem)")
    r.add_argument("--dst-kernel", help="pkru-leak: the destination kernel (default 6.2; "
                                        "--kernel is the source's)")
    r.add_argument("--guest-kernel", help="acrn-xss: the Service VM's Linux version (default 5.4)")
    r.add_argument("--list", action="store_true", help="list the scenarios")
    r.add_argument("--json", action="store_true",
                   help="print the kvmfpu-replay/1 document (with --list: kvmfpu-scenarios/1)")
    r.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    if args.list:
        if args.name:
            raise UsageError("--list takes no scenario name")
        if args.json:
            # kvmfpu-scenarios/1: the list under "scenarios" (a bare list before the envelope)
            print(json.dumps(document("kvmfpu-scenarios/1",
                                      {"scenarios": [s.to_json() for s in SCENARIOS]}), indent=2))
            return 0
        for s in SCENARIOS:
            fixed = (f"fixed by {s.fixed_by} in {s.first_fixed}" if s.fixed_by else
                     f"not fixed (introduced by {s.introduced_by} after {s.last_unaffected})")
            print(f"{s.name:16} seed {s.seed}  {s.title}\n{'':17}last affected {s.last_affected}; "
                  f"{fixed}" + (f" (stable: {', '.join(s.stable_fixes)})" if s.stable_fixes else ""))
        return 0
    if not args.name:
        raise UsageError("replay needs a scenario name (or --list)")
    try:
        scenario = get(args.name)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    options: dict[str, Any] = {}
    if args.host:
        options["host"] = args.host
    if args.src:
        if scenario.name != "fpsse-migration":
            raise UsageError("--src applies to fpsse-migration only")
        options["src"] = args.src
    if args.dst_kernel:
        if scenario.name != "pkru-leak":
            raise UsageError("--dst-kernel applies to pkru-leak only")
        options["dst_kernel"] = args.dst_kernel
    if args.guest_kernel:
        if scenario.name != "acrn-xss":
            raise UsageError("--guest-kernel applies to acrn-xss only")
        options["guest_kernel"] = args.guest_kernel
    try:
        result = scenario.run(args.kernel or scenario.last_affected, **options)
    except ValueError as exc:       # unknown kernel, bad version text, not applicable here
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(document("kvmfpu-replay/1", result.to_json()), indent=2))
    else:
        print("\n".join(result.lines()))
    return 1 if result.bug else 0
