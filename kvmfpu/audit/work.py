"""The audit's two kinds of work, as pure functions any process can run: read one state
file down to its vCPUs' signatures, and run one source (a signature or a guest CPU on a
host class) against every destination class through the real migration check.

Both take and return plain, picklable values, so the local process pool and a Dask cluster
run exactly the same code; each process keeps its own caches of host models and modelled
/dev/kvm instances (a destination's Kvm is built once per process, as the matrix does).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, Final

from kvmfpu.audit.inventory import HostClass
from kvmfpu.audit.signature import digest_of, signature
from kvmfpu.blob.errors import InputError

#: Reasons kept per verdict (the first error or condition comes first).
MAX_REASONS: Final = 5


@dataclass(frozen=True)
class VcpuState:
    """One vCPU of a file: its signature and, for the first of a kind, the image itself."""

    digest: str
    signature: dict[str, Any]
    blob: bytes
    restores_init: int = 0


@dataclass(frozen=True)
class FileRead:
    path: str
    source: str  # the class name the file was taken on
    guest: str | None
    vcpus: tuple[VcpuState, ...] = ()
    error: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    """One source run: a guest CPU (and, for files, one state signature) on a source class,
    restored on each destination class."""

    guest: str
    source: HostClass
    destinations: tuple[HostClass, ...]
    digest: str | None = None
    blob: bytes | None = field(default=None, repr=False)
    restores_init: int = 0  # a TCG stream's components restored to init (signature)

    @property
    def key(self) -> str:
        text = "\0".join((self.guest, *self.source.key, self.digest or "-"))
        return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Outcome:
    """One (source run, destination class) verdict."""

    task: str
    destination: str
    verdict: str
    reasons: tuple[str, ...]
    lost_features: tuple[str, ...]
    findings: tuple[dict[str, Any], ...]
    checked: tuple[str, ...]
    not_checked: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.task}/{self.destination}"


@functools.lru_cache(maxsize=64)
def _host(name: str) -> Any:
    from kvmfpu import cpus

    return cpus.load(name)


def read_file(
    path: str, source: str, source_host: str, guest: str | None, fmt: str | None, max_size: int
) -> FileRead:
    """Every vCPU image in ``path`` (any format kvmfpu reads) as a signature at the source
    host's layout; a file kvmfpu cannot read becomes an error, not an exception."""
    from kvmfpu.blob import sources

    notes: list[str] = []
    try:
        layout = _host(source_host).layout
        caps = sources.read(path, fmt, max_size)
        if not caps:
            raise InputError("no xsave image found")
        vcpus = []
        for cap in caps:
            # A QEMU stream carries registers: the image is the one the source host's
            # kvm_put_xsave would build (what the check restores from).
            blob = cap.rebuild(layout) if cap.rebuild is not None else bytes(cap.data)
            sig = signature(blob, layout, cap.extra.get("xfd", 0), cap.restores_init)
            doc = sig.to_json()
            vcpus.append(VcpuState(digest_of(doc), doc, blob, cap.restores_init))
        if guest is None and caps[0].domain_xml:
            guest, said = _guest_of_domain(caps[0].domain_xml, source_host, path)
            notes += said
        notes += [n for cap in caps for n in cap.notes]
        return FileRead(path, source, guest, tuple(vcpus), notes=tuple(dict.fromkeys(notes)))
    except (InputError, OSError, ValueError) as exc:
        return FileRead(path, source, guest, error=str(exc) or type(exc).__name__)


def _guest_of_domain(xml: str, source_host: str, path: str) -> tuple[str, list[str]]:
    """The -cpu value libvirt generates from a save image's domain XML (host-model settled
    on the source host), and what that says."""
    from kvmfpu.qemu.libvirt_cpu import from_domain_xml
    from kvmfpu.qemu.models import UnknownModel

    try:
        g = from_domain_xml(xml, host=lambda: _kvm_of(source_host), what=f"{path}'s domain XML")
    except UnknownModel as exc:
        raise InputError(str(exc).strip('"')) from None
    return g.spec, [f"guest CPU from the image's domain XML: -cpu {g.spec}", *g.notes]


def _kvm_of(host: str) -> Any:
    from kvmfpu.kvm.system import Kvm

    return Kvm(_host(host))


def read_files(batch: tuple[tuple[str, str, str, str | None, str | None, int], ...]) -> list[FileRead]:
    """``read_file`` over a batch; images repeated within the batch travel once."""
    out, seen = [], set()
    for args in batch:
        got = read_file(*args)
        slim = []
        for v in got.vcpus:
            slim.append(v if v.digest not in seen else VcpuState(v.digest, v.signature, b"", v.restores_init))
            seen.add(v.digest)
        out.append(FileRead(got.path, got.source, got.guest, tuple(slim), got.error, got.notes))
    return out


@functools.lru_cache(maxsize=256)
def _endpoint(host: str, kernel: str) -> Any:
    from kvmfpu.migrate.check import endpoint

    return endpoint(f"{host}@{kernel}")


@functools.lru_cache(maxsize=256)
def _kvm(host: str, kernel: str) -> Any:
    from kvmfpu.kvm.system import Kvm

    e = _endpoint(host, kernel)
    return Kvm(e.host, e.kernel, e.flavor)


def run_task(task: Task) -> list[Outcome]:
    """The source half once, then every destination (the matrix's sharing)."""
    from kvmfpu.blob.validate import tcg_restore_warning
    from kvmfpu.migrate.check import guest_at, run_destination, run_source
    from kvmfpu.migrate.report import INCOMPATIBLE, Finding
    from kvmfpu.migrate.vmm import vmm_of

    v = vmm_of(task.source.vmm)
    guest = guest_at(task.guest, v)
    run = run_source(_endpoint(task.source.host, task.source.kernel), guest, v, task.blob)
    # As `kvmfpu migrate --blob` says of a TCG-written stream: its registers do not arrive.
    tcg = tcg_restore_warning(task.restores_init)
    out = []
    for dst in task.destinations:
        dv = vmm_of(dst.vmm)
        try:
            r = run_destination(run, _endpoint(dst.host, dst.kernel), kvm=_kvm(dst.host, dst.kernel), vmm=dv)
        except InputError as exc:  # e.g. a by-field VMM cannot load a raw buffer
            out.append(
                Outcome(
                    task.key,
                    dst.name,
                    INCOMPATIBLE,
                    (str(exc),),
                    (),
                    (),
                    (),
                    ("the destination VMM's restore (it cannot take this state)",),
                )
            )
            continue
        if tcg:
            r.findings.insert(0, Finding("error", "source", f"the state given: {tcg}"))
        ranked = [f for lvl in ("error", "condition") for f in r.findings if f.level == lvl]
        reasons = tuple(dict.fromkeys(f.text for f in ranked))[:MAX_REASONS] or (r.reason,)
        out.append(
            Outcome(
                task.key,
                dst.name,
                r.verdict,
                reasons,
                tuple(r.lost_features),
                tuple(f.to_json() for f in r.findings),
                tuple(r.scope.checked),
                tuple(r.scope.not_checked),
            )
        )
    return out
