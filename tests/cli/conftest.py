import subprocess
import sys

import pytest


@pytest.fixture
def kvmfpu_cmd():  # type: ignore[no-untyped-def]
    """Run ``python -m kvmfpu ARGS`` in a subprocess (what a user's shell does)."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kvmfpu", *args], capture_output=True,
                              text=True, timeout=300)
    return run
