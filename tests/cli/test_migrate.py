"""``kvmfpu migrate``, ``kvmfpu matrix``, ``kvmfpu models``: exit codes, JSON, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmfpu.blob import sample_data
from kvmfpu.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_incompatible_exits_1_with_reason_and_advice(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "migrate", "--src", "zen3@5.16", "--dst", "zen1@5.16",
                     "--guest", "EPYC")
    assert rc == 1
    assert "verdict: INCOMPATIBLE" in out
    assert "-EINVAL: fpu_copy_uabi_to_guest_fpstate: XSTATE_BV sets 0x200 (pkru)" in out
    assert "kernel: source kernel 5.17 -> compatible" in out


def test_conditions_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "migrate", "--src", "sapphirerapids@6.6", "--dst",
                     "sapphirerapids@6.6", "--guest", "SapphireRapids", "--no-advice")
    assert rc == 0 and "verdict: COMPATIBLE WITH CONDITIONS" in out and "conditions:" in out


def test_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "migrate", "--src", "zen4@6.6", "--dst", "skylake-sp@6.6",
                     "--guest", "EPYC-Genoa", "--vmm", "raw", "--json", "--no-advice")
    doc = json.loads(out)
    assert rc == 1 and doc["schema"] == "kvmfpu-migrate/1"
    assert doc["verdict"] == "incompatible" and doc["vmm"] == "raw"
    assert any(x["register"] == "zmm16" for x in doc["lost"])


def test_blob(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(sample_data.path(sample_data.KVM_ZEN5))
    rc, out, _ = run(capsys, "migrate", "--src", "zen5@6.6", "--dst", "zen4@6.6", "--guest",
                     "EPYC-Genoa", "--blob", path, "--vmm", "raw", "--no-advice")
    assert rc == 0 and f"state: {path}" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--src", "zen9", "--dst", "zen1", "--guest", "EPYC"], "unknown host 'zen9'"),
    (["--src", "zen3@nine", "--dst", "zen1", "--guest", "EPYC"], "'nine' is not a kernel"),
    (["--src", "zen3", "--dst", "zen1", "--guest", "EPYK"], "did you mean EPYC"),
    (["--src", "zen3", "--dst", "zen1", "--guest", "EPYC,+bogus"], "'bogus' is not"),
    (["--src", "zen3", "--dst", "zen1", "--guest", "EPYC", "--blob", "/nonexistent"],
     "/nonexistent"),
    (["--src", "zen3", "--dst", "zen1", "--guest", "EPYC", "--dst-vmm", "raw"],
     "carry the state differently"),
    (["--src", "zen3", "--dst", "zen1", "--guest", "EPYC", "--vmm", "vmware"], "unknown VMM 'vmware'"),
])
def test_bad_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], args: list[str],
                                      message: str) -> None:
    rc, out, err = run(capsys, "migrate", *args)
    assert rc == 2 and out == "" and message in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_matrix_writes_html_and_csv(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    html, csv = tmp_path / "m.html", tmp_path / "m.csv"
    rc, out, _ = run(capsys, "matrix", "--guest", "EPYC-Milan", "--hosts", "zen3", "zen1",
                     "--kernels", "6.6", "5.16:6.6", "--html", str(html), "--csv", str(csv))
    assert rc == 0 and "8 verdicts in" in out
    assert "<table" in html.read_text() and len(csv.read_text().splitlines()) == 9


def test_matrix_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, _, err = run(capsys, "matrix", "--guest", "EPYC", "--hosts", "zen3", "zen3",
                     "--html", str(tmp_path / "m.html"))
    assert rc == 2 and "twice" in err
    rc, _, err = run(capsys, "matrix", "--guest", "EPYC", "--html", str(tmp_path))
    assert rc == 2 and "is a directory" in err
    assert not list(tmp_path.iterdir())


def test_models(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "models", "--versions")
    assert rc == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()}
    assert rows["EPYC-Rome-v4"][1:5] == ["XCR0", "0x7", "XSS", "0x0"]
    assert "xsaves" not in rows["EPYC-Rome-v4"][5].split(",")
    assert "xsaves" in rows["EPYC-Rome-v3"][5].split(",")
    assert rows["SapphireRapids-v5"][1:5] == ["XCR0", "0x602e7", "XSS", "0x1800"]
    rc, out, _ = run(capsys, "models", "--json")
    doc = json.loads(out)
    assert doc["schema"] == "kvmfpu-models/1" and len(doc["models"]) == 46
