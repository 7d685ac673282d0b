"""Real QEMU migration streams for tests: start ``qemu-system-x86_64``, drive it over QMP,
migrate to a file (``migrate exec:cat > FILE``, the way streams are saved by hand), quit.

    with Qemu(["-accel", "tcg", "-cpu", "max", "-S"]) as vm:
        vm.cmd("stop")
        stream = vm.migrate_to(path)

QEMU that is missing or does not start raises QemuUnavailable (tests skip on it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

BASE_ARGS = ("-m", "16", "-nodefaults", "-display", "none", "-machine", "pc")


class QemuUnavailable(RuntimeError):
    """qemu-system-x86_64 is not installed, or did not start with these arguments."""


class Qemu:
    """One QEMU process with a QMP socket; ``args`` come after BASE_ARGS."""

    def __init__(self, args: list[str], *, binary: str = "qemu-system-x86_64"):
        found = shutil.which(binary)
        if found is None:
            raise QemuUnavailable(f"{binary} not installed")
        self._dir = tempfile.TemporaryDirectory(prefix="kvmfpu-qemu-")
        self.sock = Path(self._dir.name) / "qmp.sock"
        self.proc = subprocess.Popen([found, *BASE_ARGS, *args,
                                      "-qmp", f"unix:{self.sock},server=on,wait=off"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._f: TextIO | None = None

    def __enter__(self) -> Qemu:
        s = socket.socket(socket.AF_UNIX)
        for _ in range(200):
            try:
                s.connect(str(self.sock))
                break
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        else:
            self.proc.kill()
        if self.proc.poll() is not None:
            err = self.proc.communicate()[1].decode(errors="replace")
            s.close()
            self._dir.cleanup()
            raise QemuUnavailable(f"QEMU did not start: {err[-300:]}")
        self._f = s.makefile("rw")
        json.loads(self._f.readline())                  # the greeting
        self.cmd("qmp_capabilities")
        return self

    def cmd(self, name: str, **arguments: Any) -> Any:
        """A QMP command's ``return`` value (the whole reply when it is an error)."""
        assert self._f is not None, "use Qemu as a context manager"
        self._f.write(json.dumps({"execute": name, "arguments": arguments}) + "\n")
        self._f.flush()
        while True:                                     # events may come first
            reply = json.loads(self._f.readline())
            if "return" in reply or "error" in reply:
                return reply.get("return", reply)

    def hmp(self, command: str) -> str:
        return str(self.cmd("human-monitor-command", **{"command-line": command}))

    def migrate_to(self, path: Path, timeout: float = 60) -> Path:
        """Migrate the (stopped) VM into ``path`` and wait for completion."""
        self.cmd("migrate", uri=f"exec:cat > {path}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.cmd("query-migrate").get("status")
            if status == "completed":
                return path
            if status == "failed":
                break
            time.sleep(0.05)
        raise QemuUnavailable(f"migration to {path} did not complete")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if self._f is not None and self.proc.poll() is None:
                self.cmd("quit")
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._dir.cleanup()


def free_port() -> int:
    """A TCP port for QEMU's gdb stub (``-gdb tcp:127.0.0.1:PORT``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def version(binary: str = "qemu-system-x86_64") -> str:
    """'7.2.22' from ``qemu-system-x86_64 --version``."""
    found = shutil.which(binary)
    if found is None:
        raise QemuUnavailable(f"{binary} not installed")
    out = subprocess.run([found, "--version"], capture_output=True, text=True, check=True,
                         env={**os.environ, "LC_ALL": "C"}).stdout
    return out.split()[3]
