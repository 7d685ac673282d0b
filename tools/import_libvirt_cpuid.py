#!/usr/bin/env python3
"""Turn a libvirt ``tests/cputestdata/x86_64-cpuid-*.xml`` dump into a kvmfpu host file.

    tools/import_libvirt_cpuid.py DUMP.xml NAME --path tests/cputestdata/... --commit SHA \
        [--title TITLE] [--note TEXT] > kvmfpu/cpus/data/NAME.json

Register values are copied unchanged; the file records where they came from.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# This checkout's kvmfpu, not an installed copy (tools run from the source tree).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvmfpu.cpus.dumps import Dump, parse_libvirt_xml, to_json
from kvmfpu.cpus.model import HostModel


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("xml", type=Path)
    ap.add_argument("name")
    ap.add_argument("--repo", default="libvirt/libvirt")
    ap.add_argument("--path", required=True, help="path of the dump in the repository")
    ap.add_argument("--commit", required=True)
    ap.add_argument("--title")
    ap.add_argument("--note")
    args = ap.parse_args()
    table = parse_libvirt_xml(args.xml.read_text())
    model = HostModel(table, name=args.name)
    source = {"kind": "libvirt cputestdata", "repo": args.repo, "path": args.path,
              "commit": args.commit}
    if args.note:
        source["note"] = args.note
    title = args.title or model.brand
    sys.stdout.write(to_json(Dump(table, name=args.name, title=title, source=source)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
