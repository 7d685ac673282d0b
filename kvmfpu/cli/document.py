"""The one envelope every JSON document kvmfpu prints carries: which document it is and
which kvmfpu wrote it. ``schema`` is ``kvmfpu-NAME/N`` (N changes when a field changes
meaning or goes away); ``kvmfpu_version`` is the release; ``kvmfpu_commit`` is the source
commit when it is known (a git checkout or a build that recorded it), else null, so a
release number never pretends to say which commit ran."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Mapping
from typing import Any


def document(schema: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` inside the envelope (the envelope's keys come first and win)."""
    from kvmfpu import __version__
    if not schema.startswith("kvmfpu-") or "/" not in schema:
        raise ValueError(f"schema names look like kvmfpu-NAME/N, not {schema!r}")
    out: dict[str, Any] = {"schema": schema, "kvmfpu_version": __version__,
                           "kvmfpu_commit": commit()}
    out.update((k, v) for k, v in body.items() if k not in out)
    return out


@functools.cache
def commit() -> str | None:
    """The commit this kvmfpu was built from: the package's git checkout (an editable
    install) when there is one, else None."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    top = os.path.dirname(here)
    if not os.path.isdir(os.path.join(top, ".git")):
        return None
    try:
        out = subprocess.run(["git", "-C", top, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.stdout.strip()
    return text if out.returncode == 0 and len(text) == 40 else None
