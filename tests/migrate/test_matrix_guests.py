"""Every guest kind in the matrix: a cell is the `kvmfpu migrate` check its reproduce command
runs, and a guest CPU that depends on the host (libvirt's host-model, a domain's optional
features) is resolved on each source, as libvirt does where the guest starts."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from kvmfpu.kvm.system import Kvm
from kvmfpu.migrate.check import check
from kvmfpu.migrate.matrix import LEVELS, Matrix, compute
from kvmfpu.migrate.matrix_views import guest_lines, to_json, to_text
from kvmfpu.migrate.report_html import render
from kvmfpu.qemu.libvirt_cpu import libvirt_mode

DATA = Path(__file__).resolve().parents[1] / "qemu" / "data"
#: libvirt's own test data (tests/qemu/data/libvirt/PROVENANCE.md): a custom core2duo with
#: optional tm and sse4a; oracle-host-model.xml: <cpu mode='host-model'/>.
EXACT2 = DATA / "libvirt" / "cpu-exact2.xml"
HOST_MODEL_XML = DATA / "libvirt" / "oracle-host-model.xml"
EXPANSION = DATA / "expansion" / "epyc-rome-v1-static.qmp.json"

HOSTS = ["zen4", "zen3", "skylake-sp"]
KERNELS = ["6.6", "5.15:6.6"]

GUESTS = [
    "EPYC",
    "Skylake-Server-v5,-pku,enforce",
    "host-passthrough",
    "host-model",
    "maximum",
    str(EXACT2),
    str(HOST_MODEL_XML),
    str(EXPANSION),
]


def _args(command: str) -> dict[str, str]:
    words = shlex.split(command)
    assert words[:2] == ["kvmfpu", "migrate"] and words[-1] == "--no-advice"
    it = iter(words[2:-1])
    return {k.removeprefix("--"): v for k, v in zip(it, it, strict=True)}


@pytest.mark.parametrize("guest", GUESTS, ids=lambda g: Path(g).name)
def test_every_cell_is_its_migrate_check(guest: str) -> None:
    """The cell's verdict, reason and every finding equal `kvmfpu migrate` run with the
    cell's own reproduce command (check.check resolves the guest on --src)."""
    m = compute(guest, HOSTS, KERNELS)
    assert m.count == len(HOSTS) ** 2 * len(KERNELS)
    for c in m.cells.values():
        a = _args(m.reproduce(c))
        r = check(a["src"], a["dst"], a["guest"], vmm=a["vmm"], advise=False)
        details = tuple(f for level in LEVELS for f in r.findings if f.level == level)
        assert (c.verdict, c.reason, c.details) == (r.verdict, r.reason, details), m.reproduce(c)
        assert c.scope == r.scope


def test_host_model_is_resolved_on_each_source() -> None:
    """libvirt formatdomain, host-model: "the CPU definition is copied just before starting a
    domain ... providing the best guest CPU each host supports", and "during migration,
    complete CPU model definition is transferred to the destination host so the migrated
    guest will see exactly the same CPU model". So each source row runs the host-model of
    its own host and kernel (libvirt_mode on that host), and the destination gets it."""
    m = compute("host-model", HOSTS, KERNELS)
    assert set(m.per_source) == {(h, k) for h in HOSTS for k in ("6.6", "5.15")}
    for (host, kernel), g in m.per_source.items():
        assert g == libvirt_mode("host-model", host=Kvm(m.models[host], kernel), qemu=g.qemu)
    zen4 = m.per_source[("zen4", "6.6")]
    sky = m.per_source[("skylake-sp", "6.6")]
    assert not isinstance(zen4, str) and not isinstance(sky, str)
    assert zen4.name.startswith("EPYC") and sky.name.startswith("Skylake")
    # Zen 4's host-model has AVX-512 (tests/cli/test_guest_spec.py: Zen 3 lacks it), so the
    # destination cannot start it (check=partial: enforce) and libvirt refuses the
    # migration (virCPUx86UpdateLive) ...
    bad = m.cell(("6.6", "6.6"), "zen4", "zen3")
    assert bad.verdict == "incompatible" and "avx512f" in bad.reason
    assert any("guest CPU doesn't match specification: missing features" in f.text for f in bad.details)
    # ... while each host's own host-model restores on the same host.
    assert all(m.cell(("6.6", "6.6"), h, h).verdict != "incompatible" for h in HOSTS)


def test_optional_features_are_settled_on_each_source() -> None:
    """cpu-exact2.xml's optional sse4a: on where the host has it (AMD), off on Intel
    (libvirt settles optional features against the host at start, libvirt_cpu)."""
    m = compute(str(EXACT2), HOSTS, ["6.6"])
    assert m.per_source and m.guest_arg == str(EXACT2.resolve())
    on = {h: m.per_source[(h, "6.6")] for h in HOSTS}
    assert all(not isinstance(g, str) for g in on.values())
    assert m.source_guest("zen4", "6.6").endswith(",+sse4a,-wdt,enforce")
    assert m.source_guest("skylake-sp", "6.6").endswith(",-sse4a,-wdt,enforce")
    # (before: one guest for all sources, optional features left out: "no host given")
    assert all("no host given" not in n for g in on.values() if not isinstance(g, str) for n in g.notes)


def _views(m: Matrix) -> tuple[str, dict[str, object], str]:
    return to_text(m), to_json(m), render(m)


def test_views_say_the_guest_is_per_source() -> None:
    m = compute("host-model", ["zen4", "skylake-sp"], ["6.6"])
    text, doc, page = _views(m)
    assert text.startswith("guest host-model (resolved on each source host), VMM ")
    sky = m.source_guest("skylake-sp", "6.6")
    assert f"  skylake-sp@6.6: {sky}\n" in text and sky.startswith("Skylake-Server")
    guest = doc["guest"]
    assert isinstance(guest, dict) and guest["per_source"] is True and guest["given"] == "host-model"
    assert {
        "source": "skylake-sp",
        "source_kernel": "6.6",
        "spec": m.per_source[("skylake-sp", "6.6")].spec,  # type: ignore[union-attr]
        "label": sky,
    } in guest["on_source"]
    assert "resolved on each source host" in page and sky in page
    # the CSV's guest column is each row's own
    import csv
    import io

    from kvmfpu.migrate.matrix import to_csv

    rows = list(csv.DictReader(io.StringIO(to_csv(m))))
    assert {r["guest"] for r in rows} == {m.source_guest(h, "6.6") for h in m.hosts}
    assert all(r["guest"] == m.source_guest(r["source"], r["source_kernel"]) for r in rows)
    # host passthrough: one spec, each source's own CPU, said so
    p = compute("host-passthrough", ["zen4", "skylake-sp"], ["6.6"])
    assert not p.per_source and "each source host's own CPU" in guest_lines(p)[0]
    assert "(each source host's own CPU)" in to_text(p).splitlines()[0]
    # a -cpu model: one guest everywhere, nothing added
    assert guest_lines(compute("EPYC", ["zen4"], ["6.6"])) == []
