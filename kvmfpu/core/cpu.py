"""The emulated processor core for the XSAVE feature set.

``Cpu(model, memory)`` executes XSAVE, XSAVEOPT, XSAVEC, XSAVES, XRSTOR, XRSTORS, FXSAVE,
FXRSTOR, XGETBV, XSETBV, RDMSR and WRMSR against a caller-owned memory buffer, the way
the host CPU model's processor does: the same bytes written, the same faults.

Sources, by rule: Intel SDM Vol. 1 ch. 13 (§13.6 XINUSE and the optimisations, §13.7-13.12
operation of each instruction, §13.14 XFD) and Vol. 2 instruction pages (the exception
lists); where the SDM leaves a choice, what the real processor does (see
:mod:`kvmfpu.cpus.behaviour`, measured by tests/native). Check order: #UD, #NM, #GP for
CPL and alignment, #PF for memory, then header and MXCSR #GP, then XFD #NM; nothing is
written until every check has passed.

The instruction families live beside this file, as Bochs splits its xsave.cc by
instruction: :mod:`~kvmfpu.core.restore`, :mod:`~kvmfpu.core.save`,
:mod:`~kvmfpu.core.fxsr`, :mod:`~kvmfpu.core.control` (XCR0 and MSRs) and
:mod:`~kvmfpu.core.registers`; :mod:`~kvmfpu.core.state` holds what they share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from typing_extensions import Buffer

from kvmfpu import cpus
from kvmfpu.arch import xfeatures as xf
from kvmfpu.core.control import Control, xcr0_problem
from kvmfpu.core.faults import GeneralProtection
from kvmfpu.core.fxsr import Fxsr
from kvmfpu.core.regfile import RegFileLayout
from kvmfpu.core.restore import Restore
from kvmfpu.core.save import Save
from kvmfpu.core.state import _X87, M64
from kvmfpu.cpus.model import HostModel

__all__ = ["Cpu", "CpuState", "xcr0_problem"]


@dataclass(frozen=True)
class CpuState:
    """Everything architectural the core holds, as one comparable value."""

    regs: bytes
    fcs: int
    fds: int
    xcr0: int
    xss: int
    xfd: int
    xfd_err: int
    s_cet: int
    int_ssp_tab: int
    xinuse: int
    xmodified: int
    xrstor_info: tuple[int, bool, int, int] | None
    cpl: int
    cr0_ts: bool
    cr0_em: bool
    cr4_osxsave: bool
    cr4_osfxsr: bool
    vmx_nonroot: bool


#: CpuState field -> Cpu attribute, in CpuState order after ``regs``.
_STATE_ATTRS: Final = (
    ("fcs", "_fcs"), ("fds", "_fds"), ("xcr0", "_xcr0"), ("xss", "_xss"), ("xfd", "_xfd"),
    ("xfd_err", "_xfd_err"), ("s_cet", "_s_cet"), ("int_ssp_tab", "_int_ssp_tab"),
    ("xinuse", "_xinuse"), ("xmodified", "_xmodified"), ("xrstor_info", "_xrstor_info"),
    ("cpl", "cpl"), ("cr0_ts", "cr0_ts"), ("cr0_em", "cr0_em"), ("cr4_osxsave", "_osxsave"),
    ("cr4_osfxsr", "cr4_osfxsr"), ("vmx_nonroot", "vmx_nonroot"),
)


class Cpu(Restore, Save, Fxsr, Control):
    """One logical processor of a host CPU model, executing the XSAVE feature set.

    ``memory`` is the caller's writable buffer (bytearray, mmap, ctypes array, ...);
    instruction addresses are offsets into it. Without one, 64 KiB are allocated.
    The processor starts in its RESET state (SDM Vol. 3A table 9-1): CPL 0,
    CR4.OSXSAVE=0, XCR0=1, IA32_XSS=0, IA32_XFD=0.
    """

    def __init__(self, model: HostModel | str | os.PathLike[str], memory: Buffer | None = None,
                 *, cpl: int = 0):
        host = cpus.load(model)
        self.host = host
        mem = memoryview(bytearray(1 << 16) if memory is None else memory)
        if mem.readonly:
            raise TypeError("memory must be a writable buffer")
        self.memory = mem.cast("B") if mem.format != "B" or mem.ndim != 1 else mem
        self._mem = self.memory
        self._memsize = len(self.memory)

        beh = host.behaviour
        self._beh = beh
        self._has_xsave = host.has("xsave")
        self._has_xsaveopt = host.has("xsaveopt")
        self._has_xsavec = host.has("xsavec")
        self._has_xgetbv1 = host.has("xgetbv1")
        self._has_xsaves = host.has("xsaves")
        self._has_xfd = host.has("xfd")
        self._has_fxsr = host.has("fxsr")
        self._has_shstk = host.has("shstk")
        self._has_ibt = host.has("ibt")
        self._la57 = host.has("la57")
        self._supported_xcr0 = host.supported_xcr0
        self._supported_xss = host.supported_xss
        self._xfd_capable = host.xfd_capable
        self._mxcsr_rsvd = ~beh.mxcsr_mask & 0xFFFFFFFF
        self._layout = host.layout

        self._rf = RegFileLayout(host.layout)
        self._init = bytes(self._rf.init_image(beh.mxcsr_mask))
        self._regs = bytearray(self._init)
        self._plans = {}

        self.cpl = cpl
        self.cr0_ts = False
        self.cr0_em = False
        self._osxsave = False
        self.cr4_osfxsr = True
        self.vmx_nonroot = False
        self.reset()

    # -- architectural state ---------------------------------------------------------------
    def reset(self) -> None:
        """RESET (SDM Vol. 3A table 9-1): FCW=0040h, FTW=5555h (every register +0.0, valid),
        MXCSR=1F80h, all other XSAVE state zero, XCR0=1, IA32_XSS=IA32_XFD=0."""
        self._regs[:] = self._init
        _X87.pack_into(self._regs, 0, 0x0040, 0, 0xFF, 0, 0, 0, 0)
        self._fcs = self._fds = 0
        self._xcr0 = xf.FP
        self._xss = 0
        self._xfd = 0
        self._xfd_err = 0
        self._s_cet = 0
        self._int_ssp_tab = 0
        self._xinuse = xf.FP      # the x87 RESET state is not its initial configuration
        self._xmodified = M64
        self._xrstor_info = None
        self._osxsave = False
        self.cr0_ts = False
        self.cr0_em = False

    def snapshot(self) -> CpuState:
        """The full architectural state (compare two snapshots to see what changed)."""
        return CpuState(bytes(self._regs), *(getattr(self, a) for _, a in _STATE_ATTRS))

    def restore_snapshot(self, state: CpuState) -> None:
        """Put back a state taken with :meth:`snapshot` on a Cpu of the same host."""
        if len(state.regs) != len(self._regs):
            raise ValueError("the snapshot comes from a different host model")
        self._regs[:] = state.regs
        for field_name, attr in _STATE_ATTRS:
            setattr(self, attr, getattr(state, field_name))

    @property
    def cr4_osxsave(self) -> bool:
        return self._osxsave

    @cr4_osxsave.setter
    def cr4_osxsave(self, value: bool) -> None:
        if value and not self._has_xsave:
            raise GeneralProtection("MOV CR4", "CR4.OSXSAVE=1 but CPUID.1:ECX.XSAVE=0")
        self._osxsave = bool(value)

    @property
    def xcr0(self) -> int:
        return self._xcr0

    @property
    def xss(self) -> int:
        return self._xss

    @property
    def xfd(self) -> int:
        return self._xfd

    @property
    def xfd_err(self) -> int:
        return self._xfd_err

    @property
    def xinuse(self) -> int:
        """XINUSE as the SDM defines it (XINUSE[1] covers XMM0-15, not MXCSR)."""
        return self._xinuse

    @property
    def xmodified(self) -> int:
        return self._xmodified

    @property
    def xrstor_info(self) -> tuple[int, bool, int, int] | None:
        """(CPL, VMX non-root, linear address, XCOMP_BV or 0) of the last XRSTOR/XRSTORS."""
        return self._xrstor_info

    def cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        """CPUID as software on this processor sees it now (OSXSAVE and the XSAVE sizes
        follow CR4, XCR0 and IA32_XSS, SDM CPUID leaf 1 ECX[27] and leaf 0DH EBX)."""
        a, b, c, d = self.host.cpuid(leaf, subleaf)
        if leaf == 1:
            c = c | 1 << 27 if self._osxsave else c & ~(1 << 27)
        elif leaf == 0xD and subleaf == 0 and self._has_xsave:
            b = self._layout.standard_size(self._xcr0)
        elif leaf == 0xD and subleaf == 1 and self._has_xsave and (a & 0xA):
            b = self._layout.compacted_size(self._xcr0 | self._xss)
        return a, b, c, d
