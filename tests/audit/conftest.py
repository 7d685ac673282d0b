"""The audit tests' fleet (tests/audit/fleet.py, shared with tests/cli/test_audit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from audit.fleet import write_fleet


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    return write_fleet(tmp_path)
