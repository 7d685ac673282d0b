"""Run XSAVE-family instructions on this machine's own processor, in user mode.

The C side (``xsave_probe.c``) is compiled once with cffi into a cache directory
(``$KVMFPU_CACHE`` or ``~/.cache/kvmfpu``) and reused. It is the real-silicon oracle the
tests compare :class:`kvmfpu.core.Cpu` against. :func:`probe_unavailable` tells why the
probe cannot run here (no x86-64, no compiler, no XSAVE) so that callers can skip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Final, NamedTuple

_HERE: Final = Path(__file__).resolve().parent
_SOURCES: Final = ("xsave_probe.h", "xsave_probe.c")

#: Operation kinds the probe understands (names match ``enum`` in xsave_probe.h).
KINDS: Final = (
    "XSAVE64", "XSAVE", "XSAVEOPT64", "XSAVEC64", "XSAVES64", "XRSTOR64", "XRSTOR",
    "XRSTORS64", "FXSAVE64", "FXSAVE", "FXRSTOR64", "FXRSTOR", "XGETBV", "XSETBV",
    "VZEROUPPER", "COPY",
)


class ProbeUnavailable(RuntimeError):
    """The real-CPU probe cannot run on this machine."""


class Op(NamedTuple):
    """One instruction: ``kind`` at memory ``offset`` with EDX:EAX = ``rfbm`` and ``ecx``.

    For ``COPY``, ``ecx`` bytes are copied from offset ``rfbm`` to ``offset``.
    """

    kind: str
    offset: int = 0
    rfbm: int = 0
    ecx: int = 0


@dataclass(frozen=True)
class RealFault:
    index: int      # which op faulted
    signal: int     # SIGSEGV, SIGILL, ...
    vector: int     # the CPU's trap number from the signal context (13 = #GP, 6 = #UD, ...)
    error_code: int
    state: bytes    # XSAVE image of the registers at the fault (from the signal frame)


@dataclass(frozen=True)
class RunResult:
    results: tuple[int, ...]   # EDX:EAX of each XGETBV, 0 for the rest
    fault: RealFault | None


def _cache_dir() -> Path:
    root = os.environ.get("KVMFPU_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kvmfpu")
    return Path(root)


def _source_digest() -> str:
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update((_HERE / name).read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]


_module: ModuleType | None = None
_failure: str | None = None


def _build() -> ModuleType:
    import cffi

    digest = _source_digest()
    modname = f"_kvmfpu_xsave_probe_{digest}"
    outdir = _cache_dir() / "native"
    outdir.mkdir(parents=True, exist_ok=True)
    for existing in outdir.glob(f"{modname}*.so"):
        return _import(modname, existing)

    header = (_HERE / "xsave_probe.h").read_text()
    cdef = "\n".join(line for line in header.splitlines()
                     if not line.startswith(("#", "/*")))
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    ffi.set_source(modname, (_HERE / "xsave_probe.c").read_text(),
                   include_dirs=[str(_HERE)],
                   # No SSE/AVX code of the compiler's own between the probed instructions.
                   extra_compile_args=["-O1", "-mgeneral-regs-only"])
    with tempfile.TemporaryDirectory(prefix="kvmfpu-build-") as tmp:
        so = ffi.compile(tmpdir=tmp, verbose=False)
        target = outdir / Path(so).name
        os.replace(so, target)
    return _import(modname, target)


def _import(modname: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise ProbeUnavailable(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def probe_unavailable() -> str | None:
    """None when the probe runs here, else the reason it cannot."""
    global _module, _failure
    if _module is not None:
        return None
    if _failure is not None:
        return _failure
    if platform.machine() not in ("x86_64", "AMD64") or sys.platform != "linux":
        _failure = f"needs x86-64 Linux, this is {platform.machine()} {sys.platform}"
        return _failure
    try:
        _module = _build()
    except Exception as exc:  # compiler missing, headers missing, ...
        _failure = f"cannot build the probe: {type(exc).__name__}: {exc}"
        return _failure
    regs = _cpuid(_module, 1, 0)
    if not regs[2] >> 27 & 1:
        _failure = "the CPU or OS has no XSAVE (CPUID.1:ECX.OSXSAVE=0)"
        _module = None
    return _failure


def _lib() -> Any:
    reason = probe_unavailable()
    if reason is not None:
        raise ProbeUnavailable(reason)
    assert _module is not None
    return _module


def _cpuid(mod: Any, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    out = mod.ffi.new("uint32_t[4]")
    mod.lib.kvmfpu_cpuid(leaf, subleaf, out)
    return (out[0], out[1], out[2], out[3])


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """Execute CPUID on this machine."""
    return _cpuid(_lib(), leaf, subleaf)


class RealCpu:
    """This machine's processor, driven through op sequences over a 4 KiB-aligned buffer."""

    def __init__(self, size: int = 1 << 16):
        mod = _lib()
        self._ffi = mod.ffi
        self._c = mod.lib
        self._raw = self._ffi.new("uint8_t[]", size + 4096)
        base = (int(self._ffi.cast("uintptr_t", self._raw)) + 4095) & ~4095
        self._ptr = self._ffi.cast("uint8_t *", base)
        #: The probe's memory; offsets in ops are into this buffer, which is 4096-aligned.
        self.memory = memoryview(self._ffi.buffer(self._ptr, size)).cast("B")
        self._kinds = {k: getattr(self._c, "KVMFPU_" + k) for k in KINDS}

    def run(self, ops: Sequence[Op]) -> RunResult:
        n = len(ops)
        cops = self._ffi.new("struct kvmfpu_op[]", n)
        for i, op in enumerate(ops):
            c = cops[i]
            c.kind = self._kinds[op.kind]
            c.offset = op.offset
            c.rfbm = op.rfbm & (2**64 - 1)
            c.ecx = op.ecx & 0xFFFFFFFF
        results = self._ffi.new("uint64_t[]", max(n, 1))
        fault = self._ffi.new("struct kvmfpu_fault *")
        self._c.kvmfpu_probe_run(cops, n, self._ptr, results, fault)
        real_fault = None
        if fault.index >= 0:
            buf = self._ffi.new("uint8_t[]", 1 << 16)
            length = self._c.kvmfpu_probe_fault_state(buf, 1 << 16)
            real_fault = RealFault(fault.index, fault.signo, fault.trapno, fault.err,
                                   bytes(self._ffi.buffer(buf, length)))
        return RunResult(tuple(results[i] for i in range(n)), real_fault)
