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


def test_capture_commands_run_as_shown(tmp_path: pathlib.Path) -> None:
    """The shell block of 'Captured xsave state', line by line, with the exit statuses it
    describes (``kvmfpu`` run as ``python -m kvmfpu`` from this checkout)."""
    import subprocess
    import sys
    block = next(b for b in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
                 if "kvmfpu decode $S" in b)
    lines = [ln.split("  #")[0].strip() for ln in block.splitlines()]
    lines = [ln for ln in lines if ln]
    assert lines[0].startswith("S=$(")
    script = "\n".join([lines[0].replace("python", sys.executable, 1),
                        *(f"{ln.replace('kvmfpu ', f'{sys.executable} -m kvmfpu ', 1)}; echo \"rc=$?\""
                          for ln in lines[1:])])
    root = pathlib.Path(__file__).resolve().parents[1]
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    codes = [int(x) for x in re.findall(r"rc=(\d+)", r.stdout)]
    assert codes == [2, 0, 1, 1, 0, 0], (r.stdout[-2000:], r.stderr[-2000:])
    assert "same register state" in r.stdout and (tmp_path / "sky.bin").stat().st_size == 4096
