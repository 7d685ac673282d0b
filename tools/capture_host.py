#!/usr/bin/env python3
"""Capture this machine's CPUID as a kvmfpu host file.

    tools/capture_host.py NAME [--title TITLE] > kvmfpu/cpus/data/NAME.json

CPUID runs through the native probe (kvmfpu.native), walking leaves as ``cpuid -r`` does.
Inside a virtual machine this is the CPUID the hypervisor presents.
"""

from __future__ import annotations

import argparse
import os
import sys

# This checkout's kvmfpu, not an installed copy (tools run from the source tree).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvmfpu.cpus.dumps import Dump, to_json
from kvmfpu.native.hostcpuid import this_host


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--title")
    args = ap.parse_args()
    host = this_host(args.name)
    source = dict(host.source, tool="tools/capture_host.py", hypervisor=host.has("hypervisor"))
    sys.stdout.write(to_json(Dump(dict(host.table), name=args.name,
                                  title=args.title or host.brand, source=source)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
