#!/usr/bin/env python3
"""kvmfpu speed measurements, each against the real /dev/kvm in the same run.

    tools/bench.py [--quick] [--json]

* core-pair: the emulated core's XRSTOR + XSAVE of every user component (standard format,
  Skylake-SP model, all components in use) against one KVM_SET_XSAVE + KVM_GET_XSAVE round
  trip through /dev/kvm from Python (fcntl.ioctl). Target: ratio <= 1.
* ioctl-pair: the model's raw ``vcpu.ioctl(KVM_SET_XSAVE, buf)`` + ``vcpu.ioctl(KVM_GET_XSAVE,
  buf)`` (Skylake-SP, newest profile, the guest's AVX-512 state in use) against the same
  two fcntl.ioctl calls on a real vCPU, the two timed interleaved on the thread clock
  (time.thread_time: a busy machine's other work does not count) and the median of the
  repeats taken for each. Target (issue 14): ratio <= 0.5.
* kvm-pair: the model's Vcpu.set_xsave + Vcpu.get_xsave methods (same vCPU state), timed
  the same way against the real pair. Target (issue 14): ratio <= 0.3.
* validate: kvmfpu.blob.validate.Validator.check of a 4 KiB KVM buffer (Skylake-SP, Linux
  6.18, AVX-512 state in use; the vCPU is built once, as ``kvmfpu validate`` does per run)
  against one real KVM_SET_XSAVE ioctl from Python. Target (issue 14): ratio <= 0.1.
* floor: what no Python model of the pair can go below here: a Python call, a 4 KiB copy
  and a header unpack, for each of SET and GET (timed like the pairs).
* start-up: ``kvmfpu --help`` and ``kvmfpu decode`` of one 4 KiB blob, as child processes
  with compiled bytecode (a PYTHONPYCACHEPREFIX warmed first, as an installed package has),
  against a bare ``python -c pass``; the median of the runs. Target (issue 14): <= 3x.
* decode: full structured decode (kvmfpu.blob.load: container detection, layout, every
  register as a field, anomaly checks) of a 4 KiB KVM buffer, in blobs per second; also
  with the kvmfpu-decode/1 JSON document built. Target: >= 5,000 blobs/s.
* spr-10k-amx: 10,000 Sapphire Rapids vCPUs with AMX enabled (guest permission, KVM_SET_CPUID2
  with XTILEDATA, so each has the 11 KB dynamic fpstate), then a full AMX KVM_SET_XSAVE into
  every one so that all their state pages are touched; the peak RSS of that process (a
  child, interpreter included). Target: <= 300 MB.
* stream-rss: ``kvmfpu decode`` of a real multi-GB QEMU 7.2 stream (TCG guest whose RAM is a
  random-filled memory-backend-file; kvmfpu.testing.big_stream), from the file (RAM skipped by
  seeking) and from a pipe (read and dropped): the decoder's peak RSS, interpreter included.
  Target: < 200 MB. ``--stream-gib N`` (default 3; 1 with --quick, 0 to skip).
* matrix: ``kvmfpu matrix`` work for a 20-host x 20-host x 8-kernel grid (every packaged
  host, the eight named kernel profiles, guest Skylake-Server-v5 through QEMU): each cell
  is a full check (guest CPUID, save, transport, KVM_SET_* in QEMU's order, register, MSR
  and guest-restore comparison), in verdicts per second and against the real
  KVM_SET_XSAVE + KVM_GET_XSAVE round trip. Target: the grid in < 10 s.
* matrix-catalog: the same grid for every QEMU model (kvmfpu.qemu.models.names()), one pool
  of ``--jobs`` worker processes (default: the CPU count) kept across the models, in
  verdicts per second, wall and CPU seconds (issue 14). Target: < 60 s. Skipped with
  --quick or --no-catalog.

* audit: ``kvmfpu audit``'s engine on generated snapshot signatures (tools/bench_audit.py:
  ``--audit-snapshots N`` snapshots, N/500 distinct states, x 50 host classes; default
  100,000, 20,000 with --quick, 0 to skip) on the local process pool and on Dask
  LocalClusters of 1, 2 and 4 workers (when distributed is installed): verdicts per second
  each, wall and CPU time, and the time of one verdict against the real KVM_SET_XSAVE +
  KVM_GET_XSAVE round trip. Issue 15's target is 1,000,000 x 50 in < 5 min
  (``tools/bench_audit.py --snapshots 1000000``); here the throughput and its scaling.

Other timings are the best of several repeats of a timed loop (time.perf_counter); the
ratio is what matters, since both sides run on this machine in the same process.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# This checkout's kvmfpu, not an installed copy (tools run from the source tree).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvmfpu import uapi
from kvmfpu.arch.xfeatures import bits
from kvmfpu.testing import booted
from kvmfpu.testing.areas import component_data

ALL = (1 << 64) - 1


@dataclass
class Result:
    name: str
    model_us: float
    real_us: float | None
    target: str

    @property
    def ratio(self) -> float | None:
        return None if self.real_us is None else self.model_us / self.real_us


def best_of(fn: Callable[[], None], loops: int, repeats: int) -> float:
    """Seconds per call: the best of ``repeats`` timed loops of ``loops`` calls."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - t0) / loops)
    return best


@contextlib.contextmanager
def real_vcpu() -> Iterator[tuple[int, dict[str, int]] | None]:
    """(vCPU fd, ioctl numbers) on this machine's /dev/kvm, or None without one."""
    req = uapi.requests()
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        yield None
        return
    try:
        vm = fcntl.ioctl(kvm, req["KVM_CREATE_VM"], 0)
        vcpu = fcntl.ioctl(vm, req["KVM_CREATE_VCPU"], 0)
        try:
            yield vcpu, req
        finally:
            os.close(vcpu)
            os.close(vm)
    finally:
        os.close(kvm)


def real_round_trip(loops: int, repeats: int) -> float | None:
    """KVM_SET_XSAVE + KVM_GET_XSAVE on a fresh vCPU, or None without a usable /dev/kvm."""
    with real_vcpu() as dev:
        if dev is None:
            return None
        vcpu, req = dev
        get_buf, set_buf = bytearray(4096), bytearray(4096)
        fcntl.ioctl(vcpu, req["KVM_GET_XSAVE"], get_buf)
        set_buf[:] = get_buf
        get_req, set_req = req["KVM_GET_XSAVE"], req["KVM_SET_XSAVE"]

        def once() -> None:
            fcntl.ioctl(vcpu, set_req, set_buf)
            fcntl.ioctl(vcpu, get_req, get_buf)
        return best_of(once, loops, repeats)


def real_set_xsave(loops: int, repeats: int) -> float | None:
    """One KVM_SET_XSAVE ioctl (the buffer KVM_GET_XSAVE gave), or None without /dev/kvm."""
    with real_vcpu() as dev:
        if dev is None:
            return None
        vcpu, req = dev
        buf = bytearray(4096)
        fcntl.ioctl(vcpu, req["KVM_GET_XSAVE"], buf)
        set_req = req["KVM_SET_XSAVE"]

        def once() -> None:
            fcntl.ioctl(vcpu, set_req, buf)
        return best_of(once, loops, repeats)


def guest_buffer(host: str, kernel: str) -> bytes:
    """KVM_GET_XSAVE of a model vCPU with x87, AVX-512 and opmask state in use."""
    from kvmfpu.testing.vcpus import ready_vcpu
    v = ready_vcpu(host, kernel)
    with v.guest() as g:
        g.set_reg("zmm3", (1 << 511) | 5)
        g.set_reg("k2", 0xFF)
        g.set_reg("st1", 0x3FFF << 64 | 1 << 63)          # 1.0
    return v.get_xsave()


def validate(loops: int, repeats: int) -> float:
    from kvmfpu.blob.validate import Validator
    buf = guest_buffer("skylake-sp", "6.18")
    check = Validator("skylake-sp", "6.18").check
    assert check(buf).accepted

    def once() -> None:
        check(buf)
    return best_of(once, loops, repeats)


def decode_rate(loops: int, repeats: int) -> tuple[float, float]:
    """Seconds per 4 KiB blob: load() alone, and load() + the JSON document."""
    from kvmfpu.blob import render
    from kvmfpu.blob.load import load
    buf = guest_buffer("skylake-sp", "6.18")
    assert load(buf, "skylake-sp")[0].decoded.field("k2").value == 0xFF

    def plain() -> None:
        load(buf, "skylake-sp")

    def with_json() -> None:
        (it,) = load(buf, "skylake-sp")
        render.to_json(it.decoded, origin=it.capture.origin, fmt=it.capture.fmt,
                       host=it.choice.host, how=it.choice.how)
    n = max(loops // 10, 200)
    return best_of(plain, n, repeats), best_of(with_json, n, repeats)


def core_pair(loops: int, repeats: int) -> float:
    cpu = booted("skylake-sp")
    lay = cpu.host.layout
    for b in bits(cpu.xcr0 & ~3):
        cpu.set_component(b, component_data(b, lay.components[b].size))
    cpu.set_reg("zmm1", (1 << 511) | 7)
    cpu.set_reg("st0", 1 << 63)
    cpu.xsave(0, ALL)
    xrstor, xsave = cpu.xrstor, cpu.xsave
    out = 0x4000

    def once() -> None:
        xrstor(0, ALL)
        xsave(out, ALL)
    return best_of(once, loops, repeats)


def interleaved(model: Callable[[], None], real: Callable[[], None], loops: int,
                repeats: int) -> tuple[float, float]:
    """Seconds per call of ``model`` and ``real``: each repeat times a loop of one then a
    loop of the other on this thread's CPU clock; the median of the repeats for each."""
    clock = time.thread_time
    m_times, r_times = [], []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(loops):
            model()
        t1 = clock()
        for _ in range(loops):
            real()
        t2 = clock()
        m_times.append((t1 - t0) / loops)
        r_times.append((t2 - t1) / loops)
    return statistics.median(m_times), statistics.median(r_times)


def ioctl_pairs(loops: int, repeats: int) -> dict[str, tuple[float, float | None]]:
    """(model, real) seconds per SET+GET pair, raw ioctls and methods, each model figure
    interleaved with the real fcntl.ioctl pair (real None without /dev/kvm)."""
    from kvmfpu.testing.vcpus import ready_vcpu
    v = ready_vcpu("skylake-sp")
    with v.guest() as g:
        g.set_reg("zmm3", (1 << 511) | 5)
        g.set_reg("k2", 0xFF)
        g.set_reg("st1", 1 << 63)
    buf = bytearray(v.get_xsave())
    out_buf = bytearray(4096)
    req = uapi.requests()
    get_req, set_req = req["KVM_GET_XSAVE"], req["KVM_SET_XSAVE"]
    ioctl, set_xsave, get_xsave = v.ioctl, v.set_xsave, v.get_xsave

    def raw() -> None:
        ioctl(set_req, buf)
        ioctl(get_req, out_buf)

    def method() -> None:
        set_xsave(buf)
        get_xsave()

    raw()
    assert out_buf == v.get_xsave()
    with real_vcpu() as dev:
        if dev is None:
            return {"raw": (best_of(raw, loops, repeats), None),
                    "method": (best_of(method, loops, repeats), None)}
        fd = dev[0]
        real_get, real_set = bytearray(4096), bytearray(4096)
        fcntl.ioctl(fd, get_req, real_get)
        real_set[:] = real_get
        sys_ioctl = fcntl.ioctl

        def real() -> None:
            sys_ioctl(fd, set_req, real_set)
            sys_ioctl(fd, get_req, real_get)
        return {"raw": interleaved(raw, real, loops, repeats),
                "method": interleaved(method, real, loops, repeats)}


def pair_floor(loops: int, repeats: int) -> float:
    """Seconds per floor pair: SET = a call that copies 4 KiB into an arena and unpacks
    the header, GET = a call that copies 4 KiB out into the caller's buffer."""
    import struct
    arena = memoryview(bytearray(1 << 20))
    head = struct.Struct("<QQ").unpack_from
    buf, out = bytearray(4096), bytearray(4096)

    def set_(b: bytearray) -> None:
        head(b, 512)
        arena[8192:12288] = b

    def get(o: bytearray) -> None:
        o[:] = arena[8192:12288]

    def once() -> None:
        set_(buf)
        get(out)
    return interleaved(once, once, loops, repeats)[0]


def startup(runs: int) -> dict[str, tuple[float, float]]:
    """Median wall seconds of ``kvmfpu --help`` and ``kvmfpu decode ONE`` (a 4 KiB KVM
    buffer, --host skylake-sp) and of a bare ``python -c pass`` timed interleaved with
    each; children use a private PYTHONPYCACHEPREFIX, warmed by a first run."""
    import subprocess
    import tempfile
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="kvmfpu-bench-") as tmp:
        blob = Path(tmp, "one.bin")
        blob.write_bytes(guest_buffer("skylake-sp", "6.18"))
        env = dict(os.environ, PYTHONPATH=root, PYTHONPYCACHEPREFIX=str(Path(tmp, "pyc")))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        bare = [sys.executable, "-c", "pass"]
        commands = {"--help": [sys.executable, "-m", "kvmfpu", "--help"],
                    "decode ONE": [sys.executable, "-m", "kvmfpu", "decode", "--host",
                                   "skylake-sp", str(blob)]}

        def wall(cmd: list[str]) -> float:
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
            return time.perf_counter() - t0
        out = {}
        for what, cmd in commands.items():
            wall(cmd)                     # compiles the bytecode once
            ours, base = [], []
            for _ in range(runs):
                ours.append(wall(cmd))
                base.append(wall(bare))
            out[what] = (statistics.median(ours), statistics.median(base))
        return out


def amx_child(count: int) -> dict[str, float]:
    """Runs in a child process: build ``count`` AMX vCPUs and report memory."""
    import resource
    import struct

    from kvmfpu.arch import xfeatures as xf
    from kvmfpu.kvm import Kvm
    from kvmfpu.kvm.system import ARCH_REQ_XCOMP_GUEST_PERM

    t0 = time.perf_counter()
    kvm = Kvm("sapphirerapids", "6.6")
    kvm.arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, 18)
    supported = kvm.get_supported_cpuid()
    vcpus = []
    vm = kvm.create_vm()
    for i in range(count):
        if i and i % 4096 == 0:
            vm = kvm.create_vm()
        v = vm.create_vcpu(i % 4096)
        v.set_cpuid2(supported)
        vcpus.append(v)
    built = time.perf_counter() - t0
    layout = kvm.host.layout
    blob = bytearray(vcpus[0].get_xsave2())
    for b in (17, 18):
        c = layout.components[b]
        blob[c.offset:c.offset + c.size] = component_data(b, c.size)
    struct.pack_into("<Q", blob, 512, xf.FPSSE | xf.XTILE)
    for v in vcpus:
        v.set_xsave(blob)
    assert vcpus[-1].get_xsave2()[layout.components[18].offset + 5] == blob[layout.components[18].offset + 5]
    return {"vcpus": count, "uabi_size": vcpus[0].gfpu.uabi_size,
            "kernel_fpstate": vcpus[0].gfpu.fpstate.size,
            "arena_mb": kvm.hk.arena.used / 2**20, "build_s": built,
            "total_s": time.perf_counter() - t0,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def amx_fleet(count: int) -> dict[str, float]:
    import subprocess
    out = subprocess.run([sys.executable, __file__, "--amx-child", str(count)],
                         capture_output=True, text=True, check=True)
    data: dict[str, float] = json.loads(out.stdout)
    return data


def matrix_rate() -> dict[str, float]:
    from kvmfpu import cpus
    from kvmfpu.kvm.profiles import NAMED
    from kvmfpu.migrate.matrix import compute
    hosts = list(cpus.names())[:20]
    m = compute("Skylake-Server-v5", hosts, list(NAMED))
    return {"hosts": len(hosts), "kernels": len(NAMED), "verdicts": m.count,
            "seconds": m.seconds, "verdicts_per_s": m.count / m.seconds}


def catalog_rate(jobs: int) -> dict[str, float]:
    """Every QEMU model x the first 20 packaged hosts x the 8 named kernels, one worker pool
    (``jobs`` processes) kept across the models; wall and CPU seconds (this process and its
    workers: the machine is shared, so both are reported)."""
    import resource

    from kvmfpu import cpus
    from kvmfpu.kvm.profiles import NAMED
    from kvmfpu.migrate.matrix import Pool, compute, load_hosts
    from kvmfpu.qemu import models
    hosts = list(cpus.names())[:20]
    loaded, _ = load_hosts(hosts)
    verdicts = 0

    def cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    with Pool(loaded, jobs) as pool:
        for name in models.names():
            verdicts += compute(name, hosts, list(NAMED), pool=pool).count
    wall = time.perf_counter() - t0
    return {"models": len(models.names()), "hosts": len(hosts), "kernels": len(NAMED),
            "jobs": jobs, "verdicts": verdicts, "seconds": wall, "cpu_seconds": cpu() - c0,
            "verdicts_per_s": verdicts / wall}


def stream_rss(gib: int) -> dict[str, float] | None:
    """Peak RSS of decoding a real ``gib`` GiB stream, file and pipe (None without QEMU)."""
    import tempfile

    from kvmfpu.testing import big_stream
    from kvmfpu.testing.qemu import QemuUnavailable
    if gib <= 0 or big_stream.missing_tools():
        return None
    with tempfile.TemporaryDirectory(prefix="kvmfpu-bench-") as tmp:
        try:
            stream = big_stream.make(Path(tmp), gib)
        except QemuUnavailable:
            return None
        out: dict[str, float] = {"gib": gib, "stream_bytes": stream.stat().st_size}
        for how in ("file", "pipe"):
            t0 = time.perf_counter()
            rss, _ = big_stream.peak_rss(stream, pipe=how == "pipe")
            out[f"{how}_max_rss_mb"] = rss / 1e6
            out[f"{how}_s"] = time.perf_counter() - t0
        return out


def audit_throughput(snapshots: int) -> dict[str, Any] | None:
    """tools/bench_audit.py's signature benchmark at ``snapshots`` x 50 classes, on the local
    pool and Dask 1, 2, 4 workers (None when ``snapshots`` is 0)."""
    import importlib.util
    import subprocess
    if snapshots <= 0:
        return None
    dask = "1,2,4" if importlib.util.find_spec("distributed") else ""
    tool = Path(__file__).resolve().parent / "bench_audit.py"
    out = subprocess.run([sys.executable, str(tool), "--snapshots", str(snapshots), "--distinct",
                          str(max(snapshots // 500, 1)), "--classes", "50", "--dask", dask,
                          "--json"], capture_output=True, text=True, check=True)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def print_audit(audit: dict[str, Any] | None, real: float | None) -> None:
    if audit is None:
        print("audit: skipped (--audit-snapshots 0)")
        return
    for r in audit["runs"]:
        per = r["seconds"] / r["verdicts"]
        vs = "" if real is None else f", {per / real:.0f}x one real KVM_SET+GET_XSAVE round trip"
        print(f"audit: {r['snapshots']:,} snapshots x {r['destinations']} classes "
              f"({r['distinct_source_runs']:,} source runs), {r['engine']}: {r['verdicts']:,} "
              f"verdicts in {r['seconds']} s ({r['verdicts_per_s']:,}/s; {per * 1e3:.1f} ms "
              f"each{vs}; {r['cpu_s']} s CPU)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer loops (noisier)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--amx-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--no-catalog", action="store_true",
                    help="skip the matrix catalog (every QEMU model; a minute or more)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="the catalog's worker processes (default: the CPU count)")
    ap.add_argument("--stream-gib", type=int, default=None,
                    help="size of the stream-rss measurement's QEMU stream (0: skip)")
    ap.add_argument("--audit-snapshots", type=int, default=None,
                    help="snapshots in the audit measurement (0: skip)")
    args = ap.parse_args()
    if args.amx_child:
        print(json.dumps(amx_child(args.amx_child)))
        return 0
    loops, repeats = (2000, 3) if args.quick else (20000, 7)

    real = real_round_trip(loops, repeats)
    real_set = real_set_xsave(loops, repeats)
    decode_s, decode_json_s = decode_rate(loops, repeats)
    pairs = ioctl_pairs(loops, repeats)
    results = [Result("core-pair: XRSTOR+XSAVE, all user components, skylake-sp",
                      core_pair(loops, repeats), real, "ratio <= 1 vs KVM_SET+GET_XSAVE"),
               Result("ioctl-pair: vcpu.ioctl(KVM_SET_XSAVE)+ioctl(KVM_GET_XSAVE), skylake-sp, "
                      "newest profile, interleaved, thread clock", *pairs["raw"],
                      "ratio <= 0.5 vs KVM_SET+GET_XSAVE"),
               Result("kvm-pair: Vcpu.set_xsave+get_xsave, skylake-sp, newest profile, "
                      "interleaved, thread clock", *pairs["method"],
                      "ratio <= 0.3 vs KVM_SET+GET_XSAVE"),
               Result("validate: Validator.check, 4 KiB, skylake-sp, Linux 6.18",
                      validate(loops, repeats), real_set, "ratio <= 0.1 vs one KVM_SET_XSAVE"),
               Result("floor: a Python call + a 4 KiB copy + a header unpack, SET and GET",
                      pair_floor(loops, repeats), real, "reference, no target")]
    start = startup(5 if args.quick else 15)
    fleet = amx_fleet(10_000)
    grid = matrix_rate()
    catalog = None if args.no_catalog or args.quick else catalog_rate(args.jobs)
    stream = stream_rss(args.stream_gib if args.stream_gib is not None else
                        1 if args.quick else 3)
    audit = audit_throughput(args.audit_snapshots if args.audit_snapshots is not None else
                             20_000 if args.quick else 100_000)
    if args.json:
        json.dump({"audit": audit, "timings": [dict(asdict(r), ratio=r.ratio) for r in results],
                   "decode_blobs_per_s": 1 / decode_s,
                   "decode_json_blobs_per_s": 1 / decode_json_s,
                   "startup_s": {k: {"kvmfpu": v[0], "bare_python": v[1]}
                                 for k, v in start.items()},
                   "spr_10k_amx": fleet, "matrix": grid, "matrix_catalog": catalog,
                   "stream_rss": stream},
                  sys.stdout, indent=2)
        print()
        return 0
    print(f"real KVM_SET_XSAVE+KVM_GET_XSAVE round trip: "
          f"{'n/a (no /dev/kvm)' if real is None else f'{real * 1e6:.2f} us'}")
    print(f"real KVM_SET_XSAVE alone: "
          f"{'n/a (no /dev/kvm)' if real_set is None else f'{real_set * 1e6:.2f} us'}")
    for r in results:
        limit = {"validate": 0.1, "ioctl-pair": 0.5, "kvm-pair": 0.3,
                 "floor": float("inf")}.get(r.name.split(":")[0], 1.0)
        ratio = "" if r.ratio is None else \
            f"  ratio {r.ratio:.2f} ({'ok' if r.ratio <= limit else 'SLOWER'})"
        print(f"{r.name}: {r.model_us * 1e6:.2f} us{ratio}   [target: {r.target}]")
        if r.name.startswith(("ioctl-pair", "kvm-pair")) and r.real_us is not None:
            print(f"  (the real pair timed interleaved with it: {r.real_us * 1e6:.2f} us)")
    for what, (secs, bare) in start.items():
        ratio = secs / bare
        print(f"start-up: kvmfpu {what}: {secs * 1e3:.0f} ms, {ratio:.1f}x `python -c pass` "
              f"({bare * 1e3:.0f} ms) ({'ok' if ratio <= 3 else 'SLOWER'}) [target: <= 3x]")
    rate, json_rate = 1 / decode_s, 1 / decode_json_s
    ok = "ok" if rate >= 50_000 and json_rate >= 20_000 else "SLOW"
    print(f"decode: {rate:,.0f} blobs/s ({decode_s * 1e6:.1f} us each; "
          f"{json_rate:,.0f}/s with the JSON document) "
          f"({ok}) [target: >= 50,000 blobs/s, JSON >= 20,000/s]")
    ok = "ok" if fleet["max_rss_mb"] <= 300 else "OVER"
    print(f"spr-10k-amx: {fleet['vcpus']:.0f} vCPUs, uabi_size {fleet['uabi_size']:.0f}, "
          f"fpstate {fleet['kernel_fpstate']:.0f} B each; arena {fleet['arena_mb']:.1f} MB; "
          f"peak RSS {fleet['max_rss_mb']:.1f} MB ({ok}) [target: <= 300 MB]; "
          f"built in {fleet['build_s']:.2f} s, filled in {fleet['total_s']:.2f} s")
    if stream is None:
        print("stream-rss: n/a (no QEMU, or --stream-gib 0)")
    else:
        worst = max(stream["file_max_rss_mb"], stream["pipe_max_rss_mb"])
        print(f"stream-rss: {stream['stream_bytes'] / 2**30:.2f} GiB QEMU stream: peak RSS "
              f"{stream['file_max_rss_mb']:.1f} MB from the file ({stream['file_s']:.1f} s), "
              f"{stream['pipe_max_rss_mb']:.1f} MB from a pipe ({stream['pipe_s']:.1f} s) "
              f"({'ok' if worst < 200 else 'OVER'}) [target: < 200 MB]")
    per = grid["seconds"] / grid["verdicts"]
    vs = "" if real is None else f", {per / real:.0f}x one real KVM_SET+GET_XSAVE round trip"
    print(f"matrix: {grid['hosts']:.0f} x {grid['hosts']:.0f} hosts x {grid['kernels']:.0f} "
          f"kernels = {grid['verdicts']:.0f} verdicts in {grid['seconds']:.2f} s "
          f"({grid['verdicts_per_s']:,.0f}/s; {per * 1e6:.0f} us each{vs}) "
          f"({'ok' if grid['seconds'] < 10 else 'SLOW'}) [target: < 10 s]")
    if catalog is None:
        print("matrix-catalog: skipped (--quick or --no-catalog)")
    else:
        print(f"matrix-catalog: {catalog['models']:.0f} QEMU models x {catalog['hosts']:.0f} x "
              f"{catalog['hosts']:.0f} hosts x {catalog['kernels']:.0f} kernels = "
              f"{catalog['verdicts']:,.0f} verdicts in {catalog['seconds']:.1f} s with "
              f"{catalog['jobs']:.0f} jobs ({catalog['verdicts_per_s']:,.0f}/s; "
              f"{catalog['cpu_seconds']:.1f} CPU s) "
              f"({'ok' if catalog['seconds'] < 60 else 'SLOW'}) [target: < 60 s]")
    print_audit(audit, real)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
