"""The audit's verdicts are the migration check's: every row equals what `kvmfpu migrate`
(kvmfpu.migrate.check.check) answers for that file or guest on that pair, whichever engine
ran it, and resumed runs redo nothing already answered."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmfpu.audit import engine, results
from kvmfpu.audit.inventory import load_fleet, load_population
from kvmfpu.migrate.report import RANK


def _audit(d: Path, **kw: object) -> tuple[engine.Audit, list[dict[str, object]]]:
    classes = load_fleet(d / "fleet.toml")
    pop = load_population(d / "population.toml", classes)
    a = engine.run(classes, pop, **kw)  # type: ignore[arg-type]
    return a, results.rows(a)


def test_rows_agree_with_migrate(fleet_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Each row's verdict is what its own reproduce command (`kvmfpu migrate ... --json`)
    # answers: the same check, the TCG stream's lost registers included.
    import json
    import shlex

    from kvmfpu.cli import main

    _, rows = _audit(fleet_dir)
    # 3 files that are captures, 1 that is not, 2 guest entries; 4 destinations each.
    assert len(rows) == 6 * 4
    tcg_seen = False
    for r in rows:
        if r["kind"] == "file" and str(r["name"]).endswith("notes.txt"):
            assert r["verdict"] == results.ERROR and r["reproduce"] is None
            continue
        argv = [*shlex.split(str(r["reproduce"]))[1:], "--json", "--no-advice"]
        main(argv)
        want = json.loads(capsys.readouterr().out)
        assert r["verdict"] == want["verdict"], (r["item"], r["destination"], r["reasons"])
        assert r["lost_features"] == sorted(want["lost_features"])
        if str(r["name"]).endswith(".qemu"):
            tcg_seen = True
            assert any("written under TCG" in x for x in r["reasons"]), r["reasons"]
    assert tcg_seen


def test_identical_files_share_one_source_run(fleet_dir: Path) -> None:
    a, rows = _audit(fleet_dir)
    sigs = {r["name"]: r["signatures"] for r in rows if r["kind"] == "file"}
    vm1, vm2 = (str(fleet_dir / "snaps" / "rack1" / n) for n in ("vm1.xsave", "vm2.xsave"))
    assert sigs[vm1] == sigs[vm2]
    # guests (2) + distinct file states (KVM capture, TCG stream) = 4 source runs
    assert a.distinct_tasks == 4


def test_known_case_ubuntu_pkru_leak(tmp_path: Path) -> None:
    # Proxmox VE 7.4 / Ubuntu jammy 5.15 carried the 5.16 fpu_guest rework and leaked the
    # host's PKRU bit: qemu64 guests on a PKU host failed to reach 6.2 (Proxmox kernel patch
    # of 2023-07-14; ../shared/spec/whole-cpu-and-operators.md). Mainline 5.15 does not leak.
    (tmp_path / "fleet.toml").write_text(
        '[[class]]\nname = "old-ubuntu"\nhost = "skylake-sp"\nkernel = "5.15.0-91-generic"\n'
        '[[class]]\nname = "old-mainline"\nhost = "skylake-sp"\nkernel = "5.15.100"\n'
        '[[class]]\nname = "new"\nhost = "skylake-sp"\nkernel = "6.2"\n'
    )
    (tmp_path / "population.toml").write_text(
        '[[guests]]\nname = "a"\ncpu = "qemu64"\nsource = "old-ubuntu"\n'
        '[[guests]]\nname = "b"\ncpu = "qemu64"\nsource = "old-mainline"\n'
    )
    _, rows = _audit(tmp_path, destinations=["new"])
    got = {r["name"]: r["verdict"] for r in rows}
    assert got == {"a": "incompatible", "b": "compatible"}, rows


def test_process_pool_is_byte_identical(fleet_dir: Path) -> None:
    a1, r1 = _audit(fleet_dir)
    with engine.Engine(jobs=2) as eng:
        a2, r2 = _audit(fleet_dir, engine=eng)
    h = {"population": {}}
    assert results.jsonl(results.header(a1, h), results.verdicts(a1), r1) == results.jsonl(
        results.header(a2, h), results.verdicts(a2), r2
    )


def test_resume_runs_only_what_is_missing(fleet_dir: Path) -> None:
    a1, r1 = _audit(fleet_dir)
    known = dict(list(a1.outcomes.items())[: len(a1.outcomes) // 2])
    seen: list[str] = []
    a2, r2 = _audit(fleet_dir, known=known, on_result=lambda os_: seen.extend(o.id for o in os_))
    assert not set(seen) & set(known)
    assert 0 < a2.tasks_run < a1.tasks_run
    assert r1 == r2


def test_worst_vcpu_decides_a_file(fleet_dir: Path) -> None:
    a, rows = _audit(fleet_dir)
    for r in rows:
        if r["kind"] == "file" and r["verdicts"]:
            worst = max((a.outcomes[v].verdict for v in r["verdicts"]), key=RANK.__getitem__)  # type: ignore[union-attr]
            assert r["verdict"] == worst


def _dask_cluster(workers: int):  # type: ignore[no-untyped-def]
    distributed = pytest.importorskip("distributed", reason="the optional kvmfpu[dask] extra")
    return distributed.LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    )


def test_dask_cluster_is_byte_identical(fleet_dir: Path) -> None:
    a1, r1 = _audit(fleet_dir)
    with _dask_cluster(2) as cluster, engine.Engine(scheduler=cluster.scheduler_address) as eng:
        a2, r2 = _audit(fleet_dir, engine=eng)
    h = {"population": {}}
    assert results.jsonl(results.header(a1, h), results.verdicts(a1), r1) == results.jsonl(
        results.header(a2, h), results.verdicts(a2), r2
    )


def test_dask_worker_killed_mid_run(fleet_dir: Path) -> None:
    # Dask reschedules the tasks of a worker that dies (distributed's scheduler:
    # "Tasks ... on a worker that dies are recomputed elsewhere"); rows are keyed by
    # task, so the killed worker neither loses nor duplicates one. Many guests, so the kill
    # (after the first answer) lands while most tasks are still queued or running.
    models = [
        "qemu64",
        "Haswell",
        "Broadwell",
        "Skylake-Client",
        "Skylake-Server",
        "Cascadelake-Server",
        "Icelake-Server",
        "SapphireRapids",
        "EPYC",
        "EPYC-Rome",
        "EPYC-Milan",
        "EPYC-Genoa",
        "Nehalem",
        "Westmere",
        "SandyBridge",
        "IvyBridge",
    ]
    with (fleet_dir / "population.toml").open("a") as f:
        for m in models:
            f.write(f'\n[[guests]]\nname = "{m}"\ncpu = "{m}"\nsource = "spr-6.8"\n')
    _, r1 = _audit(fleet_dir)
    with _dask_cluster(2) as cluster, engine.Engine(scheduler=cluster.scheduler_address) as eng:
        killed: list[int] = []

        def kill_one(outs: list[object]) -> None:
            if not killed:
                pids = eng._client.run(os.getpid)
                victim = sorted(pids.values())[0]
                killed.append(victim)
                os.kill(victim, 9)

        _, r2 = _audit(fleet_dir, engine=eng, on_result=kill_one)
    assert killed
    assert r1 == r2
    assert len({(r["item"], r["destination"]) for r in r2}) == len(r2)
