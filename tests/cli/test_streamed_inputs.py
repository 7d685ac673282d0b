"""``kvmfpu decode FILE...`` (several files in one process, like grep and file: a bad file is
one line on stderr, the others are decoded, the exit status is 2), and what validate and
migrate --blob say of a TCG-written QEMU stream (the shipped sample: QEMU 7.2 under TCG,
XSTATE_BV 0 with x87/SSE/AVX/PKRU holding data)."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import pytest

from kvmfpu.blob import sample_data
from kvmfpu.cli import main

KVM_SAMPLE = str(sample_data.path(sample_data.KVM_ZEN5))
QEMU_SAMPLE = str(sample_data.path(sample_data.QEMU_TCG))
SCHEMAS = Path(__file__).resolve().parents[2] / "kvmfpu" / "schemas"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_several_files_one_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"QEVM\0\0\0\2")
    rc, out, err = run(capsys, "decode", KVM_SAMPLE, str(bad), QEMU_SAMPLE, "--host", "zen4")
    assert rc == 2
    assert err.splitlines() == [f"kvmfpu: error: {bad}: QEMU stream version 2 (kvmfpu reads version 3)"]
    assert out.count("== ") == 2 and f"== {KVM_SAMPLE} ==" in out and "QEMU cpu 0" in out


def test_several_files_one_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(
        capsys, "decode", KVM_SAMPLE, QEMU_SAMPLE, str(tmp_path / "gone"), "--host", "zen4", "--json"
    )
    doc = json.loads(out)
    assert rc == 2 and doc["schema"] == "kvmfpu-decode/1" and "kvmfpu_version" in doc
    assert [f["file"] for f in doc["files"]] == [KVM_SAMPLE, QEMU_SAMPLE, str(tmp_path / "gone")]
    assert [f["captures"] for f in doc["files"]] == [[0], [1], []]
    assert doc["files"][2]["error"].endswith("No such file or directory")
    assert doc["files"][1]["container"]["qemu_stream"]["read_as"] == "pipe"  # xz
    assert [c["origin"] for c in doc["captures"]] == ["raw buffer", "QEMU cpu 0"]
    schema = SCHEMAS / "kvmfpu-decode-1.json"
    if not schema.exists():
        pytest.skip("kvmfpu/schemas/kvmfpu-decode-1.json is not in this tree yet")
    import jsonschema

    jsonschema.validate(doc, json.loads(schema.read_text()))


def test_one_file_keeps_its_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "decode", "/nonexistent/x")
    assert (rc, out) == (2, "")
    assert err == "kvmfpu: error: /nonexistent/x: No such file or directory\n"


def test_validate_says_the_destination_restores_initial_state(capsys: pytest.CaptureFixture[str]) -> None:
    """x86_cpu_xsave_all_areas copies TCG's XSTATE_BV (0) into KVM_SET_XSAVE's buffer:
    accepted, and every component loaded in its initial state."""
    rc, out, _ = run(capsys, "validate", QEMU_SAMPLE, "--host", "skylake-sp", "--kernel", "6.6")
    assert rc == 0 and "accepted by KVM_SET_XSAVE" in out
    assert "warning: written under TCG: XSTATE_BV leaves out 0x207 (x87|sse|ymm|pkru)" in out
    assert "will restore their initial state" in out
    rc, out, _ = run(capsys, "validate", QEMU_SAMPLE, "--host", "skylake-sp", "--kernel", "6.6", "--json")
    (result,) = json.loads(out)["results"]
    assert result["accepted"] is True and "will restore their initial state" in result["note"]
    rc, out, _ = run(capsys, "validate", KVM_SAMPLE, "--host", "devhost-zen5", "--kernel", "6.6")
    assert rc == 0 and "warning" not in out  # a KVM capture has no such loss


def test_migrate_blob_reports_the_loss(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream = tmp_path / "tcg.mig"
    stream.write_bytes(lzma.decompress(Path(QEMU_SAMPLE).read_bytes()))
    rc, out, _ = run(
        capsys,
        "migrate",
        "--src",
        "skylake-sp@6.6",
        "--dst",
        "skylake-sp@6.6",
        "--guest",
        "host",
        "--blob",
        str(stream),
    )
    assert rc == 1 and "verdict: INCOMPATIBLE" in out
    assert "[source] the state given: written under TCG" in out
    assert "will restore their initial state" in out
