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
workers when distributed is installed, with the CPU time of each (this process and its
children). Target: 1,000,000 x 50 in under 5 minutes.

``--files N [--file-mb M]``: N real-format files (QEMU 7.2 streams with RAM as .gz/.xz/.zst,
libvirt save images raw/gzip/xz/zstd, qcow2 internal snapshots with deflate clusters,
Firecracker/CRIU/Cloud Hypervisor state files; the real TCG stream and the readers' test
writers in kvmfpu.testing) of about M MB each, generated in a temporary directory, synced;
then timed: ``cat`` of them with their pages evicted (the disk's rate), the audit's reading
phase (engine.FILE_BATCH batches of work.read_files, as engine.run does) cold on --jobs
processes and on one, and warm: the codecs alone and the reading per kind. 10,000 x 3 MB is
about 40 GB and an hour here; the figures are per file and scale.
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
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


# -- 10,000 real-format files read at disk speed (issue 15) -------------------------------

#: The formats of the generated files, each a real container kvmfpu reads around the real
#: QEMU 7.2 stream (with RAM added) or a VMM writer's file (kvmfpu.testing.vmm_samples).
FILE_KINDS = (
    "qemu.gz",
    "qemu.xz",
    "qemu.zst",
    "libvirt-gzip",
    "libvirt-xz",
    "libvirt-zstd",
    "libvirt-raw",
    "qcow2",
    "firecracker",
    "criu",
    "cloud-hypervisor",
)
#: libvirt qemu_saveimage_format.h: raw 0, gzip 1, xz 3, zstd 5.
LIBVIRT_FORMATS = {"raw": 0, "gzip": 1, "xz": 3, "zstd": 5}
DOMAIN_XML = b"<domain type='kvm'><name>vm</name><cpu mode='host-model' check='partial'/></domain>\0"


def _codec(data: bytes, codec: str) -> bytes:
    """``data`` compressed the way the file's writer does: gzip and xz as libvirt's
    compressors run them (``gzip -c``, ``xz -c``: default levels), zstd with the zstd
    program (``zstd -c``, level 3)."""
    if codec == "raw":
        return data
    argv = {"gzip": ["gzip", "-c"], "xz": ["xz", "-c", "-T1"], "zstd": ["zstd", "-cq"]}[codec]
    return subprocess.run(argv, input=data, capture_output=True, check=True).stdout


def ram_pages(count: int, seed: int) -> list[bytes]:
    """Guest RAM as it compresses in practice: about half the pages high-entropy (compressed
    or encrypted data, code), the rest text and small integers."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"etaoinshrdlucmfwyp") for _ in range(rng.randint(2, 9))) for _ in range(512)]
    out = []
    for _ in range(count):
        if rng.random() < 0.5:
            out.append(rng.randbytes(4096))
        else:
            text = b" ".join(rng.choices(words, k=800))
            out.append(text[:4096].ljust(4096, b"\n"))
    return out


def stream_with_ram(stream: bytes, pages: list[bytes]) -> bytes:
    """``stream`` (the real QEMU 7.2 TCG stream) with ``pages`` of pc.ram sent in its last
    ram section, before that section's RAM_SAVE_FLAG_EOS: where ram_save_complete sends the
    pages dirtied last (migration/ram.c save_page_header: the first record names the block,
    the rest are RAM_SAVE_FLAG_CONTINUE)."""
    from kvmfpu.testing import streams

    _, _, ram, rest = streams._walk(stream)
    eos = rest - 13  # be64 EOS, the footer byte and section id
    assert stream[eos : eos + 9] == struct.pack(">Q", 0x10) + b"\x7e", "the END section's EOS"
    pc_ram = dict(ram.blocks)["pc.ram"]
    assert len(pages) * 4096 <= pc_ram
    recs = bytearray()
    for i, page in enumerate(pages):
        flags = 0x08 | (0x20 if i else 0)  # RAM_SAVE_FLAG_PAGE, CONTINUE after the first
        recs += struct.pack(">Q", (i * 4096) | flags)
        if not i:
            recs += b"\x06pc.ram"
        recs += page
    return stream[:eos] + bytes(recs) + stream[eos:]


def base_files(file_mb: float, variants: int) -> dict[str, list[bytes]]:
    """Per kind, ``variants`` files (different RAM) of about ``file_mb`` MB on disk."""
    from kvmfpu.testing import hostile, hostile_qcow2
    from kvmfpu.testing import vmm_samples as vs

    real = lzma.decompress(sample_data.path(sample_data.QEMU_TCG).read_bytes())
    count = min(4096, max(1, int(file_mb * 2 * 2**20 / 4096)))  # about half compresses away
    out: dict[str, list[bytes]] = {k: [] for k in FILE_KINDS}
    vcpu = vs.model_vcpu("devhost-zen5", "6.18")
    layout = cpus.load("devhost-zen5").layout
    for v in range(variants):
        stream = stream_with_ram(real, ram_pages(count, 100 + v))
        for codec, ext in (("gzip", "gz"), ("xz", "xz"), ("zstd", "zst")):
            out[f"qemu.{ext}"].append(_codec(stream, codec))
        for codec, fmt in LIBVIRT_FORMATS.items():
            head = hostile.libvirt_header(len(DOMAIN_XML), fmt)
            out[f"libvirt-{codec}"].append(head + DOMAIN_XML + _codec(stream, codec))
        spec = hostile_qcow2.Spec(stream, disk_size=64 << 20, kinds=("normal", "compressed"))
        out["qcow2"].append(hostile_qcow2.build(spec))
        s = vs.model_vcpu("devhost-zen5", "6.18", salt=v) if v else vcpu
        out["firecracker"].append(vs.firecracker_vmstate([s, s], "8.0.0"))
        out["criu"].append(vs.criu_core_image(vs.criu_fields(s.xsave, layout, s.xcr0)))
        out["cloud-hypervisor"].append(vs.ch_state_json([s, s]))
    return out


def write_files(top: Path, n: int, file_mb: float, variants: int = 4) -> list[tuple[str, str, int]]:
    """``n`` files under ``top`` (kinds in turn; 1,000 a directory), synced to disk:
    (path, kind, bytes) each."""
    bases = base_files(file_mb, variants)
    out = []
    for i in range(n):
        kind = FILE_KINDS[i % len(FILE_KINDS)]
        data = bases[kind][(i // len(FILE_KINDS)) % variants]
        d = top / f"rack{i // 1000:03d}"
        d.mkdir(exist_ok=True)
        path = d / f"vm{i:06d}.{kind}"
        with open(path, "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
        out.append((str(path), kind, len(data)))
    return out


def evict(paths: list[str]) -> None:
    """Drop the files' pages from the page cache (POSIX_FADV_DONTNEED on clean, synced
    pages): the next read comes from the disk. Only these files; nothing system-wide."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn: Any) -> tuple[float, float, Any]:
    """(wall seconds, this process's CPU seconds, fn()) (children's CPU included)."""
    c0, w0 = _cpu(), time.perf_counter()
    got = fn()
    return time.perf_counter() - w0, _cpu() - c0, got


def _cpu() -> float:
    r = os.times()
    return r.user + r.system + r.children_user + r.children_system


def cat(paths: list[str]) -> int:
    """``cat`` the files to /dev/null (the disk's rate for these bytes)."""
    for i in range(0, len(paths), 500):
        subprocess.run(["cat", *paths[i : i + 500]], stdout=subprocess.DEVNULL, check=True)
    return len(paths)


def decompress_only(files: list[tuple[str, str, int]]) -> int:
    """Expand each file's compression with the codec alone (what a reader cannot beat):
    Python's gzip and lzma modules, the zstd program; uncompressed files are read. Returns
    the expanded bytes."""
    total = 0
    for path, kind, _ in files:
        data = Path(path).read_bytes()
        codec = kind.rsplit(".", 1)[-1] if kind.startswith("qemu.") else kind.partition("-")[2]
        if kind.startswith("libvirt-"):
            data_len = struct.unpack_from("<I", data, 20)[0]
            data = data[92 + data_len :]
        if codec in ("gz", "gzip"):
            total += len(gzip.decompress(data))
        elif codec == "xz":
            total += len(lzma.decompress(data))
        elif codec in ("zst", "zstd"):
            total += len(subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=True).stdout)
        else:
            total += len(data)
    return total


def audit_read(files: list[tuple[str, str, int]], jobs: int) -> list[FileRead]:
    """The audit's file-reading phase exactly as engine.run runs it: batches of
    engine.FILE_BATCH files through work.read_files on the engine."""
    from kvmfpu.audit.work import read_files

    args = [(p, "src-zen5", "devhost-zen5", "host", None, 256 << 20) for p, _, _ in files]
    batches = [tuple(args[i : i + engine.FILE_BATCH]) for i in range(0, len(args), engine.FILE_BATCH)]
    got: dict[str, list[FileRead]] = {}
    with engine.Engine(jobs=jobs) as eng:
        for key, batch in eng.map(read_files, batches, [str(i) for i in range(len(batches))]):
            got[key] = batch
    return [fr for i in range(len(batches)) for fr in got[str(i)]]


def file_bench(n: int, file_mb: float, jobs: int, keep: str | None = None) -> dict[str, Any]:
    """The file-reading benchmark: generate, then (cold: pages evicted first) cat the
    files, the audit's reading phase on ``jobs`` processes and on one; and (warm) the
    codecs alone and the audit's reading per kind on one process."""
    with tempfile.TemporaryDirectory(prefix="kvmfpu-audit-files-", dir=keep) as tmp:
        t0 = time.perf_counter()
        files = write_files(Path(tmp), n, file_mb)
        gen = time.perf_counter() - t0
        paths = [p for p, _, _ in files]
        size = sum(s for _, _, s in files)
        out: dict[str, Any] = {"files": n, "bytes": size, "generated_s": round(gen, 1), "phases": {}}

        def phase(name: str, fn: Any, cold: bool = True) -> Any:
            if cold:
                evict(paths)
            wall, cpu, got = timed(fn)
            out["phases"][name] = {
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "mb_per_s": round(size / wall / 1e6, 1),
                "files_per_s": round(n / wall, 1),
            }
            return got

        phase("cat (cold)", lambda: cat(paths))
        reads = phase(f"audit read, {jobs} processes (cold)", lambda: audit_read(files, jobs))
        phase("audit read, 1 process (cold)", lambda: audit_read(files, 1))
        phase("cat (warm)", lambda: cat(paths), cold=False)
        expanded = phase("codecs alone, 1 process (warm)", lambda: decompress_only(files), cold=False)
        phase("audit read, 1 process (warm)", lambda: audit_read(files, 1), cold=False)
        out["expanded_bytes"] = expanded
        bad = [fr.error for fr in reads if fr.error]
        assert not bad, bad[:3]  # every generated file is one kvmfpu reads
        out["signatures"] = len({v.digest for fr in reads for v in fr.vcpus})
        per_kind = {}
        for kind in FILE_KINDS:
            mine = [f for f in files if f[1] == kind]
            if not mine:
                continue
            b = sum(s for _, _, s in mine)
            w_codec, _, _ = timed(lambda m=mine: decompress_only(m))
            w_read, _, _ = timed(lambda m=mine: audit_read(m, 1))
            per_kind[kind] = {
                "files": len(mine),
                "mb_each": round(b / len(mine) / 1e6, 2),
                "codec_mb_per_s": round(b / w_codec / 1e6, 1),
                "read_mb_per_s": round(b / w_read / 1e6, 1),
                "read_files_per_s": round(len(mine) / w_read, 1),
                "read_vs_codec": round(w_codec / w_read, 2),
            }
        out["kinds"] = per_kind
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


def engines(jobs: int, dask: str) -> list[tuple[str, Any]]:
    """(label, a context manager giving an Engine): the local pool, then a Dask
    LocalCluster of each size in ``dask`` (its startup counts in the run's CPU)."""
    import contextlib

    @contextlib.contextmanager
    def cluster(n: int) -> Any:
        from distributed import LocalCluster

        with (
            LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
            ) as c,
            engine.Engine(scheduler=c.scheduler_address) as eng,
        ):
            yield eng

    out: list[tuple[str, Any]] = [(f"{jobs} local processes", lambda: engine.Engine(jobs=jobs))]
    for n in [int(x) for x in dask.split(",") if x]:
        out.append((f"dask, {n} workers", lambda n=n: cluster(n)))
    return out


def signature_bench(snapshots: int, distinct: int, classes_n: int, jobs: int, dask: str) -> dict[str, Any]:
    """The headline: ``snapshots`` generated signatures x ``classes_n`` classes on each
    engine, with the CPU time of this process and its children (the pool's processes,
    the cluster's workers: reaped when the engine closes) beside the wall time."""
    t0 = time.perf_counter()
    files = reads(snapshots, distinct)
    out: dict[str, Any] = {"generated_s": round(time.perf_counter() - t0, 1), "runs": []}
    dsts = destinations(classes_n)
    classes = SOURCES + dsts
    for label, make in engines(jobs, dask):
        c0, w0 = _cpu(), time.perf_counter()
        with make() as eng:
            run = one(label, eng, classes, dsts, files)
        run["engine_wall_s"] = round(time.perf_counter() - w0, 1)
        run["cpu_s"] = round(_cpu() - c0, 1)
        out["runs"].append(run)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snapshots", type=int, default=1_000_000, help="0: skip the signature benchmark")
    ap.add_argument("--distinct", type=int, default=2_000)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--dask", default="", help="worker counts for Dask LocalClusters, e.g. 1,2,4")
    ap.add_argument("--files", type=int, default=0, help="real-format files to generate and read (0: skip)")
    ap.add_argument("--file-mb", type=float, default=3.0, help="about how large each such file is")
    ap.add_argument("--tmp", default=None, help="where the files are generated (default: $TMPDIR)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, Any] = {}
    if args.snapshots:
        out = signature_bench(args.snapshots, args.distinct, args.classes, args.jobs, args.dask)
    if args.files:
        out["file_read"] = file_bench(args.files, args.file_mb, args.jobs, args.tmp)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if args.snapshots:
        print(
            f"{args.snapshots:,} snapshots ({args.distinct:,} distinct states) "
            f"generated in {out['generated_s']} s"
        )
        for r in out["runs"]:
            print(
                f"{r['engine']:>22}: {r['distinct_source_runs']:,} source runs x "
                f"{r['destinations']} classes = {r['verdicts']:,} verdicts in "
                f"{r['seconds']} s ({r['verdicts_per_s']:,}/s; "
                f"{r['snapshot_rows_per_s']:,} snapshot x class answers/s; "
                f"{r['cpu_s']} s CPU) ({'ok' if r['seconds'] < 300 else 'SLOW'}) [target: < 300 s]"
            )
    if args.files:
        print_files(out["file_read"])
    return 0


def print_files(f: dict[str, Any]) -> None:
    print(
        f"{f['files']:,} real-format files, {f['bytes'] / 1e6:,.0f} MB on disk "
        f"({f['expanded_bytes'] / 1e6:,.0f} MB expanded), {f['signatures']} signatures, "
        f"generated in {f['generated_s']} s"
    )
    disk = f["phases"]["cat (cold)"]["mb_per_s"]
    for name, p in f["phases"].items():
        print(
            f"  {name:>34}: {p['wall_s']:8.2f} s, {p['mb_per_s']:8,.1f} MB/s, "
            f"{p['files_per_s']:8,.1f} files/s ({p['mb_per_s'] / disk:.2f} x cold cat; {p['cpu_s']} s CPU)"
        )
    for kind, k in f["kinds"].items():
        print(
            f"  {kind:>18}: {k['mb_each']:5.2f} MB each: read {k['read_mb_per_s']:7.1f} MB/s "
            f"({k['read_files_per_s']:7.1f} files/s), codec alone {k['codec_mb_per_s']:7.1f} MB/s, "
            f"read/codec {k['read_vs_codec']:.2f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
