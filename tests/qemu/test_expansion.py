"""kvmfpu.qemu.expansion: a QEMU query-cpu-model-expansion reply as a guest CPU.

Samples: data/expansion/epyc-rome-v1-{static,full}.qmp.json, the replies of the real QEMU
7.2.22 here (Debian 1:7.2+dfsg-7+deb12u18+b3, ``-machine none -accel tcg``; PROVENANCE.md).
Expected: type static of a model is the feature words after x86_cpu_expand_features
before host filtering, which tests/qemu/test_models_real_qemu.py shows equal to
kvmfpu.qemu.models.resolve at 7.2 for every model; so both replies must give resolve's
features. test_live re-asks the installed QEMU.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kvmfpu.qemu import expansion, models
from kvmfpu.qemu.models import UnknownModel

DATA = Path(__file__).parent / "data" / "expansion"


@pytest.mark.parametrize("kind", ["static", "full"])
def test_reply_is_the_models_features(kind: str) -> None:
    text = (DATA / f"epyc-rome-v1-{kind}.qmp.json").read_text()
    g = expansion.from_json(text)
    want = models.resolve("EPYC-Rome-v1", qemu="7.2", accel="tcg")
    assert g.features == want.features and g.msr_features == want.msr_features
    assert (g.xcr0, g.xss) == (want.xcr0, want.xss)
    assert g.vendor == "AuthenticAMD" and g.family == 23
    assert g.label == ("expansion:base" if kind == "static" else "expansion:EPYC-Rome-v1")
    # spec: a -cpu value giving the same features (what advice re-runs start from); QEMU's
    # TCG expansion lacks the KVM defaults (kvm_default_props) and has TCG's own
    again = models.resolve(g.spec)
    assert again.features == g.features and g.spec.startswith("EPYC-Rome-v1,")


def test_every_accepted_shape() -> None:
    """The whole reply, its return object, or the CpuModelInfo (qapi CpuModelExpansionInfo)."""
    reply: dict[str, Any] = json.loads((DATA / "epyc-rome-v1-full.qmp.json").read_text())
    shapes = (reply, reply["return"], reply["return"]["model"])
    feats = {expansion.from_reply(s).features for s in shapes}
    assert len(feats) == 1


def test_unknown_properties_are_said_not_guessed() -> None:
    g = expansion.from_reply({"model": {"name": "x", "props": {"sse2": True, "avx42": True, "fpu": False}}})
    assert g.features == frozenset({"sse2"})
    assert any("avx42" in n for n in g.notes)


def test_runs_as_migrate_guest() -> None:
    """The expansion is a fixed feature set: migrate runs it at any QEMU release."""
    from kvmfpu.migrate.check import COMPATIBLE, INCOMPATIBLE, check

    path = DATA / "epyc-rome-v1-static.qmp.json"
    r = check("zen3@6.6", "zen4@6.6", str(path), vmm="qemu@7.2", advise=False)
    assert r.verdict == COMPATIBLE and r.guest.label == "expansion:base"
    # Zen 1 lacks clwb, rdpid, wbnoinvd...: incompatible, and the advice re-runs work
    r = check("zen4@6.6", "zen1@6.6", str(path))
    assert r.verdict == INCOMPATIBLE and any(a.kind == "QEMU option" for a in r.advice)


@pytest.mark.parametrize(
    "text,message",
    [
        ("{", "malformed JSON"),
        ("[1, 2]", "not a query-cpu-model-expansion reply"),
        ('{"return": {"model": {"name": "x", "props": []}}}', "props is not an object"),
        ('{"error": {"class": "GenericError"}}', "not a query-cpu-model-expansion reply"),
        ("[" * 100000, "malformed JSON"),
        (" " * (expansion.MAX_JSON + 1), "more than the"),
    ],
)
def test_bad_input(text: str, message: str) -> None:
    with pytest.raises(UnknownModel) as exc:
        expansion.from_json(text)
    assert message in str(exc.value)


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
def test_live() -> None:
    """The installed QEMU's static expansion of Skylake-Client-v1 (TCG) against resolve."""
    cmds = [
        {"execute": "qmp_capabilities"},
        {"execute": "query-version"},
        {
            "execute": "query-cpu-model-expansion",
            "arguments": {"type": "static", "model": {"name": "Skylake-Client-v1"}},
        },
        {"execute": "quit"},
    ]
    qemu = ["qemu-system-x86_64", "-machine", "none", "-accel", "tcg", "-nodefaults", "-display", "none"]
    out = subprocess.run(
        [*qemu, "-qmp", "stdio"],
        input="\n".join(map(json.dumps, cmds)) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    answers = [json.loads(line) for line in out.splitlines() if '"return"' in line]
    v = answers[1]["return"]["qemu"]
    rel = f"{v['major']}.{v['minor']}"
    if rel not in models.RELEASES:
        pytest.skip(f"QEMU {rel}: kvmfpu places models at {', '.join(models.RELEASES)}")
    g = expansion.from_reply(answers[2])
    assert g.features == models.resolve("Skylake-Client-v1", qemu=rel, accel="tcg").features
