"""struct fpstate, struct fpu_guest and the per-thread/per-process FPU state.

Source: Linux arch/x86/include/asm/fpu/types.h (v5.16+): fpstate {size, user_size,
xfeatures, user_xfeatures, xfd, is_valloc, is_guest, in_use, regs}; fpu_guest {xfeatures,
perm, xfd_err, uabi_size, fpstate}; fpu {fpstate, __task_fpstate, perm, guest_perm}.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: init_pkru_value (arch/x86/mm/pkeys.c): access disabled for every key but 0; a task gets
#: it at exec (pkru_write_default) when the kernel runs with protection keys.
INIT_PKRU_VALUE = 0x5555_5554

#: FPU_GUEST_PERM_LOCKED (bit 63 of guest_perm.__state_perm): set at first vCPU creation.
PERM_LOCKED = 1 << 63


class FpState:
    """A kernel xsave buffer and its bookkeeping. The bytes live in the kernel's arena."""

    __slots__ = ("in_use", "is_guest", "off", "size", "user_size", "user_xfeatures", "xfd",
                 "xfeatures")

    def __init__(self, off: int, size: int, user_size: int, xfeatures: int,
                 user_xfeatures: int, xfd: int, is_guest: bool):
        self.off = off
        self.size = size
        self.user_size = user_size
        self.xfeatures = xfeatures
        self.user_xfeatures = user_xfeatures
        self.xfd = xfd
        self.is_guest = is_guest
        self.in_use = False


class FpuGuest:
    __slots__ = ("fpstate", "perm", "uabi_size", "xfd_err", "xfeatures")

    def __init__(self, fpstate: FpState, xfeatures: int, perm: int, uabi_size: int):
        self.fpstate = fpstate
        self.xfeatures = xfeatures
        self.perm = perm
        self.uabi_size = uabi_size
        self.xfd_err = 0


@dataclass
class Permission:
    """fpu_state_perm: what a process may use (and, for guests, whether it is locked)."""

    state_perm: int
    state_size: int
    user_state_size: int


@dataclass
class Process:
    """The VMM process: arch_prctl permissions live in its group leader."""

    perm: Permission
    guest_perm: Permission


@dataclass
class Thread:
    """A vCPU thread: its own fpstate, TIF_NEED_FPU_LOAD and the task fpstate saved while
    the guest's is installed."""

    fpstate: FpState | None = None
    task_fpstate: FpState | None = None
    need_fpu_load: bool = True          # a new thread has no registers loaded
    pkru: int = INIT_PKRU_VALUE         # thread.pkru: the task's PKRU outside the xstate
    name: str = "vcpu"
    events: list[str] = field(default_factory=list)
