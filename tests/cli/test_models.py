"""``kvmfpu models``: the list (models, host, max, aliases, libvirt's modes) and one model's
features on a host; JSON validated against kvmfpu/schemas (draft 2020-12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvmfpu.cli import main
from kvmfpu.qemu import models

jsonschema = pytest.importorskip("jsonschema")
SCHEMAS = Path(__file__).resolve().parents[2] / "kvmfpu" / "schemas"
LIBVIRT = Path(__file__).resolve().parents[1] / "qemu" / "data" / "libvirt"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def validate(doc: Any, name: str) -> None:
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(doc)


def test_list_names_models_host_max_aliases_and_modes(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "models")
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert rc == 0
    for m in models.catalogue():  # every model at its newest version, naming the others
        assert f"{m.name}-v{m.latest}" in rows
        assert (f"versions v1..v{m.latest}" in rows[f"{m.name}-v{m.latest}"]) is (m.latest > 1)
    assert "host" in rows and "max" in rows
    # the aliases QEMU registers (builtin_x86_defs .alias): Skylake-Server-IBRS is v2
    assert "alias of Skylake-Server-v2" in rows["Skylake-Server-IBRS"]
    for mode in ("host-passthrough", "host-model", "maximum"):
        assert "libvirt mode" in rows[mode]


def test_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "models", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["schema"] == "kvmfpu-models/1"
    validate(doc, "kvmfpu-models-1.json")
    assert doc["aliases"]["EPYC-IBPB"] == "EPYC-v2"
    assert doc["libvirt_cpu_map"]["libvirt"] == "9.0.0"


def test_one_model_on_a_host(capsys: pytest.CaptureFixture[str]) -> None:
    """EPYC-Rome-v1 asks for xsaves; KVM on Zen 2 hosts with Linux 6.6 does not offer it
    (erratum 1386, kvmfpu `replay zen-xsaves`), so QEMU drops it there; on Zen 3 nothing."""
    rc, out, _ = run(capsys, "models", "EPYC-Rome-v1", "--host", "zen2@6.6")
    assert rc == 0
    assert "QEMU drops 1" in out and "xsaves (CPUID[eax=dh,ecx=1h].EAX[3])" in out
    rc, out, _ = run(capsys, "models", "EPYC-Rome-v1", "--host", "zen3@6.6")
    assert "QEMU drops nothing" in out
    assert "checked:" in out and "not checked:" in out


def test_one_model_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "models", "SapphireRapids-v1", "--host", "zen4@6.6", "--qemu", "8.0", "--json")
    doc = json.loads(out)
    assert rc == 0
    validate(doc, "kvmfpu-model-1.json")
    assert doc["model"]["qemu"] == "8.0" and doc["on_host"]["host"] == "zen4"
    # Zen 4 has no AMX (CPUID 7.0 EDX 24): QEMU drops amx-tile and the XTILE components
    assert any(d.startswith("amx-tile ") for d in doc["on_host"]["dropped"])
    assert doc["on_host"]["starts_with_enforce"] is False
    _, out, _ = run(capsys, "models", "max", "--json")
    doc = json.loads(out)
    validate(doc, "kvmfpu-model-1.json")
    assert doc["model"]["passthrough"] and doc["on_host"] is None


def test_models_takes_what_migrate_guest_takes(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "models", str(LIBVIRT / "cpu-exact1.xml"))
    assert rc == 0 and out.startswith("qemu64-v1,-mca,-pse36,-clflush,-syscall,-nx,-lm,-svm,enforce:")
    rc, out, _ = run(capsys, "models", "host-model", "--host", "zen4@6.6")
    assert rc == 0 and out.startswith("EPYC-Milan-v1,")


@pytest.mark.parametrize(
    "args,message",
    [
        (["models", "Skylake-Foo"], "unknown QEMU CPU model 'Skylake-Foo'"),
        (["models", "EPYC", "--qemu", "5.0"], "--qemu 5.0"),
        (["models", "--host", "zen4"], "need a model NAME"),
        (["models", "host-model"], "host-model: libvirt computes it on the host"),
        (["models", "EPYC", "--host", "nosuch"], "nosuch"),
    ],
)
def test_bad_input_one_line_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    rc, out, err = run(capsys, *args)
    assert rc == 2 and message in err and err.count("\n") == 1 and out == ""
