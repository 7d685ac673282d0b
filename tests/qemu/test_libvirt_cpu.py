"""kvmfpu.qemu.libvirt_cpu: a domain's <cpu> -> the -cpu value libvirt 9.0 generates.

Expected values, each named where it is used:

- libvirt's own test pairs (tests/qemuxmlconfdata/*.xml -> *.x86_64-latest.args, commits
  in data/libvirt/qemuxmlconfdata.json and PROVENANCE.md);
- what the real libvirt 9.0.0-4+deb12u2 here printed for ``virsh domxml-to-native
  qemu-argv`` (TCG domains; recorded in data/libvirt/oracle.json, and re-run live by
  ``test_real_libvirt`` where libvirtd can run: root, virsh, libvirtd, QEMU).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmfpu.kvm.system import Kvm
from kvmfpu.qemu import expansion, libvirt_cpu
from kvmfpu.qemu import features as qf
from kvmfpu.qemu.libvirt_cpu import from_domain_xml, libvirt_mode, parse, qemu_cpu_arg
from kvmfpu.qemu.models import UnknownModel

DATA = Path(__file__).parent / "data" / "libvirt"
ORACLE = json.loads((DATA / "oracle.json").read_text())


def _tcg_max(reply: str | None = None) -> expansion.ExpandedGuest:
    """What the TCG "host" offers: QEMU 7.2's static expansion of max under TCG (the data
    libvirt's TCG host CPU comes from), recorded here (PROVENANCE.md) or given live."""
    return expansion.from_json(reply or (DATA / "tcg-max-static.qmp.json").read_text())


def _kvmfpu_line(name: str, host: expansion.ExpandedGuest) -> str:
    """kvmfpu's -cpu for a TCG domain of data/libvirt: optional features and host-model
    settled against ``host`` (the TCG max expansion), as libvirt settles them."""
    offered = set(host.features | host.msr_features)
    cpu = parse((DATA / name).read_text())
    if cpu.mode == "host-model" or cpu.match == "minimum":
        sig = (host.family or 0, host.model or 0)
        model, req, dis = libvirt_cpu.decode(offered, host.vendor, sig, qemu="7.2", accel="tcg")
        return ",".join([model, *libvirt_cpu.options(req, dis)])
    return qemu_cpu_arg(cpu, offered=offered)[0]


# -- libvirt's own XML -> args pairs ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(json.loads((DATA / "qemuxmlconfdata.json").read_text())["pairs"]))
def test_libvirt_test_pairs(name: str) -> None:
    """libvirt tests/qemuxmlconfdata/<name>: the -cpu value of the .x86_64-latest.args.
    The optional features are settled against libvirt's test host; its answers (tm, acpi,
    vmx, est on; sse4a off) are the ones those .args files show."""
    pair = json.loads((DATA / "qemuxmlconfdata.json").read_text())["pairs"][name]
    cpu = parse((DATA / f"{name}.xml").read_text())
    got, _ = qemu_cpu_arg(cpu, offered={"tm", "acpi", "vmx", "est"})
    assert got == pair["cpu"]


# -- the real libvirt 9.0 here, recorded ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n, r in ORACLE["results"].items() if "cpu" in r))
def test_recorded_libvirt_cpu_line(name: str) -> None:
    """oracle.json: libvirt 9.0's -cpu for each XML (policies, renames, filtered names,
    aliases, vendor_id, removed features, check none/partial/full/default, maximum,
    host-model and match=minimum with the TCG host)."""
    expected = ORACLE["results"][name]["cpu"]
    got = _kvmfpu_line(name, _tcg_max())
    assert got == expected


@pytest.mark.parametrize("name", sorted(n for n, r in ORACLE["results"].items() if "error" in r))
def test_recorded_libvirt_refusals(name: str) -> None:
    """What libvirt 9.0 refuses, kvmfpu refuses too (one line naming the same cause)."""
    expected = ORACLE["results"][name]["error"]
    cpu_text = (DATA / name).read_text()
    if "host-passthrough" in cpu_text:
        # libvirt refuses host-passthrough for a TCG domain (no KVM); kvmfpu models the
        # guest under KVM and says so instead
        assert "not supported by hypervisor" in expected
        g = from_domain_xml(cpu_text)
        assert g.passthrough and any("type='qemu'" in n for n in g.notes)
        return
    with pytest.raises(UnknownModel) as exc:
        from_domain_xml(cpu_text, host=Kvm("zen4", "6.6"))
    assert ORACLE["results"][name]["kvmfpu"] in str(exc.value)


def test_policies_map_and_renames() -> None:
    """force/require -> =on, disable/forbid -> =off; the virQEMUCapsCPUFeaturesX86 renames;
    cmt/mbm_*/osxsave/ospke never passed (virQEMUCapsCPUFilterFeatures); names without a
    table entry (sse4.2, md-clear) pass unchanged (oracle-custom-all.xml)."""
    arg, notes = qemu_cpu_arg(parse((DATA / "oracle-custom-all.xml").read_text()), offered=set())
    opts = arg.split(",")
    for on in ("ss=on", "lahf-lm=on", "ds-cpl=on", "nodeid-msr=on", "perfctr-nb=on", "tsc-adjust=on"):
        assert on in opts
    for off in ("pclmulqdq=off", "cmp-legacy=off", "fxsr-opt=off", "perfctr-core=off"):
        assert off in opts
    assert not any(o.split("=")[0] in ("cmt", "mbm_total", "mbm_local", "osxsave", "ospke") for o in opts)
    assert sum("never passes" in n for n in notes) == 5
    assert "sse4.2=on" in opts and "md-clear=off" in opts
    # optional against a host that has none of them: off
    assert {"avx512f=off", "pku=off", "xsave=off"} <= set(opts)


def test_check_values_and_enforce() -> None:
    """check=none/partial/full do not change the -cpu line (real libvirt 9.0: the check
    XMLs give the same line); partial and full refuse to start like QEMU's enforce."""
    base = "<cpu mode='custom' match='exact' check='{}'><model>qemu64</model></cpu>"
    for check, enforce in (("none", False), ("partial", True), ("full", True)):
        g = from_domain_xml(base.format(check))
        assert g.enforce is enforce and g.name == "qemu64"
        assert g.notes[0] == "libvirt 9.0 generates -cpu qemu64"
    # qemuDomainDefCPUPostParse defaults: partial for custom, none for passthrough/maximum
    assert from_domain_xml("<cpu><model>qemu64</model></cpu>").enforce
    assert not libvirt_mode("maximum").enforce
    assert not libvirt_mode("host-passthrough").enforce


def test_paravirt_features_change_the_kvm_leaf() -> None:
    """<apic eoi>, <pvspinlock>, <kvm> and the kvmclock timer set FEAT_KVM bits
    (CPUID 0x40000001 EAX): the resolved guest has them as libvirt asked (oracle-paravirt.xml:
    kvm=off hides the whole leaf; oracle-kvm-features.xml keeps it)."""
    g = from_domain_xml((DATA / "oracle-kvm-features.xml").read_text())
    assert {"kvm-pv-eoi", "kvm-hint-dedicated", "kvm-poll-control"} <= g.features
    assert not {"kvm-pv-unhalt", "kvm-pv-ipi"} & g.features
    # kvm=off: x86_cpu_expand_features clears the FEAT_KVM word (kvm-pv-unhalt asked on too)
    hidden = from_domain_xml((DATA / "oracle-paravirt.xml").read_text())
    assert not {f for f in hidden.features if qf.FEATURES[f][0].word == "FEAT_KVM"}


def test_unmodelled_children_are_said() -> None:
    g = from_domain_xml(
        "<cpu mode='maximum'><cache mode='passthrough'/><maxphysaddr mode='passthrough'/></cpu>"
    )
    assert sum("not modelled and left out" in n for n in g.notes) == 2


def test_no_cpu_element_is_qemus_default() -> None:
    """No <cpu> (or no <model>): libvirt 9.0 here writes -cpu qemu64 (oracle-no-cpu-*.xml);
    a TCG domain's custom CPU is not checked against the host by default, a KVM one is."""
    g = from_domain_xml((DATA / "oracle-no-cpu-pc.xml").read_text())
    assert g.name == "qemu64" and not g.enforce and any("default CPU type" in n for n in g.notes)
    kvm = from_domain_xml("<domain type='kvm'><name>x</name></domain>")
    assert kvm.name == "qemu64" and kvm.enforce


def test_modes() -> None:
    assert libvirt_mode("host-passthrough").passthrough
    assert libvirt_mode("host-passthrough").name == "host"
    assert libvirt_mode("maximum").name == "max"
    g = from_domain_xml(
        "<cpu mode='host-passthrough' migratable='off'><feature policy='disable' name='avx2'/></cpu>"
    )
    assert g.spec == "host,migratable=off,avx2=off"
    with pytest.raises(UnknownModel, match="host-model: libvirt computes it on the host"):
        libvirt_mode("host-model")
    with pytest.raises(UnknownModel, match="libvirt's CPU modes"):
        libvirt_mode("host-modle")


def test_host_model_on_kvm_hosts() -> None:
    """host-model on a kvmfpu host: a cpu_map model of the host's vendor, the host's
    extra features on; the guest QEMU builds there loses nothing (libvirt's host-model
    is what the host offers)."""
    from kvmfpu.qemu.guest_cpuid import build

    for host, vendor in (
        ("zen4", "AuthenticAMD"),
        ("skylake-sp", "GenuineIntel"),
        ("sapphirerapids", "GenuineIntel"),
    ):
        kvm = Kvm(host, "6.6")
        g = libvirt_mode("host-model", host=kvm)
        assert g.vendor == vendor
        assert any("x86Decode" in n and "APPROXIMATED" in n for n in g.notes)
        assert build(kvm, g).filtered == [], host


def test_host_model_needs_the_host_lazily() -> None:
    calls = []

    def make() -> Kvm:
        calls.append(1)
        return Kvm("zen4", "6.6")

    from_domain_xml("<cpu><model>qemu64</model></cpu>", host=make)
    assert calls == []  # a custom model never builds the host
    from_domain_xml("<cpu mode='host-model'/>", host=make)
    assert calls == [1]


def test_domain_features_reach_the_cpu_line() -> None:
    """<kvm><hidden>, <pmu> after the features (oracle-custom-all.xml); <timer name='tsc'
    frequency> last, as libvirt's test cpu-tsc-frequency .args ends in
    "invtsc=on,tsc-frequency=4567890000" (libvirt/libvirt@ba16113c76050a10bbccaae0192a0d30f97de5ae)."""
    arg, _ = qemu_cpu_arg(parse((DATA / "oracle-custom-all.xml").read_text()), offered=set())
    assert arg.endswith(",kvm=off,pmu=off")
    cpu = parse(
        "<domain type='kvm'><cpu><model>Haswell</model><feature policy='require' name='invtsc'/></cpu>"
        "<clock offset='utc'><timer name='tsc' frequency='4567890000'/></clock></domain>"
    )
    assert qemu_cpu_arg(cpu)[0].endswith(",invtsc=on,tsc-frequency=4567890000")


BAD = [
    ("<domain><cpu>", "malformed XML"),
    ("<cpu><model>Skylake-Foo</model></cpu>", "unknown QEMU CPU model 'Skylake-Foo'"),
    (
        "<cpu><model>qemu64</model><feature policy='require' name='avx512_vnni'/></cpu>",
        "unknown CPU feature: avx512_vnni",
    ),
    ("<cpu><model>qemu64</model><feature policy='maybe' name='avx'/></cpu>", "policy 'maybe'"),
    ("<cpu mode='host-modle'/>", "libvirt's modes"),
    ("<cpu check='strict'><model>qemu64</model></cpu>", "check='strict'"),
    ("<cpu><model>qemu64</model><feature name='pconfig'/></cpu>", "'pconfig' is not a QEMU CPU property"),
    ("<vm/>", "root element <vm>"),
    (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>'
        "<cpu><model>&lol2;</model></cpu>",
        "DOCTYPE or ENTITY",
    ),
    ("<cpu><model>qemu64</model></cpu>" + " " * libvirt_cpu.MAX_XML, "more than the"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m for _, m in BAD])
def test_bad_input(text: str, message: str) -> None:
    with pytest.raises(UnknownModel) as exc:
        from_domain_xml(text)
    assert message in str(exc.value) and "\n" not in str(exc.value)


# -- live: the real libvirt 9.0 here ------------------------------------------------------

LIVE = ("oracle-custom-all.xml", "oracle-host-model.xml", "oracle-maximum.xml", "oracle-paravirt.xml")


def _libvirt_usable() -> str | None:
    if os.geteuid() != 0:
        return "not root: libvirtd's qemu:///system needs root"
    for tool in ("virsh", "libvirtd", "virtlogd", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _running(name: str) -> bool:
    return subprocess.run(["pgrep", "-x", name], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[None]:
    """libvirtd and virtlogd for the session: started here when not running (and stopped
    again, by the pid they wrote), used as they are when they are."""
    why = _libvirt_usable()
    if why:
        pytest.skip(why)
    started = []
    for daemon, pidfile in (("virtlogd", "/run/virtlogd.pid"), ("libvirtd", "/run/libvirtd.pid")):
        if not _running(daemon):
            subprocess.run([daemon, "-d"], check=False, timeout=60)
            started.append(pidfile)
    deadline = time.monotonic() + 60
    while subprocess.run(
        ["virsh", "-c", "qemu:///system", "uri"], capture_output=True, check=False
    ).returncode:
        if time.monotonic() > deadline:
            pytest.skip("libvirtd did not answer within 60 s")
        time.sleep(1)
    yield
    for pidfile in reversed(started):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(Path(pidfile).read_text().split()[0]), 15)


def _domxml_to_native(path: Path) -> str:
    out = subprocess.run(
        ["virsh", "-c", "qemu:///system", "domxml-to-native", "qemu-argv", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    return words[words.index("-cpu") + 1]


def _live_tcg_max() -> str:
    """QEMU's own answer, now: query-cpu-model-expansion static of max under TCG."""
    cmds = [
        {"execute": "qmp_capabilities"},
        {"execute": "query-cpu-model-expansion", "arguments": {"type": "static", "model": {"name": "max"}}},
        {"execute": "quit"},
    ]
    out = subprocess.run(
        [
            "qemu-system-x86_64",
            "-machine",
            "none",
            "-accel",
            "tcg",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
            "stdio",
        ],
        input="\n".join(map(json.dumps, cmds)) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    return next(line for line in out.splitlines() if '"model"' in line)


@pytest.mark.parametrize("name", LIVE)
def test_real_libvirt(libvirtd: None, name: str) -> None:
    """virsh domxml-to-native on the real libvirt 9.0 (each call re-probes QEMU: ~40 s)
    against kvmfpu settled on QEMU's live TCG max expansion; the custom XML holds every
    policy, rename, filtered name and the domain features in one domain."""
    real = _domxml_to_native(DATA / name)
    assert real == _kvmfpu_line(name, _tcg_max(_live_tcg_max()))
