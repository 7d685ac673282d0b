"""``kvmfpu matrix``: --html, --csv and --json each alone or together, ``-`` for standard
output, the text view, the JSON document against its schema, the reproduce commands, and bad
combinations (one line, exit 2)."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import subprocess
import sys
from html import unescape
from importlib import resources
from pathlib import Path

import pytest

from kvmfpu.cli import main

BASE = ["matrix", "--guest", "EPYC", "--hosts", "zen3", "zen1", "skylake-sp", "--kernels", "5.16", "6.6"]
N = 3 * 3 * 2


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def schema() -> dict[str, object]:
    text = resources.files("kvmfpu").joinpath("schemas/kvmfpu-matrix-1.json").read_text()
    doc: dict[str, object] = json.loads(text)
    return doc


def validate(doc: object) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (a test dependency) is missing")
    jsonschema.Draft202012Validator.check_schema(schema())
    jsonschema.Draft202012Validator(schema()).validate(doc)


def test_csv_alone(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_csv = tmp_path / "m.csv"
    rc, out, err = run(capsys, *BASE, "--csv", str(out_csv))
    assert rc == 0 and err == ""
    assert f"{N} verdicts in" in out and f"wrote {out_csv}" in out
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert len(rows) == N and sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]
    assert all(r["reproduce"].startswith("kvmfpu migrate ") for r in rows)


def test_dash_is_stdout_and_the_summary_moves_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, *BASE, "--html", "-")
    assert rc == 0 and out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>")
    assert f"{N} verdicts in" in err and "wrote" not in err
    rc, out, err = run(capsys, *BASE, "--csv", "-")
    assert rc == 0 and out.startswith("guest,vmm,source,") and len(out.splitlines()) == N + 1
    assert f"{N} verdicts in" in err


def test_json_to_stdout_is_valid_against_its_schema(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, *BASE, "--json")
    assert rc == 0 and f"{N} verdicts in" in err
    doc = json.loads(out)
    validate(doc)
    assert doc["schema"] == "kvmfpu-matrix/1" and len(doc["cells"]) == doc["verdicts"] == N
    assert [h["name"] for h in doc["hosts"]] == ["skylake-sp", "zen1", "zen3"]


def test_json_to_a_file_with_html(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--json FILE with --html, --advice on: the document still matches its schema (advice
    entries included) and the page shows the same advice."""
    j, h = tmp_path / "m.json", tmp_path / "m.html"
    rc, out, _ = run(
        capsys,
        "matrix",
        "--guest",
        "EPYC",
        "--hosts",
        "zen3",
        "zen1",
        "--kernels",
        "5.16",
        "--advice",
        "--json",
        str(j),
        "--html",
        str(h),
    )
    assert rc == 0 and f"wrote {h} and {j}" in out
    doc = json.loads(j.read_text())
    validate(doc)
    assert doc["advice_computed"] is True
    bad = [c for c in doc["cells"] if c["verdict"] != "compatible"]
    assert bad  # (a cell may have no advice: only changes that do better are listed)
    # zen3 -> zen1 under 5.16: a newer source kernel works (advice.py; the CLI's own
    # migrate run says "kernel: source kernel 5.17 -> compatible", tests/cli/test_migrate.py).
    z = next(c for c in bad if (c["source"], c["destination"]) == ("zen3", "zen1"))
    assert {"kind": "kernel", "change": "source kernel 5.17", "verdict": "compatible"}.items() <= z["advice"][
        0
    ].items()
    assert "source kernel 5.17 \u2192 compatible" in unescape(h.read_text())


def test_without_outputs_the_tables_are_printed(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(
        capsys, "matrix", "--guest", "EPYC", "--hosts", "zen3", "zen1", "--kernels", "6.6", "6.1", "5.16"
    )
    assert rc == 0 and err == ""
    assert "kernel 6.6\n  (the same verdicts in every cell under: 6.1)" in out
    assert "\nkernel 5.16\n" in out and "\nkernel 6.1\n" not in out
    assert out.rstrip().endswith("incompatible")  # the summary line last


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--json", "--html", "-"], "only one output can be '-'"),
        (["--csv", "-", "--json"], "only one output can be '-'"),
        (["--json", "-", "--csv", "-"], "only one output can be '-'"),
        (["--html", ""], "an empty output file name"),
        (["--json", "/dev/full"], "is a device"),
        (["--csv", "/nonexistent-dir/m.csv"], "no directory /nonexistent-dir"),
        (["--kernels", "6.6", "6.6"], "given twice in --kernels"),
        (["--kernels", "6.6:nope"], "nope"),
        (["--vmm", "vmware"], "unknown VMM 'vmware'"),
        (["--hosts", "zen3", "zen3"], "twice"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_combinations_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    rc, out, err = run(capsys, "matrix", "--guest", "EPYC", "--hosts", "zen3", "zen1", *extra)
    assert rc == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err


def _reproduce(cmd: str) -> dict[str, object]:
    argv = shlex.split(cmd)
    assert argv[:2] == ["kvmfpu", "migrate"] and "--no-advice" in argv
    rc = main([*argv[1:], "--json"])
    return {"rc": rc}


def test_reproduce_commands_give_the_cells_verdicts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A few cells' "reproduce with" lines, run as `kvmfpu migrate`: the same verdict and
    reason (exit 1 exactly for the incompatible ones). One host comes from a file."""
    from kvmfpu import cpus

    host = tmp_path / "my zen1.json"
    host.write_text(
        (Path(cpus.__file__).parent / "data" / "zen1.json")
        .read_text()
        .replace('"name": "zen1"', '"name": "my-zen1"')
    )
    rc, out, _ = run(
        capsys,
        "matrix",
        "--guest",
        "EPYC-Rome",
        "--hosts",
        "zen3",
        str(host),
        "sapphirerapids",
        "--kernels",
        "5.16",
        "6.1:6.6",
        "--json",
    )
    assert rc == 0
    doc = json.loads(out)
    cells = doc["cells"]
    picked = [c for c in cells if c["verdict"] == "incompatible"][:3] + [
        c for c in cells if c["verdict"] != "incompatible"
    ][:3]
    assert {c["verdict"] for c in picked} >= {"incompatible", "compatible"}
    assert any("my-zen1" in (c["source"], c["destination"]) for c in picked)
    for c in picked:
        got = _reproduce(c["reproduce"])
        report = json.loads(capsys.readouterr().out)
        assert (report["verdict"], got["rc"]) == (c["verdict"], 1 if c["verdict"] == "incompatible" else 0)
        first = next((f["text"] for f in report["findings"] if f["level"] == "error"), None)
        if first is not None:
            assert first == c["reason"]


def test_a_reproduce_command_in_a_shell_elsewhere(tmp_path: Path) -> None:
    """The command as a user pastes it, from another directory (PYTHONPATH keeps the tree
    under test; `kvmfpu` is `python -m kvmfpu`)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    m = subprocess.run(
        [sys.executable, "-m", "kvmfpu", *BASE, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    )
    cell = next(
        c
        for c in json.loads(m.stdout)["cells"]
        if (c["source"], c["destination"], c["source_kernel"]) == ("zen3", "zen1", "5.16")
    )
    assert cell["verdict"] == "incompatible"
    argv = shlex.split(cell["reproduce"])
    r = subprocess.run(
        [sys.executable, "-m", "kvmfpu", *argv[1:]],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 1 and "verdict: INCOMPATIBLE" in r.stdout
    assert "-EINVAL: fpu_copy_uabi_to_guest_fpstate" in r.stdout


def test_a_newline_in_an_output_name_cannot_forge_a_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_csv = tmp_path / "m\nkvmfpu: error: forged.csv"
    rc, out, _ = run(capsys, *BASE, "--csv", str(out_csv))
    assert rc == 0 and out_csv.exists()
    assert out.count("\n") == 1 and "m\\nkvmfpu: error: forged.csv" in out


def test_the_guest_resolves_as_migrate_resolves_it(capsys: pytest.CaptureFixture[str]) -> None:
    """With --vmm qemu@6.2 the guest is QEMU 6.2's model, as for `kvmfpu migrate`
    (check.guest_at; EPYC-Genoa first came in QEMU 8.2, kvmfpu/qemu/data): the matrix used
    to resolve it with the newest data and print a verdict for a model 6.2 lacks."""
    args = ["--guest", "EPYC-Genoa", "--vmm", "qemu@6.2"]
    rc, _, err = run(capsys, "matrix", *args, "--hosts", "zen4", "--kernels", "6.6")
    rc2, _, err2 = run(capsys, "migrate", *args, "--src", "zen4@6.6", "--dst", "zen4@6.6")
    assert (
        (rc, err) == (rc2, err2) == (2, "kvmfpu: error: QEMU 6.2 has no EPYC-Genoa-v1 (first in QEMU 8.2)\n")
    )


def test_jobs_and_host_model(capsys: pytest.CaptureFixture[str]) -> None:
    """--jobs 2 prints the document --jobs 1 prints (but the run time); host-model, once
    refused ("matrix runs one guest CPU on every source"), runs per source (libvirt
    formatdomain: host-model is computed where the guest starts) and the document says so."""
    args = ["matrix", "--guest", "host-model", "--hosts", "zen4", "zen3", "--kernels", "6.6", "--json"]
    docs = []
    for jobs in ("1", "2"):
        rc, out, err = run(capsys, *args, "--jobs", jobs)
        assert rc == 0 and "4 verdicts in" in err
        doc = json.loads(out)
        validate(doc)
        doc["seconds"] = 0
        docs.append(json.dumps(doc))
    assert docs[0] == docs[1]
    guest = json.loads(docs[0])["guest"]
    assert guest["per_source"] is True and {g["source"] for g in guest["on_source"]} == {"zen4", "zen3"}
    rc, _, err = run(capsys, *args, "--jobs", "0")
    assert rc == 2 and "1 or more" in err and err.count("\n") == 1
