"""kvmfpu's QEMU models against a real QEMU (Debian's 7.2 here): every model version QEMU 7.2
has, resolved by kvmfpu *at QEMU 7.2*, must equal QEMU's own query-cpu-model-expansion
(type "static": the feature words after x86_cpu_expand_features, before any host filtering),
feature by feature; ``-cpu help`` must list the same models, aliases and feature names.

Expected outcomes: what the installed qemu-system-x86_64 answers. The tests skip without it
and are written for 7.2 (the release Debian 12 ships); another installed release is compared
against kvmfpu resolved at that release when kvmfpu knows it, else skipped with the reason.
No disagreement is known: where one appears, the assertion names the model and both sides.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from typing import Any

import pytest

from kvmfpu.qemu import features as qf
from kvmfpu.qemu import models
from kvmfpu.qemu.models import resolve

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")


def _qmp(commands: list[dict[str, Any]], accel: str = "tcg") -> list[dict[str, Any]]:
    """One QEMU with -machine none, QMP on stdio; the answers in order."""
    assert QEMU is not None
    args = [QEMU, "-machine", "none", "-accel", accel, "-nodefaults", "-display", "none", "-qmp", "stdio"]
    lines = [json.dumps({"execute": "qmp_capabilities"})]
    lines += [json.dumps(c) for c in commands] + [json.dumps({"execute": "quit"})]
    out = subprocess.run(
        args, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120, check=False
    ).stdout
    answers = [m for m in map(json.loads, out.splitlines()) if "return" in m or "error" in m]
    return answers[1 : len(commands) + 1]  # drop qmp_capabilities's


@cache
def _release() -> str:
    v = _qmp([{"execute": "query-version"}])[0]["return"]["qemu"]
    return f"{v['major']}.{v['minor']}"


def _at() -> str:
    rel = _release()
    if rel not in models.RELEASES:
        pytest.skip(
            f"QEMU {rel} is installed; kvmfpu places model versions at {', '.join(models.RELEASES)} only"
        )
    return rel


def _versions_at(rel: str) -> list[str]:
    return [
        f"{m.name}-v{v.version}"
        for m in models.catalogue()
        for v in m.versions
        if models.in_release(m, v.version, rel)
    ]


def _static(
    names: list[str], accel: str = "tcg", props: dict[str, dict[str, Any]] | None = None
) -> dict[str, set[str]]:
    cmds = [
        {
            "execute": "query-cpu-model-expansion",
            "arguments": {
                "type": "static",
                "model": {"name": n, **({"props": props[n]} if props and n in props else {})},
            },
        }
        for n in names
    ]
    out = {}
    for n, a in zip(names, _qmp(cmds, accel), strict=True):
        assert "error" not in a, f"QEMU {_release()} cannot expand {n}: {a['error']}"
        out[n] = {k for k, v in a["return"]["model"]["props"].items() if v is True}
    return out


def test_identity_properties_equal_qemus() -> None:
    # family/model/stepping/vendor/model-id and the minimum levels x86_cpu_load_model sets
    rel = _at()
    names = _versions_at(rel)
    cmds = [
        {"execute": "query-cpu-model-expansion", "arguments": {"type": "static", "model": {"name": n}}}
        for n in names
    ]
    wrong = []
    for n, a in zip(names, _qmp(cmds), strict=True):
        p = a["return"]["model"]["props"]
        g = resolve(n, qemu=rel, accel="tcg")
        m = next(m for m in models.catalogue() if m.name == g.name)
        assert g.version is not None
        vp = models.non_feature_props(m, g.version)
        # x86_cpu_expand_features raises min-xlevel to 0x8000000A when svm is on (TCG keeps
        # Opteron_G2/G3's svm; kvm_default_props turn it off)
        xlevel = max(m.xlevel or 0, 0x8000000A if g.has("svm") else 0)
        ours = (g.vendor, g.family, g.model, g.stepping, vp.get("model-id", m.model_id), m.level, xlevel)
        theirs = (
            p["vendor"],
            p["family"],
            p["model"],
            p["stepping"],
            p["model-id"],
            p["min-level"],
            p["min-xlevel"],
        )
        if ours != theirs:
            wrong.append((n, ours, theirs))
    assert not wrong


def _kvmfpu(spec: str, rel: str, accel: str) -> set[str]:
    g = resolve(spec, qemu=rel, accel=accel)
    return set(g.features | g.msr_features)


def test_every_model_version_equals_qemus_static_expansion_under_tcg() -> None:
    rel = _at()
    names = _versions_at(rel)
    assert len(names) >= 74  # 7.2: 38 models, 74 versions
    theirs = _static(names)
    wrong = {
        n: (sorted(theirs[n] - _kvmfpu(n, rel, "tcg")), sorted(_kvmfpu(n, rel, "tcg") - theirs[n]))
        for n in names
        if theirs[n] != _kvmfpu(n, rel, "tcg")
    }
    assert not wrong, f"(QEMU only, kvmfpu only) per model: {wrong}"


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="no usable /dev/kvm")
def test_under_kvm_the_kvm_defaults_are_applied_the_same_way() -> None:
    # kvm_default_props (kvmclock..., x2apic on; acpi, monitor, svm off): QEMU's expansion with
    # -accel kvm, before filtering against the host.
    rel = _at()
    names = _versions_at(rel)
    theirs = _static(names, accel="kvm")
    wrong = [n for n in names if theirs[n] != _kvmfpu(n, rel, "kvm")]
    assert not wrong


@pytest.mark.parametrize(
    ("model", "props", "spec_tail"),
    [
        ("Skylake-Client-v4", {"xsave": False}, "xsave=off"),  # xsaveopt etc. stay
        ("Cascadelake-Server-v1", {"vmx": False}, "vmx=off"),  # vmx-* MSR words go
        ("Cooperlake-v2", {"lm": False}, "lm=off"),  # vmx-entry-ia32e-mode goes
        ("Icelake-Server-v4", {"arch-capabilities": False}, "arch-capabilities=off"),
        ("EPYC-Rome-v2", {"svm": False}, "svm=off"),  # every SVM bit goes
        ("Westmere-v1", {"avx512f": True, "sse4_1": False}, "avx512f=on,sse4_1=off"),
        ("Snowridge-v1", {"core-capability": False}, "core-capability=off"),
        ("Skylake-Client-v4", {"sgx1": True}, "sgx1=on"),  # 7.2 has no sgx -> sgx1 entry
    ],
)
def test_options_equal_qemus_expansion_with_the_same_properties(
    model: str, props: dict[str, bool], spec_tail: str
) -> None:
    rel = _at()
    theirs = _static([model], props={model: props})[model]
    assert theirs == _kvmfpu(f"{model},{spec_tail}", rel, "tcg")


def test_xsave_off_keeps_the_leaf_d_words_as_qemu_does() -> None:
    # feature_dependencies[] has no XSAVE -> FEAT_XSAVE entry: QEMU keeps xsaveopt & co. in the
    # words (cpu_x86_cpuid zeroes leaf 0xD instead); kvmfpu's components follow the CPUID.
    rel = _at()
    theirs = _static(["Skylake-Client-v4"], props={"Skylake-Client-v4": {"xsave": False}})
    assert "xsaveopt" in theirs["Skylake-Client-v4"]
    g = resolve("Skylake-Client-v4,-xsave", qemu=rel)
    assert g.has("xsaveopt") and g.xcr0 == 0


def _cpu_help() -> tuple[set[str], dict[str, str], set[str]]:
    assert QEMU is not None
    out = subprocess.run(
        [QEMU, "-cpu", "help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    head, _, flags = out.partition("Recognized CPUID flags:")
    listed: set[str] = set()
    aliases: dict[str, str] = {}
    for line in head.splitlines():
        m = re.match(r"x86 (\S+)\s*(.*)$", line)
        if not m:
            continue
        listed.add(m.group(1))
        a = re.match(r"\(alias of (\S+)\)", m.group(2))
        if a:
            aliases[m.group(1)] = a.group(1)
    return listed, aliases, set(flags.split())


def test_cpu_help_lists_the_same_models_and_aliases() -> None:
    rel = _at()
    listed, aliases, _ = _cpu_help()
    ours = set(_versions_at(rel))
    ours |= {m.name for m in models.catalogue() if any(f"{m.name}-v1" == n for n in ours)}
    ours_alias = {
        v.alias: f"{m.name}-v{v.version}"
        for m in models.catalogue()
        for v in m.versions
        if v.alias and f"{m.name}-v{v.version}" in ours
    }
    assert listed - {"base", "host", "max"} == ours | set(ours_alias)
    assert aliases == ours_alias


def test_cpu_help_lists_the_feature_names_kvmfpu_has_for_that_release() -> None:
    rel = _at()
    _, _, flags = _cpu_help()
    # x86_cpu_list prints feat_names[] of every word; kvmfpu's table is newer, so compare the
    # names it dates to 7.2 (first_seen) -- all of them and only them.
    ours = {n for n in qf.FEATURES if qf.first_seen(n) == "7.2"} if rel == "7.2" else None
    if ours is None:
        pytest.skip(f"feature names are dated against 7.2 only (QEMU {rel} installed)")
    assert flags == ours


def test_real_qemu_rejects_what_resolve_rejects() -> None:
    # x86_cpu_parse_featurestr: +/- names verbatim (no feat2prop), bools on/off/yes/no only,
    # migratable only on host/max; each line is one QEMU start that must fail as kvmfpu does.
    rel = _at()
    assert QEMU is not None
    for tail in ("+tsc_deadline", "+nosuch", "avx2=1", "migratable=on", "+SSE2", "family=xyz"):
        spec = f"Skylake-Client,{tail}"
        # accepted, QEMU would wait under -S: the QMP quit on stdin ends it with status 0
        run = subprocess.run(
            [
                QEMU,
                "-machine",
                "pc",
                "-accel",
                "tcg",
                "-cpu",
                spec,
                "-S",
                "-nodefaults",
                "-display",
                "none",
                "-qmp",
                "stdio",
            ],
            input='{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n',
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert run.returncode != 0, spec
        with pytest.raises(models.UnknownModel):
            resolve(spec, qemu=rel)


def _starts(spec: str) -> bool:
    assert QEMU is not None
    run = subprocess.run(
        [
            QEMU,
            "-machine",
            "pc",
            "-accel",
            "tcg",
            "-cpu",
            spec,
            "-S",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
            "stdio",
        ],
        input='{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n',
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return run.returncode == 0


@pytest.mark.parametrize(
    "tail",
    [
        "+sse4_1",
        "+sse4-1",
        "sse4_1=on",
        "lahf_lm=off",
        "+lahf_lm",
        "tsc_deadline=on",
        "avx2=yes",
        "avx2=y",
        "avx2",
        "-avx2,avx2=on",
        "tsc-freq=2G",
        "hv-relaxed",
        "+pmu",
        "phys-bits=40,host-phys-bits=on,l3-cache=off,kvm=off",
        "+i64,xd=on,ffxsr=off,pclmuldq",
        "model-id=Some CPU,family=6,model=85,stepping=4,level=13,xlevel=0x80000008",
    ],
)
def test_what_real_qemu_starts_with_resolve_accepts(tail: str) -> None:
    rel = _at()
    spec = f"Skylake-Client,{tail}"
    assert _starts(spec)
    resolve(spec, qemu=rel)
