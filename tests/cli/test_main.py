"""The command line: listings, the demo, one-line errors with exit 2, --version, bare
``kvmfpu``, help on every option, and Ctrl-C at any moment."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib

import pytest

from kvmfpu.cli import build_parser, main

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_cpus_lists_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cpus", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)["hosts"]
    names = [m["name"] for m in models]
    assert names == sorted(names) and "sapphirerapids" in names and "zen2" in names
    spr = next(m for m in models if m["name"] == "sapphirerapids")
    assert spr["components"]["18"] == {"size": 8192, "offset": 2816, "supervisor": False,
                                       "align64": True, "xfd": True}


def test_cpus_describes_a_dump_file(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "host.txt"
    f.write_text("CPU:\n   0x00000000 0x00: eax=0x0000000d ebx=0x756e6547 ecx=0x6c65746e edx=0x49656e69\n"
                 "   0x00000001 0x00: eax=0x000206a7 ebx=0x0 ecx=0x1c000000 edx=0x0\n"
                 "   0x0000000d 0x00: eax=0x00000007 ebx=0x00000340 ecx=0x00000340 edx=0x0\n"
                 "   0x0000000d 0x02: eax=0x00000100 ebx=0x00000240 ecx=0x00000000 edx=0x0\n")
    assert main(["cpus", str(f)]) == 0
    out = capsys.readouterr().out
    assert "XCR0 supported 0x7 (x87|sse|ymm)" in out and "0x240" in out


def test_demo_runs(kvmfpu_cmd) -> None:  # type: ignore[no-untyped-def]
    r = kvmfpu_cmd("demo")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "kvmfpu: error: 2 layouts fit 0xe7" in out                 # refuses to guess
    assert "k1           00000000_0000f0f0" in out                     # decoded at Zen offsets
    assert "skylake-sp / Linux 6.6               accepted, but 4 registers arrive wrong" in out
    assert out.count("registers differ") == 2 and "0 registers differ" in out
    assert "haswell / Linux 6.6                  rejected -EINVAL" in out
    assert "guest zen2        rejected -EINVAL: validate_user_xstate_header" in out
    assert "st6=3.14159265358979323851, st7=1" in out and "probably written under TCG" in out
    assert "#GP(0): XCOMP_BV sets 0x100 (pt)" in out
    replays = [line.split() for line in r.stdout.splitlines() if line.startswith("   ") and
               ("BUG" in line or "no bug" in line)]
    # six seeds (the pkru-leak scenario joined the five), each last affected and first fixed
    assert len(replays) == 12 and sum(row[2] == "BUG" for row in replays) == 6


@pytest.mark.parametrize("args, message", [
    (["cpus", "no-such-host"], "unknown host 'no-such-host'"),
    (["frobnicate"], "invalid choice"),
    (["cpus", "--bogus"], "unrecognized arguments"),
    (["demo", "--src", "/"], "is a directory"),
    (["replay"], "needs a scenario name"),
])
def test_bad_input_one_line_exit_2(kvmfpu_cmd, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    r = kvmfpu_cmd(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr


# --- --version, bare kvmfpu, help ----------------------------------------------------------


def _git_head() -> str | None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                       text=True, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def test_version_names_release_and_commit(kvmfpu_cmd) -> None:  # type: ignore[no-untyped-def]
    from kvmfpu import __version__
    r = kvmfpu_cmd("--version")
    assert r.returncode == 0 and r.stderr == ""
    m = re.fullmatch(r"kvmfpu (\S+)(?: \(commit ([0-9a-f]{40})(-dirty)?\))?\n", r.stdout)
    assert m and m.group(1) == __version__, r.stdout
    head = _git_head()
    if head is not None:            # a checkout: the commit is this one's HEAD
        assert m.group(2) == head


def test_bare_kvmfpu_prints_the_commands_and_exits_2(kvmfpu_cmd) -> None:  # type: ignore[no-untyped-def]
    """Bare ``kvmfpu`` is a usage error, as argparse makes a missing command (stderr, exit
    2), but with every command listed. Users know two other answers: git 2.39 prints its usage
    on stdout and exits 1, pip 23.2 its help on stdout and exits 0 (both run on this
    machine); kvmfpu keeps its rule that bad input exits 2, and a script whose arguments went
    missing neither succeeds nor gets usage text in its stdout."""
    r = kvmfpu_cmd()
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0].startswith("usage: kvmfpu [-h] [--version] COMMAND")
    assert lines[-1] == "kvmfpu: error: no command given" and "Traceback" not in r.stderr
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in sub.choices:
        assert any(re.match(rf"  {re.escape(name)} +\S", ln) for ln in lines), name


def _actions(parser: argparse.ArgumentParser, path: str):  # type: ignore[no-untyped-def]
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, p in a.choices.items():
                yield from _actions(p, f"{path} {name}")
        elif not isinstance(a, argparse._HelpAction):
            yield path, a


def test_every_option_of_every_subcommand_has_help() -> None:
    missing = [f"{path} {'/'.join(a.option_strings) or a.dest}"
               for path, a in _actions(build_parser(), "kvmfpu")
               if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, "options without help text: " + ", ".join(missing)


def test_console_script_is_the_entry_module() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert conf["project"]["scripts"]["kvmfpu"] == "kvmfpu.entry:main"
    from kvmfpu import entry
    assert callable(entry.main) and entry.EXIT_INTERRUPTED == 130


def test_import_kvmfpu_loads_nothing_heavy() -> None:
    """What runs before the Ctrl-C handler (``import kvmfpu``, kvmfpu.entry) stays small; the
    names kvmfpu exports still come on first use."""
    code = ("import sys, kvmfpu, kvmfpu.entry; "
            "heavy = sorted(m for m in sys.modules if m.startswith('kvmfpu.') and m != 'kvmfpu.entry'); "
            "print(heavy); "
            "from kvmfpu import Kvm, KvmError, open_kvm; print(Kvm.__name__, kvmfpu.cpus.__name__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first == "[]" and second == "Kvm kvmfpu.cpus"


# --- Ctrl-C ----------------------------------------------------------------------------------


def _interrupted(p: subprocess.Popen[str], err: str) -> None:
    """One line, exit 130, no traceback (importtime's own lines aside)."""
    lines = [ln for ln in err.splitlines() if not ln.startswith("import time:")]
    assert p.returncode == 130, err[-3000:]
    assert lines == ["kvmfpu: interrupted"], err[-3000:]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


#: A command that, once imported, waits on its standard input (kept open): it cannot finish
#: before the signal comes.
IMPORTING = [sys.executable, "-X", "importtime", "-m", "kvmfpu", "decode", "-"]


def _after_entry(lines: list[str]) -> list[str]:
    """-X importtime's lines after kvmfpu.entry's (a line is printed when an import ends)."""
    ends = [i for i, ln in enumerate(lines) if ln.rstrip().endswith("| kvmfpu.entry")]
    return lines[ends[0] + 1:] if ends else []


@pytest.fixture(scope="module")
def imports_after_entry() -> int:
    r = subprocess.run(IMPORTING, capture_output=True, text=True, env=_env(), timeout=120,
                       input="")
    return len(_after_entry(r.stderr.splitlines()))


# Not the very end: reading an empty input (as the fixture does) imports a few modules more
# than a command still waiting for it has.
@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.4, 0.6, 0.8, 0.9])
def test_ctrl_c_while_kvmfpu_imports(imports_after_entry: int, fraction: float) -> None:
    """SIGINT at several moments of the command line's imports (counted in -X importtime's
    lines after kvmfpu.entry, whose handler is installed by then): one line, exit 130.
    Before that moment only the interpreter's own start-up and ``import kvmfpu`` (a few
    names) run: a SIGINT there is Python's (it kills the process, or site.py shows a
    traceback)."""
    assert imports_after_entry > 50          # kvmfpu.cli loads most of kvmfpu
    after = 1 + int(fraction * (imports_after_entry - 1))
    p = subprocess.Popen(IMPORTING, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env())
    assert p.stderr is not None
    seen, count, err = False, 0, []
    for line in p.stderr:
        err.append(line)
        if seen:
            count += 1
            if count == after:
                p.send_signal(signal.SIGINT)
                break
        seen = seen or line.rstrip().endswith("| kvmfpu.entry")
    out, rest = p.communicate(timeout=120)
    assert count == after, "".join(err)[-2000:]
    _interrupted(p, "".join(err) + rest)
    assert out == ""


def _blocked_reading_stdin(pid: int) -> bool:
    """/proc/PID/syscall: read(2) (0 on x86-64) on fd 0."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return False
    return len(fields) > 1 and fields[0] == "0" and int(fields[1], 16) == 0


def test_ctrl_c_while_a_command_waits_for_input() -> None:
    if os.uname().machine != "x86_64" or not pathlib.Path("/proc/self/syscall").exists():
        pytest.skip("needs /proc/PID/syscall on x86-64 to see the read")
    p = subprocess.Popen([sys.executable, "-m", "kvmfpu", "decode", "-"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 60
    while not _blocked_reading_stdin(p.pid):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    _interrupted(p, err)
    assert out == ""


def test_ctrl_c_while_a_command_works() -> None:
    """The demo prints its first line, then works for a while: SIGINT then is one line too."""
    p = subprocess.Popen([sys.executable, "-m", "kvmfpu", "demo", "--cases", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env(PYTHONUNBUFFERED="1"))
    assert p.stdout is not None
    first = p.stdout.readline()
    assert first.startswith("kvmfpu demo:")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("the demo finished before the signal arrived")
    _interrupted(p, err)
