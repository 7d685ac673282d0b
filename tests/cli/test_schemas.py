"""Every JSON document the commands print is valid under its published JSON Schema
(kvmfpu/schemas, draft 2020-12), on real inputs: the packaged hosts and samples, the seed
scenarios, this machine's /dev/kvm and processor where they work. The schemas are strict:
a document with a required field removed, or a field of the wrong type, is rejected.

What is checked is kvmfpu's own contract (kvmfpu.cli.document and each command's to_json);
the schema files are written from that code and these outputs."""

from __future__ import annotations

import copy
import json
import pathlib
import random
from typing import Any

import pytest
from schema_util import assert_valid, errors, validator

from kvmfpu.blob import sample_data
from kvmfpu.cli import main
from kvmfpu.cli.document import SCHEMA_NAME, load_schema, schema_file
from kvmfpu.scenarios import SCENARIOS

SCHEMAS = pathlib.Path(__file__).resolve().parents[2] / "kvmfpu" / "schemas"
KVM = str(sample_data.path(sample_data.KVM_ZEN5))
QEMU = str(sample_data.path(sample_data.QEMU_TCG))

#: (id, argv, the document it prints, exit status). The statuses are each command's
#: documented ones (kvmfpu --help texts): validate/diff/migrate/replay exit 1 on a "no".
COMMANDS: list[tuple[str, list[str], str, int]] = [
    ("cpus", ["cpus", "--json"], "kvmfpu-hosts/1", 0),
    ("cpus-two", ["cpus", "zen4", "sapphirerapids", "--json"], "kvmfpu-hosts/1", 0),
    ("cpus-nehalem", ["cpus", "nehalem", "--json"], "kvmfpu-hosts/1", 0),
    ("cpus-diff", ["cpus", "diff", "zen4", "skylake-sp", "--json"], "kvmfpu-host-diff/1", 0),
    ("cpus-diff-same", ["cpus", "diff", "zen2", "zen2", "--json"], "kvmfpu-host-diff/1", 0),
    ("kernels", ["kernels", "--json"], "kvmfpu-kernels/1", 0),
    ("kernels-distro", ["kernels", "5.15.0-91-generic", "6.18-rc5", "--json"], "kvmfpu-kernels/1", 0),
    ("replay-list", ["replay", "--list", "--json"], "kvmfpu-scenarios/1", 0),
    *[(f"replay-{s.name}", ["replay", s.name, "--json"], "kvmfpu-replay/1", 1) for s in SCENARIOS],
    ("replay-fixed", ["replay", "xfd-xstate-bv", "--kernel", "6.18.7", "--json"], "kvmfpu-replay/1", 0),
    ("decode-kvm", ["decode", KVM, "--host", "devhost-zen5", "--json"], "kvmfpu-decode/1", 0),
    ("decode-qemu", ["decode", QEMU, "--json"], "kvmfpu-decode/1", 0),
    ("validate-ok", ["validate", KVM, "--host", "zen4", "--kernel", "6.6", "--json"], "kvmfpu-validate/1", 0),
    (
        "validate-rejected",
        ["validate", KVM, "--host", "haswell", "--kernel", "6.6", "--json"],
        "kvmfpu-validate/1",
        1,
    ),
    (
        "diff-differs",
        ["diff", KVM, QEMU, "--host", "devhost-zen5", "--host-b", "skylake-sp", "--json"],
        "kvmfpu-diff/1",
        1,
    ),
    ("diff-same", ["diff", KVM, KVM, "--host", "devhost-zen5", "--json"], "kvmfpu-diff/1", 0),
    (
        "migrate-incompatible",
        [
            "migrate",
            "--src",
            "icelake-sp@6.6",
            "--dst",
            "skylake-sp@6.6",
            "--guest",
            "Icelake-Server",
            "--json",
        ],
        "kvmfpu-migrate/1",
        1,
    ),
    (
        "migrate-raw",
        [
            "migrate",
            "--src",
            "zen4@6.6",
            "--dst",
            "skylake-sp@6.6",
            "--guest",
            "EPYC-Genoa",
            "--vmm",
            "raw",
            "--no-advice",
            "--json",
        ],
        "kvmfpu-migrate/1",
        1,
    ),
    (
        "migrate-blob",
        [
            "migrate",
            "--src",
            "zen4@6.6",
            "--dst",
            "zen4@6.6",
            "--guest",
            "EPYC-Genoa",
            "--blob",
            KVM,
            "--json",
        ],
        "kvmfpu-migrate/1",
        0,
    ),
    (
        "migrate-fpsse",
        [
            "migrate",
            "--src",
            "nehalem@5.19",
            "--dst",
            "skylake-sp@5.19",
            "--guest",
            "Nehalem",
            "--no-advice",
            "--json",
        ],
        "kvmfpu-migrate/1",
        1,
    ),
    ("demo", ["demo", "--cases", "0", "--json"], "kvmfpu-demo/1", 0),
]


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, Any]:
    rc = main(argv)
    out = capsys.readouterr().out
    return rc, json.loads(out)


@pytest.mark.parametrize("argv, name, status", [c[1:] for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_command_output_is_valid(
    capsys: pytest.CaptureFixture[str], argv: list[str], name: str, status: int
) -> None:
    rc, doc = run_json(capsys, argv)
    assert rc == status
    assert doc["schema"] == name and list(doc)[:3] == ["schema", "kvmfpu_version", "kvmfpu_commit"]
    assert_valid(doc)


def test_convert_json(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sky.bin"
    rc, doc = run_json(
        capsys, ["convert", KVM, "--from", "devhost-zen5", "--to", "skylake-sp", "-o", str(out), "--json"]
    )
    assert rc == 0 and doc["bytes"] == out.stat().st_size == 4096
    assert doc["notes"] and doc["output"] == str(out)
    assert_valid(doc)


def test_convert_json_refuses_to_share_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", KVM, "--from", "devhost-zen5", "--to", "skylake-sp", "-o", "-", "--json"]) == 2
    assert "both want standard output" in capsys.readouterr().err


def test_capture_json(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "here.json"
    try:
        rc, doc = run_json(capsys, ["cpus", "--capture", str(f), "--json"])
    except json.JSONDecodeError:
        pytest.skip(f"cannot capture this machine: {capsys.readouterr().err.strip()}")
    assert rc == 0 and doc["captured_to"] == str(f) and len(doc["hosts"]) == 1
    assert_valid(doc)


def test_probe_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["probe", "--json"])
    cap = capsys.readouterr()
    if rc == 2:
        pytest.skip(f"no usable /dev/kvm here: {cap.err.strip()}")
    doc = json.loads(cap.out)
    assert rc == 0 and doc["schema"] == "kvmfpu-probe/1"
    assert_valid(doc)


def test_check_cpu_json(capsys: pytest.CaptureFixture[str]) -> None:
    from kvmfpu.native.xsave_probe import probe_unavailable

    if reason := probe_unavailable():
        pytest.skip(f"the real-CPU probe cannot run here: {reason}")
    rc, doc = run_json(capsys, ["check-cpu", "--cases", "30", "--json"])
    assert rc in (0, 1) and doc["cases"] == 30 and doc["seed"] == 1
    assert_valid(doc)


def test_demo_json_tells_what_the_text_does(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo document holds the text's findings (tests/cli/test_main.py's test_demo_runs
    checks the same facts in the text)."""
    rc, doc = run_json(capsys, ["demo", "--cases", "0", "--json"])
    assert rc == 0
    assert doc["kvm_sample"]["without_host"].startswith("2 layouts fit 0xe7")
    dest = {(d["host"], d["kernel"], d["guest_cpu"]): d for d in doc["destinations"]}
    sky = dest["skylake-sp", "6.6", "host"]
    assert sky["accepted"] and len(sky["registers_wrong"]) == 4
    assert sky["converted"]["accepted"] and sky["converted"]["registers_differ"] == []
    assert "opmask moved 0x340 -> 0x440" in sky["converted"]["notes"]
    assert dest["haswell", "6.6", "host"]["errno"] == "EINVAL"
    assert dest["zen4", "6.1", "zen2"]["function"] == "validate_user_xstate_header"
    assert len(doc["replays"]) == 12 and sum(r["bug"] for r in doc["replays"]) == 6
    assert doc["real_cpu"] == {"ran": False, "skipped": "--cases 0", "cases": 0, "faulting": 0, "agreed": 0}


# --- the schema files --------------------------------------------------------------------


def schema_files() -> list[pathlib.Path]:
    return sorted(SCHEMAS.glob("*.json"))


@pytest.mark.parametrize("path", schema_files(), ids=lambda p: p.name)
def test_schema_file_is_a_draft_2020_12_schema_named_after_its_document(path: pathlib.Path) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    name = schema["properties"]["schema"]["const"]
    assert SCHEMA_NAME.fullmatch(name) and schema_file(name) == path.name
    assert schema["title"]
    if name in {c[2] for c in COMMANDS}:  # this module's documents also say what they hold
        assert schema["description"]
    if "x-kvmfpu-line-of" in schema:      # a JSON Lines line: the file's header has the envelope
        assert load_schema(schema["x-kvmfpu-line-of"])["properties"]["schema"]["const"] == \
            schema["x-kvmfpu-line-of"]
    else:
        assert {"schema", "kvmfpu_version", "kvmfpu_commit"} <= set(schema["required"])
    assert load_schema(name) == schema  # what the package ships is this file


def test_every_document_here_has_a_schema_file() -> None:
    assert {c[2] for c in COMMANDS} | {"kvmfpu-convert/1", "kvmfpu-probe/1", "kvmfpu-check-cpu/1"} <= {
        json.loads(p.read_text())["properties"]["schema"]["const"] for p in schema_files()
    }


# --- strict enough: mutated documents are rejected ---------------------------------------


def _node(schema: dict[str, Any], path: list[Any]) -> dict[str, Any] | None:
    """The subschema that applies at ``path`` (the schemas use no $ref), or None where any
    value is allowed (an open object's extra keys)."""
    node: Any = schema
    for key in path:
        if isinstance(key, int):
            node = node.get("items")
        elif key in node.get("properties", {}):
            node = node["properties"][key]
        else:
            node = node.get("additionalProperties")
        if not isinstance(node, dict):
            return None
    return node


def _paths(doc: Any, path: list[Any]) -> list[list[Any]]:
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, [*path, k])
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):
            out += _paths(v, [*path, i])
    return out


def _rejected(name: str, doc: Any) -> bool:
    """Whether the schema of ``name`` finds ``doc`` invalid (``doc`` may have lost or changed
    its own schema field)."""
    return any(True for _ in validator(name).iter_errors(doc))


def _get(doc: Any, path: list[Any]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _wrong_type(node: dict[str, Any]) -> Any:
    """A value no schema of this node's type allows."""
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else types
    return 1.5 if "object" in types or "array" in types or "string" in types else {"x": "y"}


#: The documents the mutation tests start from (one of each kind, kernel-refusal fields set).
DOCS = [
    "cpus",
    "replay-list",
    "demo",
    "cpus-diff",
    "kernels-distro",
    "decode-kvm",
    "validate-rejected",
    "diff-differs",
    "migrate-fpsse",
    "migrate-incompatible",
    "replay-xfd-xstate-bv",
]


@pytest.fixture(scope="module")
def documents() -> dict[str, Any]:
    """One real document of each kind (in-process runs, no capsys at module scope)."""
    import contextlib
    import io

    docs = {}
    for ident, argv, _, _ in COMMANDS:
        if ident in DOCS:
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                main(argv)
            docs[ident] = json.loads(buf.getvalue())
    return docs


@pytest.mark.parametrize("ident", DOCS)
def test_a_missing_required_field_is_rejected(documents: dict[str, Any], ident: str) -> None:
    doc = documents[ident]
    schema = validator(doc["schema"]).schema
    required = [
        p
        for p in _paths(doc, [])
        if p and (n := _node(schema, p[:-1])) is not None and p[-1] in n.get("required", [])
    ]
    assert required
    for path in random.Random(ident).sample(required, min(len(required), 40)):
        bad = copy.deepcopy(doc)
        del _get(bad, path[:-1])[path[-1]]
        assert _rejected(doc["schema"], bad), f"{ident}: removing {path} went unnoticed"


@pytest.mark.parametrize("ident", DOCS)
def test_a_mistyped_field_is_rejected(documents: dict[str, Any], ident: str) -> None:
    doc = documents[ident]
    schema = validator(doc["schema"]).schema
    typed = [
        p
        for p in _paths(doc, [])
        if p and (n := _node(schema, p)) is not None and ("type" in n or "const" in n or "enum" in n)
    ]
    assert typed
    for path in random.Random(ident).sample(typed, min(len(typed), 40)):
        bad = copy.deepcopy(doc)
        _get(bad, path[:-1])[path[-1]] = _wrong_type(_node(schema, path) or {})
        assert _rejected(doc["schema"], bad), f"{ident}: a wrong type at {path} went unnoticed"


@pytest.mark.parametrize(
    "field, value", [("schema", "kvmfpu-hosts/2"), ("kvmfpu_commit", "abc123"), ("kvmfpu_version", None)]
)
def test_a_wrong_envelope_is_rejected(documents: dict[str, Any], field: str, value: Any) -> None:
    bad = dict(documents["cpus"], **{field: value})
    assert _rejected("kvmfpu-hosts/1", bad)


def test_an_unknown_field_is_rejected_where_the_document_is_closed(documents: dict[str, Any]) -> None:
    bad = dict(documents["cpus"], extra=1)
    assert any("extra" in e for e in errors(bad))
    host = copy.deepcopy(documents["cpus"])
    host["hosts"][0]["components"]["2"]["offest"] = 576
    assert _rejected("kvmfpu-hosts/1", host)
