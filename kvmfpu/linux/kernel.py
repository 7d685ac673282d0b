"""The host kernel's FPU core, executing on one emulated physical CPU.

Functions keep their Linux names (arch/x86/kernel/fpu/{core,xstate}.c, v6.12 unless a
version switch says otherwise) and use the core's instructions the way Linux does:
os_xsave picks XSAVES, then XSAVEC (5.19+, 8ad7e8f69695), then XSAVEOPT, then XSAVE
(XSTATE_XSAVE's ALTERNATIVE_3); os_xrstor uses XRSTORS with XSAVES, XRSTOR otherwise;
buffers are compacted (X86_FEATURE_XCOMPACTED) when XSAVES or (5.19+) XSAVEC is used.
A fault the kernel takes on its own buffers becomes a :class:`HostOops`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import XCOMP_COMPACTED
from kvmfpu.core import Cpu, Fault, PageFault
from kvmfpu.core.msrs import IA32_XFD, IA32_XSS
from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm.errors import HostOops
from kvmfpu.kvm.profiles import KernelProfile
from kvmfpu.linux.arena import Arena
from kvmfpu.linux.config import FpuConfig, fpu_config
from kvmfpu.linux.fpstate import PERM_LOCKED, FpState, FpuGuest, Permission, Process, Thread

_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
ALL = (1 << 64) - 1
#: XFEATURE_MASK_FPSTATE: what restore_fpregs_from_fpstate restores for tasks and KVM. PKRU
#: is not in it (XFEATURE_MASK_USER_RESTORE, 5.14): the register keeps the current task's
#: value (switch_to's x86_pkru_load) and KVM switches the guest's at VM entry/exit.
FPSTATE_MASK = ALL & ~xf.PKRU


class HostKernel:
    """Linux's FPU core on one CPU of ``host`` running ``kernel``."""

    def __init__(self, host: HostModel, kernel: KernelProfile, arena: Arena | None = None):
        self.host = host
        self.kernel = kernel
        self.arena = arena or Arena()
        self.mem = self.arena.view
        self.cfg: FpuConfig = fpu_config(host, kernel)
        cfg = self.cfg
        self.layout = host.layout
        use_xsavec = kernel.has("kernel_xsavec") and host.has("xsavec")
        self.compacted = cfg.has_xsave and (cfg.uses_xsaves or use_xsavec)
        if not cfg.has_xsave:
            self.save_insn = "fxsave"
        elif cfg.uses_xsaves:
            self.save_insn = "xsaves"
        elif use_xsavec:
            self.save_insn = "xsavec"
        elif cfg.uses_xsaveopt:
            self.save_insn = "xsaveopt"
        else:
            self.save_insn = "xsave"
        # XFD-based dynamic sizing (fpu_state_size_dynamic): AMX hosts from 5.16.
        self.dynamic = bool(cfg.xcr0 & xf.XTILEDATA) and host.has("xfd")

        self.cpu = Cpu(host, self.mem)
        if cfg.has_xsave:
            self.cpu.cr4_osxsave = True
            self.cpu.xsetbv(0, cfg.xcr0)
            if cfg.uses_xsaves:
                self.cpu.wrmsr(IA32_XSS, cfg.xss)
        self.xfd_state = 0
        self.owner: FpState | None = None        # whose registers the CPU holds
        self.in_kernel_fpu = False
        self.current: Thread | None = None
        self.log: list[str] = []

        # init_fpstate's legacy region (FCW 037F, MXCSR 1F80, the boot FXSAVE's mask).
        init = bytearray(legacy.LEGACY_SIZE)
        struct.pack_into("<H", init, legacy.FCW, legacy.FCW_INIT)
        struct.pack_into("<II", init, legacy.MXCSR, legacy.MXCSR_INIT, cfg.mxcsr_mask)
        self.init_legacy = bytes(init)
        # xstate_fx_sw_bytes as ptrace and KVM see it: word 0 = fpu_user_cfg.max_features.
        self.sw_bytes = _Q.pack(cfg.user_max) + bytes(40)
        # Sizes (Linux xstate_calculate_size).
        self._user_size_cache: dict[int, int] = {}

    # -- sizes and layout ------------------------------------------------------------------
    def kernel_size(self, xfeatures: int) -> int:
        if not self.cfg.has_xsave:
            return legacy.LEGACY_SIZE
        if self.compacted:
            return self.layout.compacted_size(xfeatures)
        return self.layout.standard_size(xfeatures)

    def user_size(self, xfeatures: int) -> int:
        if not self.cfg.has_xsave:
            return legacy.LEGACY_SIZE
        return self.layout.standard_size(xfeatures & self.cfg.user_max)

    def component_offset(self, fps: FpState, bit: int) -> int:
        """Where component ``bit`` sits inside ``fps`` (__raw_xsave_addr)."""
        if bit < 2:
            return 0
        if self.compacted:
            return self.layout.compacted(self.xcomp_bv(fps))[0][bit]
        return self.layout.components[bit].offset

    def header(self, fps: FpState) -> tuple[int, int]:
        bv, cb = _QQ.unpack_from(self.mem, fps.off + legacy.XSTATE_BV)
        return int(bv), int(cb)

    def xstate_bv(self, fps: FpState) -> int:
        return int(_Q.unpack_from(self.mem, fps.off + legacy.XSTATE_BV)[0])

    def set_xstate_bv(self, fps: FpState, bv: int) -> None:
        _Q.pack_into(self.mem, fps.off + legacy.XSTATE_BV, bv)

    def xcomp_bv(self, fps: FpState) -> int:
        return int(_Q.unpack_from(self.mem, fps.off + legacy.XCOMP_BV)[0])

    # -- allocation (fpstate_init_user, fpu_alloc_guest_fpstate, fpstate_realloc) ----------
    def alloc_fpstate(self, xfeatures: int, user_xfeatures: int, *, xfd: int = 0,
                      guest: bool = False, size: int | None = None) -> FpState:
        size = max(size or 0, self.kernel_size(xfeatures))
        off = self.arena.alloc(size)
        fps = FpState(off, size, self.user_size(user_xfeatures), xfeatures, user_xfeatures, xfd,
                      guest)
        mem = self.mem
        # fpstate_init_fxstate: FCW=0x37F, MXCSR=0x1F80 (MXCSR_MASK stays 0 until a save).
        struct.pack_into("<H", mem, off + legacy.FCW, legacy.FCW_INIT)
        struct.pack_into("<I", mem, off + legacy.MXCSR, legacy.MXCSR_INIT)
        if self.compacted:     # xstate_init_xcomp_bv
            _Q.pack_into(mem, off + legacy.XCOMP_BV, xfeatures | XCOMP_COMPACTED)
        return fps

    def free_fpstate(self, fps: FpState) -> None:
        if self.owner is fps:
            self.owner = None
        self.arena.free(fps.off, fps.size)

    def guest_fpstate(self) -> FpState:
        """fpu_alloc_guest_fpstate's buffer: guest default features, xfd = 0, user_xfeatures =
        fpu_user_cfg.default_features (__fpstate_reset)."""
        cfg = self.cfg
        xfeatures = cfg.guest_default if self.kernel.at_least(6, 18) else cfg.kernel_default
        return self.alloc_fpstate(xfeatures, cfg.user_default, guest=True)

    def thread_fpstate(self) -> FpState:
        """A user thread's fpstate: default features, XFD arming the dynamic ones
        (init_fpstate.xfd = user max & XFEATURE_MASK_USER_DYNAMIC)."""
        cfg = self.cfg
        return self.alloc_fpstate(cfg.kernel_default, cfg.user_default,
                                  xfd=cfg.user_max & xf.XTILEDATA if self.dynamic else 0)

    def fpstate_realloc(self, gfpu: FpuGuest, xfeatures: int, ksize: int, usize: int,
                        user_xfeatures_too: bool, thread: Thread | None) -> None:
        """fpstate_realloc for a guest: a larger buffer with the dynamic features."""
        cur = gfpu.fpstate
        in_use = thread is not None and thread.fpstate is cur
        if in_use and thread is not None and thread.need_fpu_load:
            self.fpregs_restore_userregs(thread)
        new = self.alloc_fpstate(cur.xfeatures | xfeatures,
                                 cur.user_xfeatures | (xfeatures if user_xfeatures_too else 0),
                                 xfd=cur.xfd & ~xfeatures, guest=True, size=ksize)
        new.in_use = cur.in_use
        new.user_size = usize
        gfpu.xfeatures |= xfeatures
        gfpu.uabi_size = usize
        gfpu.fpstate = new
        if in_use and thread is not None:
            thread.fpstate = new
            if self.owner is cur:
                self.owner = new
            self.xfd_update_state(new)
        self.free_fpstate(cur)

    # -- permissions (arch_prctl ARCH_REQ_XCOMP_GUEST_PERM) ---------------------------------
    def new_process(self) -> Process:
        cfg = self.cfg
        default = cfg.kernel_default
        perm = Permission(default, self.kernel_size(default), self.user_size(default))
        gperm = Permission(default, self.kernel_size(default & ~cfg.xss),
                           self.user_size(default))
        return Process(perm, gperm)

    # -- registers <-> fpstate ---------------------------------------------------------------
    def _run(self, chain: list[str], insn: str, fps: FpState, mask: int) -> None:
        try:
            getattr(self.cpu, insn)(fps.off, mask)
        except Fault as fault:
            fix = None
            if fault.vector == 7 and self.kernel.has("amx"):
                fix = "b45f72177594 (6.19; 6.18.7, 6.12.67, 6.6.122, 6.1.162)"
            raise HostOops(fault, chain, fix) from None

    def save_fpregs_to_fpstate(self, fps: FpState, chain: list[str]) -> None:
        """os_xsave: the kernel's XSAVE* of the registers into ``fps`` (RFBM = xfeatures)."""
        chain = [*chain, "save_fpregs_to_fpstate", "os_xsave"]
        if self.save_insn == "fxsave":
            self.cpu.fxsave(fps.off)
        else:
            self._run(chain, self.save_insn, fps, fps.xfeatures)
        self.log.append(f"{self.save_insn.upper()} -> fpstate@{fps.off:#x} "
                        f"XSTATE_BV={self.xstate_bv(fps):#x}")

    def restore_fpregs_from_fpstate(self, fps: FpState, mask: int, chain: list[str]) -> None:
        """XFD first (xfd_update_state), then XRSTOR[S] with RFBM = max_features & mask."""
        chain = [*chain, "restore_fpregs_from_fpstate"]
        if not self.cfg.has_xsave:
            self.cpu.fxrstor(fps.off)
        else:
            self.xfd_update_state(fps)
            insn = "xrstors" if self.cfg.uses_xsaves else "xrstor"
            self.log.append(f"{insn.upper()} <- fpstate@{fps.off:#x} "
                            f"XSTATE_BV={self.xstate_bv(fps):#x} XFD={self.xfd_state:#x}")
            self._run([*chain, "os_xrstor"], insn, fps, self.cfg.kernel_max & mask)
        self.owner = fps

    def xfd_update_state(self, fps: FpState) -> None:
        if self.dynamic and self.xfd_state != fps.xfd:
            self.cpu.wrmsr(IA32_XFD, fps.xfd)
            self.xfd_state = fps.xfd

    def fpregs_restore_userregs(self, thread: Thread, chain: list[str] | None = None) -> None:
        """switch_fpu_return: reload the thread's state if the registers are not its."""
        assert thread.fpstate is not None
        if self.owner is not thread.fpstate:
            self.restore_fpregs_from_fpstate(
                thread.fpstate, FPSTATE_MASK,
                [*(chain or []), "switch_fpu_return", "fpregs_restore_userregs"])
        thread.need_fpu_load = False

    # -- events a test can inject --------------------------------------------------------------
    def kernel_fpu_begin(self, thread: Thread, where: str = "irq") -> None:
        """kernel_fpu_begin_mask from an interrupt on ``thread``'s CPU: save the thread's live
        registers into its *current* fpstate (the guest's during KVM_RUN) and mark them
        invalid; the kernel then uses SSE itself (the registers are clobbered)."""
        if not thread.need_fpu_load and thread.fpstate is not None:
            thread.need_fpu_load = True
            self.save_fpregs_to_fpstate(thread.fpstate, [where, "kernel_fpu_begin_mask"])
        self.owner = None
        self.in_kernel_fpu = True
        cpu = self.cpu
        saved_cpl, cpu.cpl = cpu.cpl, 0
        try:
            cpu.set_reg("xmm0", 0x6B65726E656C)      # "kernel": the kernel's own SSE use
            cpu.set_reg("mxcsr", 0x1F80)
        finally:
            cpu.cpl = saved_cpl
        self.log.append(f"kernel_fpu_begin ({where})")

    def kernel_fpu_end(self) -> None:
        self.in_kernel_fpu = False

    def context_switch_out(self, thread: Thread) -> None:
        """The scheduler runs another task: the thread's registers go to its fpstate
        (switch_fpu_prepare) and another task's state replaces them."""
        if not thread.need_fpu_load and thread.fpstate is not None:
            self.save_fpregs_to_fpstate(thread.fpstate, ["__schedule", "switch_fpu_prepare"])
            thread.need_fpu_load = True
        self.owner = None

    # -- KVM's guest FPU swap -----------------------------------------------------------------
    def fpu_swap_kvm_fpstate(self, thread: Thread, gfpu: FpuGuest, enter_guest: bool,
                             chain: list[str]) -> None:
        chain = [*chain, "fpu_swap_kvm_fpstate"]
        if thread.fpstate is None:
            thread.fpstate = self.thread_fpstate()
        cur = thread.fpstate
        if not thread.need_fpu_load:
            self.save_fpregs_to_fpstate(cur, chain)
        guest = gfpu.fpstate
        if not enter_guest and thread.task_fpstate is None:
            # fpu->__task_fpstate is NULL: the guest FPU was never loaded (6.18-rc1..rc5).
            raise HostOops(PageFault("fpu_swap_kvm_fpstate",
                                     "fpu->__task_fpstate is NULL: putting a guest FPU that "
                                     "was never loaded"), chain, "8819a49f9ff8 (6.18-rc6)")
        if enter_guest:
            thread.task_fpstate = cur
            thread.fpstate = guest
            guest.in_use = True
        else:
            guest.in_use = False
            assert thread.task_fpstate is not None
            thread.fpstate = thread.task_fpstate
            thread.task_fpstate = None
        self.restore_fpregs_from_fpstate(thread.fpstate, FPSTATE_MASK, chain)
        thread.need_fpu_load = False

    def fpu_update_guest_xfd(self, thread: Thread | None, gfpu: FpuGuest, xfd: int) -> None:
        """Guest or host write of IA32_XFD. With b45f72177594, XSTATE_BV bits armed by the
        new XFD are cleared when the guest state is not in the registers."""
        fps = gfpu.fpstate
        need_load = thread.need_fpu_load if thread is not None else True
        if self.kernel.has("xfd_clears_xstate_bv") and xfd and need_load:
            self.set_xstate_bv(fps, self.xstate_bv(fps) & ~xfd)
        fps.xfd = xfd
        if fps.in_use:
            self.xfd_update_state(fps)

    def fpstate_clear_xstate_component(self, fps: FpState, bit: int) -> None:
        """Zero the component's memory if XSTATE_BV has it; the BV bit is kept."""
        if not self.xstate_bv(fps) >> bit & 1:
            return
        off = fps.off + self.component_offset(fps, bit)
        size = self.layout.components[bit].size
        self.mem[off:off + size] = bytes(size)

    @contextmanager
    def running(self, thread: Thread) -> Iterator[None]:
        prev, self.current = self.current, thread
        if self.cfg.xcr0 & xf.PKRU and self.cpu.reg("pkru") != thread.pkru:
            self.cpu.set_reg("pkru", thread.pkru)      # switch_to: x86_pkru_load
        try:
            yield
        finally:
            self.current = prev


def lock_guest_permissions(proc: Process) -> None:
    """fpu_init_guest_permissions: the first vCPU locks the guest permissions."""
    proc.guest_perm.state_perm |= PERM_LOCKED

