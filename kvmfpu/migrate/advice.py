"""What would make a migration work: the same check re-run with one thing changed (another
guest model or version, a newer kernel, a QEMU ``-feature`` option, another VMM). Only
changes whose re-run verdict is better are suggested, with that verdict."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvmfpu.kvm.profiles import NAMED, parse_version
from kvmfpu.migrate.report import RANK as _RANK
from kvmfpu.migrate.report import Advice, Endpoint
from kvmfpu.migrate.vmm import Vmm, vmm_of
from kvmfpu.qemu import models
from kvmfpu.qemu.models import GuestModel

if TYPE_CHECKING:
    from kvmfpu.migrate.report import Report
MAX_PER_KIND = 3


def _better(than: str, verdict: str) -> bool:
    return _RANK[verdict] < _RANK[than]


def _newer(kernel: str) -> list[str]:
    v = parse_version(kernel)
    return [k for k in NAMED if parse_version(k) > v]


def advise(report: Report, blob: bytes | None = None) -> list[Advice]:
    from kvmfpu.migrate.check import check

    base = report.verdict
    out: list[Advice] = []

    def rerun(src: Endpoint, dst: Endpoint, guest: GuestModel, vmm: Vmm | str | None) -> Report:
        v = vmm or report.vmm
        dv = vmm or report.dst_vmm or report.vmm
        return check(src, dst, guest, vmm=v, dst_vmm=dv, blob=blob, advise=False)

    def first(kind: str, tries: list[tuple[str, Callable[[], Report]]], limit: int = 1) -> None:
        found = 0
        for change, fn in tries:
            r = fn()
            if _better(base, r.verdict):
                out.append(Advice(kind, change, r.verdict, r.reason))
                found += 1
                if found >= limit:
                    return

    def at(src: Endpoint | None = None, dst: Endpoint | None = None,
           guest: GuestModel | None = None, vmm: Vmm | str | None = None) -> Callable[[], Report]:
        return lambda: rerun(src or report.src, dst or report.dst, guest or report.guest, vmm)

    def kernel(e: Endpoint, k: str) -> Endpoint:
        return Endpoint(e.host, k, e.flavor)

    # newer kernels: destination, source, both
    dst_k = _newer(report.dst.kernel)
    src_k = _newer(report.src.kernel)
    first("kernel", [(f"destination kernel {k}", at(dst=kernel(report.dst, k))) for k in dst_k])
    first("kernel", [(f"source kernel {k}", at(src=kernel(report.src, k))) for k in src_k])
    if not any(a.kind == "kernel" for a in out):
        first("kernel", [(f"kernel {k} on both hosts",
                          at(src=kernel(report.src, k), dst=kernel(report.dst, k)))
                         for k in sorted(set(dst_k) & set(src_k), key=parse_version)])
    # QEMU -feature options: the lost features all at once, else one feature at a time
    g = report.guest
    if report.lost_features:
        spec = g.spec + "".join(f",-{f}" for f in report.lost_features)
        first("QEMU option", [(f"-cpu {spec}", at(guest=models.resolve(spec)))])
    else:
        feats = sorted(g.features) if not g.passthrough else sorted(models.FEATURES)
        first("QEMU option", [(f"-cpu {g.spec},-{f}", at(guest=models.resolve(f"{g.spec},-{f}")))
                              for f in feats if f != "xsave"], limit=MAX_PER_KIND)
    # other guest models: the best verdicts, then the fewest of the guest's features given up,
    # the same vendor and the nearest generation (QEMU's table order) first
    ranked = []
    had = report.guest_features
    for c in _candidates(g, g.vendor or report.src.host.vendor):
        r = rerun(report.src, report.dst, c, None)
        runs_on_source = not any(f.stage == "source" and f.level != "info" for f in r.findings)
        if _better(base, r.verdict) and runs_on_source:
            given_up = len(had - c.features)
            ranked.append((_RANK[r.verdict], given_up, _distance(g, c), c.label, c, r))
    ranked.sort(key=lambda t: t[:4])
    # Advice that gives up half the guest's features only when nothing else works.
    modest = [t for t in ranked if 2 * t[1] <= len(had)]
    out += [Advice("guest model", f"-cpu {c.label}", r.verdict, r.reason)
            for *_, c, r in (modest or ranked)[:MAX_PER_KIND]]
    # the newest modelled release of the VMM on both hosts (a QEMU without AMX or a
    # subsection, a Firecracker that does not save IA32_XSS)
    newest = vmm_of(report.vmm.name)
    if newest != report.vmm or (report.dst_vmm is not None and report.dst_vmm.name == newest.name
                                and report.dst_vmm != newest):
        first("VMM", [(f"{newest.label} on both hosts", at(vmm=newest))])
    # another VMM
    if report.vmm.name != "qemu":
        first("VMM", [("QEMU (carries registers, not the buffer)", at(vmm="qemu"))])
    return out


def _order() -> dict[str, int]:
    return {m.name: i for i, m in enumerate(models.catalogue())}


def _distance(g: GuestModel, c: GuestModel) -> tuple[int, int, int]:
    """Same vendor first, then the same model's versions (nearest first), then models
    nearer in QEMU's table, which lists each vendor's generations in order."""
    order = _order()
    vendor = 0 if g.vendor is None or c.vendor == g.vendor else 1
    if c.name == g.name and g.version is not None and c.version is not None:
        return vendor, 0, abs(c.version - g.version)
    gi = order.get(g.name, 0)
    return vendor, 1, abs(order.get(c.name, 0) - gi)


def _candidates(g: GuestModel, vendor: str) -> list[GuestModel]:
    """Other versions of the model, then every version of the vendor's other models (for
    host passthrough: the source host's vendor), as the guest's QEMU release has them."""
    out: list[GuestModel] = []
    for m in models.catalogue():
        if m.name != g.name and m.vendor != vendor:
            continue
        versions = []
        for v in sorted(m.versions, key=lambda v: v.version):
            try:
                versions.append(models.resolve(f"{m.name}-v{v.version}", qemu=g.qemu))
            except models.UnknownModel:
                continue               # not in that QEMU release
        if m.name == g.name and not g.passthrough:
            out += [c for c in versions if c.version != g.version]
        elif m.name != g.name:
            out += [c for c in versions if c.xcr0]
    return out
