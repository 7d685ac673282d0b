"""Build step: record the git commit the package is built from in kvmfpu/_commit.py, so an
installed kvmfpu (``pip install .`` from a clone, or a wheel built from its sdist) can say
which commit runs (kvmfpu.cli.document.commit). Everything else is in pyproject.toml.

Without git or outside a clone the generated module holds None: an unknown commit stays
unknown rather than guessed."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = os.path.dirname(os.path.abspath(__file__))
GENERATED = os.path.join("kvmfpu", "_commit.py")


def git_commit() -> str | None:
    """HEAD's id, with ``-dirty`` when tracked files differ from it; None without git."""
    if not os.path.exists(os.path.join(HERE, ".git")):
        return None
    try:
        head = subprocess.run(
            ["git", "-C", HERE, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "-C", HERE, "diff", "--quiet", "HEAD", "--"],
                capture_output=True,
                timeout=30,
                check=False,
            ).returncode
            == 1
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if len(head) == 40 else None


def write(directory: str, sha: str | None) -> None:
    path = os.path.join(directory, GENERATED)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(
            '"""Written by setup.py at build time: the commit this copy was built from."""\n\n'
            f"COMMIT: str | None = {sha!r}\n"
        )


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if self.dry_run:
            return
        sha = git_commit()
        # From an unpacked sdist (no .git) keep what the sdist recorded.
        if sha is not None or not os.path.exists(os.path.join(self.build_lib, GENERATED)):
            write(self.build_lib, sha)


class Sdist(sdist):
    def make_release_tree(self, base_dir: str, files: Any) -> None:
        super().make_release_tree(base_dir, files)
        write(base_dir, git_commit())


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
