"""The README's Python examples run as written: scripts print something; harness examples
(functions named test_*) run on the model, and on the real /dev/kvm where it works."""

import os
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code: str, capsys: pytest.CaptureFixture[str]) -> None:
    scope: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), scope)
    tests = [f for name, f in scope.items() if name.startswith("test_") and callable(f)]
    if not tests:
        assert capsys.readouterr().out.strip()
        return
    from kvmfpu import Kvm, open_kvm
    backends = [Kvm("skylake-sp")]
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        backends.append(open_kvm())
    for backend in backends:
        for fn in tests:
            fn(backend)  # type: ignore[operator]


def test_there_are_examples() -> None:
    assert len(BLOCKS) >= 3
