"""`kvmfpu audit` as operators run it: the files it writes validate against the published
schemas, bad inventories are one line and exit 2, an interrupted run resumes from its
checkpoint to the same bytes an uninterrupted run writes, and nothing is written through a
planted symlink."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from audit.fleet import write_fleet

from kvmfpu.cli import main

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is a test dependency")
SCHEMAS = Path(__file__).resolve().parents[2] / "kvmfpu" / "schemas"


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    return write_fleet(tmp_path)  # the fleet tests/audit uses


def audit(capsys: pytest.CaptureFixture[str], d: Path, *extra: str) -> tuple[int, str, str]:
    rc = main(
        [
            "audit",
            "--fleet",
            str(d / "fleet.toml"),
            "--population",
            str(d / "population.toml"),
            "--jobs",
            "1",
            *extra,
        ]
    )
    out, err = capsys.readouterr()
    return rc, out, err


def _schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name.replace('/', '-')}.json").read_text())  # type: ignore[no-any-return]


def test_rows_validate_and_exit_1(capsys: pytest.CaptureFixture[str], fleet: Path) -> None:
    rc, out, _ = audit(capsys, fleet, "-o", str(fleet / "rows.jsonl"), "--html", str(fleet / "r.html"))
    # Skylake-Server-IBRS needs hle/rtm, which Zen hosts do not have (QEMU's feature words
    # against the destination's CPUID): something is incompatible, so exit 1 (issue 15).
    assert rc == 1
    lines = [json.loads(x) for x in (fleet / "rows.jsonl").read_text().splitlines()]
    assert lines[0]["schema"] == "kvmfpu-audit/1"
    for doc in lines:
        jsonschema.validate(doc, _schema(doc["schema"]))
    rows = [x for x in lines if x["schema"] == "kvmfpu-audit-row/1"]
    assert len(rows) == 6 * 4  # 2 guests + 4 files (one not a capture), 4 destinations
    assert not (fleet / "rows.jsonl.partial").exists()
    assert "destination class" in out and "zen4-6.1" in out
    html = (fleet / "r.html").read_text()
    assert html.count("<h2") == 4 and "<script" not in html


def test_summary_json(capsys: pytest.CaptureFixture[str], fleet: Path) -> None:
    rc, out, _ = audit(capsys, fleet, "--json")
    doc = json.loads(out)
    jsonschema.validate(doc, _schema(doc["schema"]))
    assert rc == 1 and {d["destination"] for d in doc["destinations"]} == {
        "zen5-6.18",
        "zen4-6.1",
        "spr-6.8",
        "skx-ubuntu",
    }
    weight = sum(doc["destinations"][0]["verdicts"].values())
    assert weight == 30 + 5 + 4  # guest entries weigh their count; 4 files


def test_a_schema_rejects_a_mistyped_row(capsys: pytest.CaptureFixture[str], fleet: Path) -> None:
    audit(capsys, fleet, "-o", str(fleet / "rows.jsonl"))
    row = json.loads((fleet / "rows.jsonl").read_text().splitlines()[-1])
    row["verdict"] = "fine"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(row, _schema(row["schema"]))


@pytest.mark.parametrize(
    ("fleet_text", "says"),
    [
        ('[[class]]\nhost = "no-such-cpu"\nkernel = "6.1"\n', "no-such-cpu"),
        ('[[class]]\nhost = "zen4"\nkernel = "1.2"\n', "1.2"),
        ('[[class]]\nhost = "zen4"\nkernel = "6.1"\ncolour = "red"\n', "colour"),
        ('[[class]]\nhost = "zen4"\nkernel = "6.1"\nvmm = "qemu@0.1"\n', "0.1"),
        ('[[class]]\nhost = "zen4"\nkernel = "6.1"\ncount = -3\n', "count"),
        (
            '[[class]]\nname = "a"\nhost = "zen4"\nkernel = "6.1"\n'
            '[[class]]\nname = "a"\nhost = "zen5"\nkernel = "6.1"\n',
            "already",
        ),
        ("[[class]\n", "TOML"),
        ("", "no host classes"),
    ],
)
def test_bad_fleet_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, fleet_text: str, says: str
) -> None:
    (tmp_path / "fleet.toml").write_text(fleet_text)
    rc = main(["audit", "--fleet", str(tmp_path / "fleet.toml"), "--source", "x", "--guest", "qemu64"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and says in err, err


def test_csv_fleet_folds_hosts_into_classes(capsys: pytest.CaptureFixture[str], fleet: Path) -> None:
    (fleet / "fleet.csv").write_text(
        "name,host,kernel,vmm,count\nzen4-6.1,zen4,6.1,qemu,10\n,zen4,6.1,qemu,15\n"
    )
    rc = main(
        [
            "audit",
            "--fleet",
            str(fleet / "fleet.csv"),
            "--source",
            "zen4-6.1",
            "--guest",
            "EPYC-Genoa",
            "--json",
            "--jobs",
            "1",
        ]
    )
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and [d["hosts"] for d in doc["destinations"]] == [25]


def test_interrupted_run_resumes_to_the_same_bytes(
    capsys: pytest.CaptureFixture[str], fleet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = fleet / "whole.jsonl"
    audit(capsys, fleet, "-o", str(whole))
    from kvmfpu.audit import engine

    real = engine.run_task
    calls = {"n": 0}

    def interrupted(task: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(engine, "run_task", interrupted)
    out = fleet / "rows.jsonl"
    rc, _, err = audit(capsys, fleet, "-o", str(out))
    assert rc == 130 and "--resume" in err and "Traceback" not in err
    assert not out.exists() and (out.parent / "rows.jsonl.partial").exists()
    rc, _, err = audit(capsys, fleet, "-o", str(out))  # not without --resume
    assert rc == 2 and "--resume" in err
    monkeypatch.setattr(engine, "run_task", real)
    rc, text, _ = audit(capsys, fleet, "-o", str(out), "--resume")
    assert rc == 1 and "(2 run now)" in text  # 4 distinct source runs, 2 kept
    assert out.read_bytes() == whole.read_bytes()
    assert not (out.parent / "rows.jsonl.partial").exists()


def test_planted_symlink_at_the_checkpoint(capsys: pytest.CaptureFixture[str], fleet: Path) -> None:
    victim = fleet / "victim"
    victim.write_text("keep me")
    os.symlink(victim, fleet / "rows.jsonl.partial")
    rc, _, err = audit(capsys, fleet, "-o", str(fleet / "rows.jsonl"))
    assert rc == 2 and len(err.splitlines()) == 1
    assert victim.read_text() == "keep me"


def test_jsonl_to_stdout(capsys: pytest.CaptureFixture[str], fleet: Path) -> None:
    rc, out, err = audit(capsys, fleet, "-o", "-", "--progress", "always")
    assert rc == 1
    assert all(json.loads(x)["schema"].startswith("kvmfpu-audit") for x in out.splitlines())
    assert "destination class" in err and "verdicts" in err  # summary and progress


def test_quick_form_needs_a_source(capsys: pytest.CaptureFixture[str], fleet: Path) -> None:
    rc = main(["audit", "--fleet", str(fleet / "fleet.toml"), "--guest", "qemu64"])
    assert rc == 2 and "--source" in capsys.readouterr().err


def test_progress_only_on_a_terminal(
    capsys: pytest.CaptureFixture[str], fleet: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 15: progress on stderr when it is a terminal, quiet otherwise (--progress auto).
    _, _, err = audit(capsys, fleet)
    assert "kvmfpu audit:" not in err
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    _, _, err = audit(capsys, fleet)
    assert "kvmfpu audit:" in err and "verdicts" in err and "signatures" in err
