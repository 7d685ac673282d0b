"""``Kvm``: /dev/kvm for one host CPU model, kernel version and vendor flavour."""

from __future__ import annotations

import errno
import os
from functools import cached_property
from typing import Final

from kvmfpu import cpus
from kvmfpu import uapi as caps_ids
from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import msrs as msr
from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm.caps import FLAVORS, KvmCaps, default_flavor, kvm_caps
from kvmfpu.kvm.cpuid import CpuidEntry, permitted_xcr0, supported_cpuid, xstate_required_size
from kvmfpu.kvm.errors import KvmError
from kvmfpu.kvm.origins import cite
from kvmfpu.kvm.profiles import NEWEST, KernelProfile, profile
from kvmfpu.kvm.vm import Vm
from kvmfpu.linux.arena import Arena
from kvmfpu.linux.fpstate import PERM_LOCKED
from kvmfpu.linux.kernel import HostKernel

KVM_API_VERSION: Final = 12
ARCH_GET_XCOMP_GUEST_PERM: Final = 0x1024
ARCH_REQ_XCOMP_GUEST_PERM: Final = 0x1025
KVM_X86_XCOMP_GUEST_SUPP: Final = 0
KVM_SUPPORTED_CPUID_MAX: Final = 256


class Kvm:
    """/dev/kvm on ``host`` (a model name, dump file or HostModel) with ``kernel``
    (e.g. "6.6", "6.1.60", "6.1.y") and ``flavor`` ("vmx", "svm" or "pvm"; default by
    vendor). It also stands for the VMM process (arch_prctl guest permissions)."""

    def __init__(self, host: HostModel | str | os.PathLike[str] = "skylake-sp",
                 kernel: str | KernelProfile = NEWEST, flavor: str | None = None,
                 *, arena: Arena | None = None):
        self.host = cpus.load(host)
        self.kernel = kernel if isinstance(kernel, KernelProfile) else profile(kernel)
        self.flavor = flavor or default_flavor(self.host)
        if self.flavor not in FLAVORS:
            raise ValueError(f"unknown flavour {self.flavor!r} (one of {', '.join(FLAVORS)})")
        amd = self.host.vendor in ("AuthenticAMD", "HygonGenuine")
        if (self.flavor == "vmx" and amd) or (self.flavor == "svm" and not amd):
            raise ValueError(f"flavour {self.flavor} does not run on a {self.host.vendor} host")
        self.hk = HostKernel(self.host, self.kernel, arena)
        self.caps: KvmCaps = kvm_caps(self.host, self.kernel, self.hk.cfg, self.flavor)
        self.process = self.hk.new_process()
        self.vms: list[Vm] = []

    def __repr__(self) -> str:
        return f"Kvm(host={self.host.name!r}, kernel={self.kernel.name!r}, flavor={self.flavor!r})"

    # Parity with the real backend's file descriptors (kvmfpu.open_kvm).
    def close(self) -> None:
        """Nothing to release in the model; here so code can treat both backends alike."""

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- system ioctls -------------------------------------------------------------------------
    def get_api_version(self) -> int:
        return KVM_API_VERSION

    def create_vm(self, vm_type: int = 0, *, memory_size: int = 64 << 10) -> Vm:
        vm = Vm(self, vm_type, memory_size)
        self.vms.append(vm)
        return vm

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION (kvm_vm_ioctl_check_extension): same on /dev/kvm and VM fds."""
        if cap == caps_ids.KVM_CAP_XSAVE:
            return 1
        if cap == caps_ids.KVM_CAP_XCRS:
            return int(self.hk.cfg.has_xsave)
        if cap == caps_ids.KVM_CAP_XSAVE2:
            if not self.kernel.has("xsave2"):
                return 0
            return max(4096, xstate_required_size(self.host.layout, self.permitted_xcr0(), False,
                                                  True))
        return 0

    def permitted_xcr0(self) -> int:
        return permitted_xcr0(self.caps, self.kernel, self.process.guest_perm.state_perm)

    def get_supported_cpuid(self, nent: int = KVM_SUPPORTED_CPUID_MAX) -> list[CpuidEntry]:
        """KVM_GET_SUPPORTED_CPUID; -E2BIG when ``nent`` is too small (nent not updated)."""
        entries = supported_cpuid(self.host, self.kernel, self.caps,
                                  self.process.guest_perm.state_perm)
        if nent < 1 or nent < len(entries):
            raise KvmError(errno.E2BIG, "kvm_dev_ioctl_get_cpuid",
                           f"nent {nent} < the {len(entries)} entries KVM returns",
                           commit=cite("cpuid2"))
        return entries

    @cached_property
    def _msr_list(self) -> tuple[int, ...]:
        out: list[int] = []
        p, c = self.kernel, self.caps
        if p.has("cet") and c.supported_xss:
            out.append(msr.IA32_XSS)
        if p.has("amx") and c.xfd:
            out += [msr.IA32_XFD, msr.IA32_XFD_ERR]
        if p.has("cet"):
            if c.shstk or c.ibt:
                out += [msr.IA32_U_CET, msr.IA32_S_CET]
            if c.shstk:
                out += [msr.IA32_PL0_SSP, msr.IA32_PL1_SSP, msr.IA32_PL2_SSP, msr.IA32_PL3_SSP,
                        msr.IA32_INT_SSP_TAB]
        return tuple(out)

    def msr_index_list(self) -> tuple[int, ...]:
        """The xstate-related part of KVM_GET_MSR_INDEX_LIST (msrs_to_save)."""
        return self._msr_list

    def get_msr_index_list(self) -> list[int]:
        return list(self._msr_list)

    # -- process-level: arch_prctl and device attributes ----------------------------------------
    def arch_prctl(self, option: int, arg: int = 0) -> int:
        """arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, idx) / (ARCH_GET_XCOMP_GUEST_PERM) for the
        VMM process (fpu_xstate_prctl, xstate_request_perm; 980fe2fddcff, 5.17)."""
        fn = "fpu_xstate_prctl"
        if not self.kernel.has("amx") or option not in (ARCH_GET_XCOMP_GUEST_PERM,
                                                        ARCH_REQ_XCOMP_GUEST_PERM):
            raise KvmError(errno.EINVAL, fn, f"unknown option {option:#x}",
                           commit=cite("guest_perm"))
        gperm = self.process.guest_perm
        if option == ARCH_GET_XCOMP_GUEST_PERM:
            return gperm.state_perm & xf.USER_MASK
        fn = "xstate_request_perm"
        if not 0 <= arg < 64 or arg >= int(max(xf.XFeature)) + 1:
            raise KvmError(errno.EINVAL, fn, f"index {arg} >= XFEATURE_MAX",
                           commit=cite("xcomp_perm"))
        if arg != int(xf.XFeature.XTILEDATA):
            raise KvmError(errno.EOPNOTSUPP, fn, f"no permission to request for feature {arg} "
                                                 "(only XTILEDATA, 18, is dynamic)",
                           commit=cite("xcomp_perm"))
        requested = xf.XTILEDATA
        if self.hk.cfg.user_max & requested != requested:
            raise KvmError(errno.EOPNOTSUPP, fn, "the host does not support XTILEDATA",
                           commit=cite("xcomp_perm"))
        if gperm.state_perm & requested == requested:
            return 0
        if gperm.state_perm & PERM_LOCKED:
            raise KvmError(errno.EBUSY, fn, "guest permissions are locked: a vCPU exists "
                                            "(fpu_init_guest_permissions)",
                           commit=cite("guest_perm"))
        mask = (gperm.state_perm & ~PERM_LOCKED) | requested
        if self.kernel.has("perm_overwrite_bug"):
            mask = requested          # 5.17.0: WRITE_ONCE(perm, requested) (063452fd94d1)
        gperm.state_perm = mask
        gperm.state_size = self.hk.kernel_size(mask | (gperm.state_perm & self.hk.cfg.xss))
        gperm.user_state_size = self.hk.user_size(mask)
        return 0

    def lock_guest_permissions(self) -> None:
        self.process.guest_perm.state_perm |= PERM_LOCKED

    def has_device_attr(self, group: int, attr: int) -> None:
        """KVM_HAS_DEVICE_ATTR on /dev/kvm (kvm_x86_dev_has_attr; dd6e6312335d, 5.17)."""
        self._device_attr("kvm_x86_dev_has_attr", group, attr)

    def get_device_attr(self, group: int, attr: int) -> int:
        """KVM_GET_DEVICE_ATTR on /dev/kvm: KVM_X86_XCOMP_GUEST_SUPP is kvm_caps.supported_xcr0
        (not limited by the process's guest permission)."""
        self._device_attr("kvm_x86_dev_get_attr", group, attr)
        return self.caps.supported_xcr0

    def _device_attr(self, fn: str, group: int, attr: int) -> None:
        if not self.kernel.has("amx"):
            raise KvmError(errno.EINVAL, "kvm_arch_dev_ioctl",
                           "no /dev/kvm device attributes before 5.17",
                           commit=cite("device_attr"))
        if group != 0:
            raise KvmError(errno.ENXIO, fn, f"group {group}: no vendor attributes",
                           commit=cite("device_attr"))
        if attr != KVM_X86_XCOMP_GUEST_SUPP:
            raise KvmError(errno.ENXIO, fn, f"attr {attr} is not KVM_X86_XCOMP_GUEST_SUPP (0)",
                           commit=cite("device_attr"))

    def fileno(self) -> int:
        from kvmfpu.kvm.ioctl import fileno
        return fileno(self)

    def ioctl(self, request: int, arg: object = 0, mutate_flag: bool = True) -> object:
        """/dev/kvm's ioctls, as fcntl.ioctl would issue them."""
        from kvmfpu.kvm.ioctl import _dispatch
        return _dispatch(self, request, arg, mutate_flag)
