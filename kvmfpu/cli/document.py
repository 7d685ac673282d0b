"""The one envelope every JSON document kvmfpu prints carries: which document it is and
which kvmfpu wrote it. ``schema`` is ``kvmfpu-NAME/N`` (N changes when a field changes
meaning or goes away; its JSON Schema is kvmfpu/schemas/kvmfpu-NAME-N.json);
``kvmfpu_version`` is the release; ``kvmfpu_commit`` is the source commit when it is known
(a git checkout, or a build that recorded it: setup.py writes kvmfpu/_commit.py), with
``-dirty`` when tracked files differed from it, else null, so a release number never
pretends to say which commit ran."""

from __future__ import annotations

import functools
import importlib
import os
import re
import subprocess
from collections.abc import Mapping
from typing import Any

#: ``kvmfpu-NAME/N``: the schema file is kvmfpu/schemas/kvmfpu-NAME-N.json.
SCHEMA_NAME = re.compile(r"kvmfpu-[a-z][a-z0-9-]*/[1-9][0-9]*")
COMMIT = re.compile(r"[0-9a-f]{40}(-dirty)?")


def document(schema: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` inside the envelope (the envelope's keys come first and win)."""
    from kvmfpu import __version__
    if not SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema names look like kvmfpu-NAME/N, not {schema!r}")
    out: dict[str, Any] = {"schema": schema, "kvmfpu_version": __version__,
                           "kvmfpu_commit": commit()}
    out.update((k, v) for k, v in body.items() if k not in out)
    return out


def schema_file(schema: str) -> str:
    """The file name of a document's JSON Schema: ``kvmfpu-NAME/N`` -> ``kvmfpu-NAME-N.json``."""
    if not SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema names look like kvmfpu-NAME/N, not {schema!r}")
    return schema.replace("/", "-") + ".json"


def load_schema(schema: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the document named ``schema``, as shipped in the
    package (kvmfpu/schemas). KeyError when kvmfpu has none by that name."""
    import json
    from importlib import resources
    resource = resources.files("kvmfpu").joinpath("schemas", schema_file(schema))
    try:
        text = resource.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyError(f"no JSON Schema for {schema!r} in kvmfpu/schemas") from None
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@functools.cache
def commit() -> str | None:
    """The commit this kvmfpu runs from: the package's git checkout (an editable install or
    PYTHONPATH) when there is one, else what the build recorded, else None."""
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.exists(os.path.join(top, ".git")):        # a file in a git worktree
        return _git(top)
    try:
        recorded = importlib.import_module("kvmfpu._commit").COMMIT
    except (ImportError, AttributeError):
        return None
    return recorded if isinstance(recorded, str) and COMMIT.fullmatch(recorded) else None


def _git(top: str) -> str | None:
    def run(*args: str) -> subprocess.CompletedProcess[str] | None:
        try:
            return subprocess.run(["git", "-C", top, *args], capture_output=True, text=True,
                                  timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
    head = run("rev-parse", "HEAD")
    if head is None or head.returncode != 0 or not COMMIT.fullmatch(head.stdout.strip()):
        return None
    dirty = run("diff", "--quiet", "HEAD", "--")
    return head.stdout.strip() + ("-dirty" if dirty is not None and dirty.returncode == 1 else "")
