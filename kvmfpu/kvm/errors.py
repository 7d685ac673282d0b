"""Errors from the KVM model (and, later, from the real /dev/kvm): an OSError with the real
errno and a ``reason`` naming the kernel function, the condition and the commit."""

from __future__ import annotations

import errno as _errno
import os

from kvmfpu.core.faults import Fault


class KvmError(OSError):
    """An ioctl failed. ``errno`` is what the kernel returns; ``reason`` says why."""

    def __init__(self, err: int, function: str, condition: str, *, commit: str | None = None,
                 source: str = "model"):
        self.function = function
        self.condition = condition
        self.commit = commit
        self.source = source
        where = f" [{commit}]" if commit else ""
        self.reason = f"{function}: {condition}{where}"
        super().__init__(err, f"{os.strerror(err)}: {self.reason}")

    @property
    def errno_name(self) -> str:
        return _errno.errorcode.get(self.errno or 0, str(self.errno))


def einval(function: str, condition: str, commit: str | None = None) -> KvmError:
    return KvmError(_errno.EINVAL, function, condition, commit=commit)


def closed_fd(what: str) -> KvmError:
    """What ioctl(2) gives on a closed fd: the syscall's fdget fails (fs/ioctl.c)."""
    return KvmError(_errno.EBADF, "ioctl", f"the {what} fd is closed")


class HostOops(RuntimeError):
    """The host kernel itself faulted (a WARN or panic in real life), e.g. the #NM in
    ``restore_fpregs_from_fpstate`` that seed 003 describes. Carries the CPU fault and the
    kernel call chain."""

    def __init__(self, fault: Fault, chain: list[str], fix: str | None = None):
        self.fault = fault
        self.chain = list(chain)
        self.fix = fix
        text = " <- ".join(reversed(self.chain))
        super().__init__(f"host kernel {fault.label} in {text}: {fault.reason}"
                         + (f" (fixed by {fix})" if fix else ""))
