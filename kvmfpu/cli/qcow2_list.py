"""``kvmfpu decode IMAGE --list-snapshots``: a qcow2 image's internal snapshots, from its
header and snapshot table (qemu-img snapshot -l's list, with exact vm state sizes).

JSON (``--json``): ``kvmfpu-qcow2-snapshots/1`` (kvmfpu/schemas/kvmfpu-qcow2-snapshots-1.json):
``image``, ``header`` (version, cluster size, virtual size, feature bits, extended L2,
compression type, encryption, backing and data files, header extensions), ``snapshots`` (ID,
name, date, vm clock, vm state size, disk size, L1 table, extra data size, icount),
``default`` (the ID decode reads without --snapshot, or null when it must be given),
``checked`` and ``not_checked``.
"""

from __future__ import annotations

import argparse
import json
import sys

from kvmfpu.cli.common import UsageError

SCHEMA = "kvmfpu-qcow2-snapshots/1"


def list_snapshots(args: argparse.Namespace) -> int:
    from kvmfpu.blob import qcow2
    from kvmfpu.blob.errors import InputError
    from kvmfpu.blob.sources import read_stream
    from kvmfpu.cli.document import document

    if args.format not in (None, "qcow2"):
        raise UsageError(f"--list-snapshots reads qcow2 images, not --format {args.format}")
    if len(args.file) != 1:
        raise UsageError("--list-snapshots lists one image's snapshots: give one file")
    (file,) = args.file
    try:
        source: str | bytes = file
        if file == "-":
            source = read_stream(sys.stdin.buffer, args.max_size, "standard input")
        header, snaps = qcow2.snapshot_list(source)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    with_state = [s for s in snaps if s.vm_state_size]
    default = with_state[0].id if len(with_state) == 1 else None
    name = "standard input" if file == "-" else file
    if args.json:
        body = {
            "image": name,
            "header": header.to_json(),
            "snapshots": [s.to_json() for s in snaps],
            "default": default,
            "checked": list(qcow2.CHECKED[:2]),
            "not_checked": list(qcow2.NOT_CHECKED),
        }
        print(json.dumps(document(SCHEMA, body), indent=2))
        return 0
    print("\n".join(qcow2.list_text(qcow2.printable(name), header, snaps)))
    return 0
