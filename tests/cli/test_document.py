"""The JSON envelope (kvmfpu.cli.document) and where kvmfpu_commit comes from: a git
checkout's HEAD, or what setup.py recorded at build time (kvmfpu/_commit.py)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tarfile

import pytest

from kvmfpu.cli.document import COMMIT, commit, document, schema_file

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_envelope_comes_first_and_wins() -> None:
    doc = document("kvmfpu-demo/1", {"schema": "forged", "kvmfpu_version": "9", "x": 1})
    assert list(doc) == ["schema", "kvmfpu_version", "kvmfpu_commit", "x"]
    assert doc["schema"] == "kvmfpu-demo/1" and doc["kvmfpu_version"] != "9"


@pytest.mark.parametrize(
    "name", ["demo/1", "kvmfpu-demo", "kvmfpu-demo/0", "kvmfpu-Demo/1", "kvmfpu-demo/1/2"]
)
def test_schema_names_are_checked(name: str) -> None:
    with pytest.raises(ValueError, match="kvmfpu-NAME/N"):
        document(name, {})
    with pytest.raises(ValueError):
        schema_file(name)


def _git(*args: str, cwd: pathlib.Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


needs_git = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(),
    reason="needs git and a git checkout of kvmfpu",
)


@needs_git
def test_commit_in_a_checkout_is_head_and_says_dirty() -> None:
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=ROOT, timeout=60).returncode == 1
    assert commit() == _git("rev-parse", "HEAD") + ("-dirty" if dirty else "")


def _setup(cwd: pathlib.Path, *args: str) -> None:
    r = subprocess.run(
        [sys.executable, "setup.py", "-q", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]


def _recorded(lib: pathlib.Path) -> str:
    """What kvmfpu_commit says when kvmfpu runs from ``lib`` (no .git above it)."""
    r = subprocess.run(
        [sys.executable, "-c", "from kvmfpu.cli.document import commit; print(commit())"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=lib,
        env={**os.environ, "PYTHONPATH": str(lib)},
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@needs_git
def test_a_build_from_a_clone_records_its_commit(tmp_path: pathlib.Path) -> None:
    """setup.py's build_py (what `pip install .` runs) writes kvmfpu/_commit.py; an sdist
    carries it, so a wheel built from the sdist (no .git) keeps it."""
    pytest.importorskip("setuptools")
    clone = tmp_path / "clone"
    subprocess.run(
        ["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    head = _git("rev-parse", "HEAD", cwd=clone)
    _setup(clone, "build_py", "--build-lib", str(tmp_path / "lib"))
    assert _recorded(tmp_path / "lib") == head and COMMIT.fullmatch(head)

    _setup(clone, "sdist", "-d", str(tmp_path / "dist"))
    (sdist,) = (tmp_path / "dist").glob("kvmfpu-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    (src,) = (tmp_path / "unpacked").iterdir()
    assert not (src / ".git").exists()
    _setup(src, "build_py", "--build-lib", str(tmp_path / "lib2"))
    assert _recorded(tmp_path / "lib2") == head
    # The published schemas travel with the package through the sdist and the build.
    shipped = {p.name for p in (tmp_path / "lib2" / "kvmfpu" / "schemas").glob("*.json")}
    assert shipped == {p.name for p in (ROOT / "kvmfpu" / "schemas").glob("*.json")} != set()


def test_without_git_or_a_record_the_commit_is_null(tmp_path: pathlib.Path) -> None:
    """A copy of the package that is neither a checkout nor a recorded build says null."""
    shutil.copytree(
        ROOT / "kvmfpu",
        tmp_path / "kvmfpu",
        ignore=shutil.ignore_patterns("__pycache__", "_commit.py", "*.so"),
    )
    assert _recorded(tmp_path) == "None"
