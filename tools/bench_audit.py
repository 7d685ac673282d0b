#!/usr/bin/env python3
"""Fleet-audit throughput (issue 15): generated snapshot signatures x host classes.

    tools/bench_audit.py [--snapshots N] [--distinct D] [--classes C] [--dask 1,2,4] [--json]

The snapshots are drawn from real captures' shapes: the packaged KVM_GET_XSAVE of a Zen 5
host (Linux 6.18) and the QEMU 7.2 TCG stream, varied the way a fleet's states vary (which
components hold data, XSTATE_BV within the host's features, MXCSR values real guests run
with), so D distinct signatures stand for N snapshots (Zipf-weighted: a few states are
common, most are rare). The destinations are C classes: every packaged host on several
kernels and QEMU versions. What is timed is the whole audit engine (dedupe, one source run
per distinct signature and source class, every destination, the fan-out to per-class
counts); the JSONL rows are not written (N x C of them). Reported: verdicts/s and the
wall time, in this process, a local process pool, and Dask LocalClusters of 1, 2 and 4
workers when distributed is installed. Target: 1,000,000 x 50 in under 5 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvmfpu import cpus
from kvmfpu.arch import legacy
from kvmfpu.audit import engine, results
from kvmfpu.audit.inventory import HostClass, Population
from kvmfpu.audit.signature import signature
from kvmfpu.audit.work import FileRead, VcpuState
from kvmfpu.blob import sample_data, sources
from kvmfpu.blob.decode import decode, encode

#: MXCSR values guests run with: the reset value, a sticky precision flag, FTZ|DAZ.
MXCSRS = (0x1F80, 0x1FA0, 0x9FC0, 0x1F81)
KERNELS = ("5.15", "6.1", "6.8", "6.12", "6.18")
QEMUS = ("qemu@7.2", "qemu@8.2", "qemu@9.2")
SOURCES = (
    HostClass("src-zen5", "devhost-zen5", "6.18", "qemu@9.2", 400),
    HostClass("src-zen4", "zen4", "6.8", "qemu@8.2", 300),
)


def shapes(distinct: int, seed: int = 1) -> list[tuple[str, bytes]]:
    """``distinct`` (source class, image) pairs with distinct signatures, from the real
    captures."""
    host = cpus.load("devhost-zen5")
    base = [bytes(sources.read(sample_data.path(sample_data.KVM_ZEN5))[0].data)]
    tcg = sources.read(sample_data.path(sample_data.QEMU_TCG))[0]
    if tcg.rebuild is not None:
        base.append(tcg.rebuild(host.layout))
    rng = random.Random(seed)
    out: dict[str, tuple[str, bytes]] = {}
    user = host.layout.user_mask
    while len(out) < distinct:
        d = decode(rng.choice(base), host.layout)
        for c in d.components:  # some components idle (zero) in this state
            if rng.random() < 0.3:
                for f in c.fields:
                    f.value = 0
        for f in (*d.xmm, *d.st):
            if rng.random() < 0.2:
                f.value = 0
        blob = bytearray(encode(d))
        bv = struct.unpack_from("<Q", blob, legacy.XSTATE_BV)[0]
        bv = (bv | rng.getrandbits(12)) & user | 3
        struct.pack_into("<Q", blob, legacy.XSTATE_BV, bv)
        struct.pack_into("<I", blob, 24, rng.choice(MXCSRS))
        src = rng.choice(SOURCES)
        sig = signature(bytes(blob), cpus.load(src.host).layout)
        out.setdefault(f"{src.name}/{sig.digest}", (src.name, bytes(blob)))
    return list(out.values())


def destinations(n: int) -> tuple[HostClass, ...]:
    classes = [HostClass(f"{h}@{k}/{q}", h, k, q, 10) for h in cpus.names() for k in KERNELS for q in QEMUS]
    random.Random(2).shuffle(classes)
    return tuple(classes[:n])


def reads(snapshots: int, distinct: int) -> list[FileRead]:
    """``snapshots`` files' signatures: Zipf-weighted draws from the distinct shapes."""
    pool = []
    for src, blob in shapes(distinct):
        layout = cpus.load(next(c.host for c in SOURCES if c.name == src)).layout
        sig = signature(blob, layout)
        pool.append((src, VcpuState(sig.digest, sig.to_json(), blob)))
    rng = random.Random(3)
    weights = [1 / (i + 1) for i in range(len(pool))]
    drawn = rng.choices(range(len(pool)), weights, k=snapshots)
    seen: set[int] = set()
    out = []
    for n, i in enumerate(drawn):
        src, v = pool[i]
        if i in seen:  # the image travels once per signature
            v = VcpuState(v.digest, v.signature, b"")
        seen.add(i)
        out.append(FileRead(f"/fleet/snap{n:07d}.xsave", src, "host", (v,)))
    # Every shape at least once, so the distinct count is what was asked.
    for i in set(range(len(pool))) - seen:
        src, v = pool[i]
        out.append(FileRead(f"/fleet/rare{i:07d}.xsave", src, "host", (v,)))
    return out


def one(
    label: str,
    eng: engine.Engine,
    classes: tuple[HostClass, ...],
    dsts: tuple[HostClass, ...],
    files: list[FileRead],
) -> dict[str, Any]:
    t0 = time.perf_counter()
    a = engine.run(classes, Population((), ()), destinations=[d.name for d in dsts], engine=eng, reads=files)
    counts = results.counts(a)
    wall = time.perf_counter() - t0
    verdicts = a.distinct_tasks * len(dsts)
    broken = sum(c["verdicts"]["incompatible"] for c in counts)
    return {
        "engine": label,
        "snapshots": len(files),
        "distinct_source_runs": a.distinct_tasks,
        "destinations": len(dsts),
        "verdicts": verdicts,
        "seconds": round(wall, 1),
        "verdicts_per_s": round(verdicts / wall),
        "snapshot_rows_per_s": round(len(files) * len(dsts) / wall),
        "incompatible_rows": broken,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snapshots", type=int, default=1_000_000)
    ap.add_argument("--distinct", type=int, default=2_000)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--dask", default="", help="worker counts for Dask LocalClusters, e.g. 1,2,4")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    files = reads(args.snapshots, args.distinct)
    gen = time.perf_counter() - t0
    dsts = destinations(args.classes)
    classes = SOURCES + dsts
    out = {"generated_s": round(gen, 1), "runs": []}
    with engine.Engine(jobs=args.jobs) as eng:
        out["runs"].append(one(f"{args.jobs} local processes", eng, classes, dsts, files))
    for n in [int(x) for x in args.dask.split(",") if x]:
        from distributed import LocalCluster

        with (
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
            ) as cluster,
            engine.Engine(scheduler=cluster.scheduler_address) as eng,
        ):
            out["runs"].append(one(f"dask, {n} workers", eng, classes, dsts, files))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{args.snapshots:,} snapshots ({args.distinct:,} distinct states) generated "
            f"in {out['generated_s']} s"
        )
        for r in out["runs"]:
            print(
                f"{r['engine']:>22}: {r['distinct_source_runs']:,} source runs x "
                f"{r['destinations']} classes = {r['verdicts']:,} verdicts in "
                f"{r['seconds']} s ({r['verdicts_per_s']:,}/s; "
                f"{r['snapshot_rows_per_s']:,} snapshot x class answers/s)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
