"""``Kvm``: /dev/kvm for one host CPU model, kernel version and vendor flavour."""

from __future__ import annotations

import errno
import os
import threading
from functools import cached_property, lru_cache
from typing import Final

from kvmfpu import cpus
from kvmfpu import uapi as caps_ids
from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import msrs as msr
from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm import ioctl as _ioctl
from kvmfpu.kvm.caps import KvmCaps, kvm_caps
from kvmfpu.kvm.cpu_caps import kvm_cpu_caps
from kvmfpu.kvm.cpuid import CpuidEntry, permitted_xcr0, supported_cpuid, xstate_required_size
from kvmfpu.kvm.errors import KvmError, closed_fd
from kvmfpu.kvm.flavors import Flavor, default_flavor
from kvmfpu.kvm.flavors import flavor as flavor_ops
from kvmfpu.kvm.origins import cite
from kvmfpu.kvm.profiles import NEWEST, KernelProfile, profile
from kvmfpu.kvm.vcpu_xsave import XsavePath
from kvmfpu.kvm.vm import DEFAULT_MEMORY, Vm
from kvmfpu.linux.arena import Arena
from kvmfpu.linux.fpstate import PERM_LOCKED
from kvmfpu.linux.kernel import HostKernel

# arch/x86/include/uapi/asm/prctl.h (the VMM process's, not KVM's, uapi).
ARCH_GET_XCOMP_GUEST_PERM: Final = 0x1024
ARCH_REQ_XCOMP_GUEST_PERM: Final = 0x1025
#: Kept importable from here (kvmfpu.qemu, kvmfpu.testing, the tests use these names).
KVM_API_VERSION: Final = caps_ids.KVM_API_VERSION
KVM_X86_XCOMP_GUEST_SUPP: Final = caps_ids.KVM_X86_XCOMP_GUEST_SUPP
KVM_SUPPORTED_CPUID_MAX: Final = caps_ids.KVM_MAX_CPUID_ENTRIES


# -- KVM_GET_MSR_INDEX_LIST / KVM_GET_MSR_FEATURE_INDEX_LIST ---------------------------------
# kvm_init_msr_lists (arch/x86/kvm/x86.c, read in Debian 6.1.192 and 6.12.117): msrs_to_save
# (each kept when the host can read it and kvm_probe_msr_to_save's check passes), then the
# emulated MSRs the vendor module's has_emulated_msr accepts. (name, condition); the
# conditions are decided in _msr_condition.
_L = msr.LISTED
_SAVE_BASE: Final = (
    ("IA32_SYSENTER_CS", "always"), ("IA32_SYSENTER_ESP", "always"),
    ("IA32_SYSENTER_EIP", "always"), ("STAR", "always"), ("CSTAR", "always"),
    ("KERNEL_GS_BASE", "always"), ("SYSCALL_MASK", "always"), ("LSTAR", "always"),
    ("IA32_TSC", "always"), ("IA32_CR_PAT", "always"), ("VM_HSAVE_PA", "amd"),
    ("IA32_FEAT_CTL", "intel"), ("IA32_BNDCFGS", "mpx"), ("TSC_AUX", "tsc_aux"),
    ("IA32_SPEC_CTRL", "spec_ctrl"), ("IA32_TSX_CTRL", "tsx_ctrl"),
    ("IA32_UMWAIT_CONTROL", "waitpkg"),
)
_SAVE_XSTATE_AND_LBR: Final = (
    ("IA32_XFD", "xfd"), ("IA32_XFD_ERR", "xfd"),
    ("IA32_DEBUGCTLMSR", "lbr_list"), ("IA32_LASTBRANCHFROMIP", "lbr_list"),
    ("IA32_LASTBRANCHTOIP", "lbr_list"), ("IA32_LASTINTFROMIP", "lbr_list"),
    ("IA32_LASTINTTOIP", "lbr_list"),
)
_HYPERV: Final = (
    "HV_GUEST_OS_ID", "HV_HYPERCALL", "HV_TIME_REF_COUNT", "HV_REFERENCE_TSC", "HV_TSC_FREQUENCY",
    "HV_APIC_FREQUENCY", "HV_CRASH_P0", "HV_CRASH_P1", "HV_CRASH_P2", "HV_CRASH_P3",
    "HV_CRASH_P4", "HV_CRASH_CTL", "HV_RESET", "HV_VP_INDEX", "HV_VP_RUNTIME", "HV_SCONTROL",
    "HV_STIMER0_CONFIG", "HV_VP_ASSIST_PAGE", "HV_REENLIGHTENMENT_CONTROL",
    "HV_TSC_EMULATION_CONTROL", "HV_TSC_EMULATION_STATUS", "HV_TSC_INVARIANT_CONTROL",
    "HV_SYNDBG_OPTIONS", "HV_SYNDBG_CONTROL", "HV_SYNDBG_STATUS", "HV_SYNDBG_SEND_BUFFER",
    "HV_SYNDBG_RECV_BUFFER", "HV_SYNDBG_PENDING_BUFFER",
)
_EMULATED: Final = (
    ("KVM_SYSTEM_TIME", "always"), ("KVM_WALL_CLOCK", "always"),
    ("KVM_SYSTEM_TIME_NEW", "always"), ("KVM_WALL_CLOCK_NEW", "always"),
    *((name, "hyperv") for name in _HYPERV),
    ("KVM_ASYNC_PF_EN", "always"), ("KVM_STEAL_TIME", "always"), ("KVM_PV_EOI_EN", "always"),
    ("KVM_ASYNC_PF_INT", "always"), ("KVM_ASYNC_PF_ACK", "always"),
    ("IA32_TSC_ADJUST", "always"), ("IA32_TSC_DEADLINE", "always"),
    ("IA32_ARCH_CAPABILITIES", "always"), ("IA32_PERF_CAPABILITIES", "always"),
    ("IA32_MISC_ENABLE", "always"), ("IA32_MCG_STATUS", "always"), ("IA32_MCG_CTL", "always"),
    ("IA32_MCG_EXT_CTL", "vmx"), ("IA32_SMBASE", "smm"), ("SMI_COUNT", "always"),
    ("PLATFORM_INFO", "always"), ("MISC_FEATURES_ENABLES", "always"),
    ("AMD64_VIRT_SPEC_CTRL", "not_vmx"), ("AMD64_TSC_RATIO", "svm"), ("IA32_POWER_CTL", "always"),
    ("IA32_UCODE_REV", "always"),
)
#: The VMX MSRs in emulated_msrs_all (vmx with nested=1): BASIC, TRUE_PINBASED/PROCBASED/
#: EXIT/ENTRY_CTLS, MISC, CR0_FIXED0, CR4_FIXED0, VMCS_ENUM, PROCBASED_CTLS2, EPT_VPID_CAP,
#: VMFUNC.
_EMULATED_VMX: Final = (0x480, 0x48D, 0x48E, 0x48F, 0x490, 0x485, 0x486, 0x488, 0x48A, 0x48B,
                        0x48C, 0x491)
_EMULATED_TAIL: Final = (("K7_HWCR", "always"), ("KVM_POLL_CONTROL", "always"))
#: kvm_pvm on the 6.18 machine: KVM_GET_MSR_FEATURE_INDEX_LIST (measured).
_PVM_FEATURE_MSRS: Final = ("IA32_UCODE_REV", "IA32_ARCH_CAPABILITIES", "IA32_PERF_CAPABILITIES",
                            "PLATFORM_INFO")
#: msrs_to_save_base gained the DEBUGCTL/LBR MSRs between 6.1.192 and 6.12.117 (UNVERIFIED:
#: first release not confirmed); the PMU MSRs moved to their own list after the base one
#: (msrs_to_save_pmu) in the same window (UNVERIFIED: taken as 6.4).
_LBR_LIST_SINCE: Final = (6, 11)
_PMU_SPLIT_SINCE: Final = (6, 4)


class Kvm:
    """/dev/kvm on ``host`` (a model name, dump file or HostModel) with ``kernel``
    (e.g. "6.6", "6.1.60", "6.1.y") and ``flavor`` ("vmx", "svm" or "pvm"; default by
    vendor). It also stands for the VMM process (arch_prctl guest permissions)."""

    def __init__(self, host: HostModel | str | os.PathLike[str] = "skylake-sp",
                 kernel: str | KernelProfile = NEWEST, flavor: str | None = None,
                 *, arena: Arena | None = None):
        self.host = cpus.load(host)
        self.kernel = kernel if isinstance(kernel, KernelProfile) else profile(kernel)
        #: The vendor module's choices (kvm_x86_ops as data); ``flavor`` is its name.
        self.ops: Flavor = flavor_ops(flavor or default_flavor(self.host))
        self.flavor = self.ops.name
        if not self.ops.runs_on(self.host):
            raise ValueError(f"flavour {self.flavor} does not run on a {self.host.vendor} host")
        self.hk = HostKernel(self.host, self.kernel, arena)
        self.hk.arena.on_move(self._rebind_memory)
        #: The emulated core's lock. The model runs every vCPU on one emulated CPU, so an
        #: ioctl holds it from start to end (and KVM_RUN, the whole guest() block): it
        #: serialises each vCPU's ioctls as vcpu->mutex does (kvm_vcpu_ioctl), and vCPUs
        #: on other threads wait their turn instead of sharing the core mid-ioctl; VM and
        #: system ioctls that change shared state take it as kvm->lock does.
        self.lock = threading.RLock()
        self.caps: KvmCaps = kvm_caps(self.host, self.kernel, self.hk.cfg, self.flavor)
        #: The KVM_GET/SET_XSAVE path this kernel takes, decided once for its vCPUs.
        self.xsave_path = XsavePath.of(self.kernel, self.caps)
        self.process = self.hk.new_process()
        self.vms: list[Vm] = []
        self.closed = False

    def _rebind_memory(self, view: memoryview) -> None:
        """The arena moved to a larger mapping (same offsets): the kernel and the emulated
        core address the new one."""
        hk = self.hk
        hk.mem = view
        cpu = hk.cpu
        # Cpu.memory is Final for its users; the arena's move is the one rebinding.
        object.__setattr__(cpu, "memory", view)
        cpu._mem = view
        cpu._memsize = len(view)

    def __repr__(self) -> str:
        return f"Kvm(host={self.host.name!r}, kernel={self.kernel.name!r}, flavor={self.flavor!r})"

    # Parity with the real backend's file descriptors (kvmfpu.open_kvm).
    def close(self) -> None:
        """Close the /dev/kvm fd: raw ioctls on it (``ioctl(fd)``, ``kvm.ioctl``) give EBADF;
        its VMs and vCPUs keep working, as on the real device (measured here). The methods
        stay usable: the object also stands for the host and the VMM process."""
        self.closed = True
        _ioctl.forget(self)

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- system ioctls -------------------------------------------------------------------------
    def get_api_version(self) -> int:
        return KVM_API_VERSION

    def create_vm(self, vm_type: int = 0, *, memory_size: int = DEFAULT_MEMORY) -> Vm:
        """KVM_CREATE_VM, with ``memory_size`` bytes of guest memory at guest physical
        address 0 (one memslot, checked as KVM_SET_USER_MEMORY_REGION checks it)."""
        with self.lock:
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

    @cached_property
    def _msr_lists(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return _kvm_msr_lists(self.host, self.kernel, self.caps, self._msr_list)

    def msr_index_list_all(self) -> tuple[int, ...]:
        """All of KVM_GET_MSR_INDEX_LIST: msrs_to_save then emulated_msrs
        (kvm_init_msr_lists). UNVERIFIED beyond this machine: which MSRs a host can read
        (rdmsr_safe) is taken from its CPUID and vendor."""
        return self._msr_lists[0]

    def msr_feature_index_list(self) -> tuple[int, ...]:
        """KVM_GET_MSR_FEATURE_INDEX_LIST (msr_based_features)."""
        return self._msr_lists[1]

    def get_msr_index_list(self) -> list[int]:
        return list(self._msr_list)

    # -- process-level: arch_prctl and device attributes ----------------------------------------
    def arch_prctl(self, option: int, arg: int = 0) -> int:
        """arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, idx) / (ARCH_GET_XCOMP_GUEST_PERM) for the
        VMM process (fpu_xstate_prctl, xstate_request_perm; 980fe2fddcff, 5.17)."""
        with self.lock:          # xstate_request_perm runs under the sighand lock
            return self._arch_prctl(option, arg)

    def _arch_prctl(self, option: int, arg: int) -> int:
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
        if self.closed:
            raise closed_fd("/dev/kvm")
        return _ioctl.fileno(self)

    def ioctl(self, request: int, arg: object = 0, mutate_flag: bool = True) -> object:
        """/dev/kvm's ioctls, as fcntl.ioctl would issue them."""
        return _ioctl.dispatch(_ioctl.system_ioctl, self, request, arg, mutate_flag)

    def _serve(self, request: int, arg: object) -> int:
        """The /dev/kvm fd's handler (kvm_dev_ioctl)."""
        return _ioctl.system_ioctl(self, request, arg)


def _pmu_present(host: HostModel) -> bool:
    """enable_pmu stays on when perf has a PMU: Intel's architectural PMU (leaf 0xA version,
    not a hybrid part: kvm_init_pmu_capability); AMD's on bare metal or when a hypervisor
    offers PERFCTR_CORE (the 6.18 machine, a guest without it, lists no PMU MSR)."""
    if host.vendor in ("AuthenticAMD", "HygonGenuine"):
        return not host.has("hypervisor") or bool(host.cpuid(0x8000_0001)[2] >> 23 & 1)
    return bool(host.cpuid(0xA)[0] & 0xFF) and not host.cpuid(7)[3] >> 15 & 1


def _pmu_msrs(host: HostModel, kernel: KernelProfile, caps: KvmCaps) -> list[int]:
    """msrs_to_save_pmu as kvm_probe_msr_to_save keeps it: Intel fixed and general counters
    up to kvm_pmu_cap's counts (3 fixed, 8 general), the global controls, PEBS_ENABLE and
    DS_AREA with DS; AMD's four legacy and six core counters and PerfMonV2's globals.
    UNVERIFIED: PEBS_DATA_CFG (needs the PEBS baseline in PERF_CAPABILITIES) is left out."""
    if not _pmu_present(host):
        return []
    if host.vendor in ("AuthenticAMD", "HygonGenuine"):
        out = [_L["K7_EVNTSEL0"] + i for i in range(4)] + [_L["K7_PERFCTR0"] + i for i in range(4)]
        if host.cpuid(0x8000_0001)[2] >> 23 & 1:
            out += [_L["F15H_PERF_CTL0"] + 2 * i for i in range(6)]
            out += [_L["F15H_PERF_CTL0"] + 2 * i + 1 for i in range(6)]
        if kernel.has("cpuid_leaf_80000022") and host.cpuid(0x8000_0022)[0] & 1:
            out += [_L["AMD64_PERF_CNTR_GLOBAL_CTL"], _L["AMD64_PERF_CNTR_GLOBAL_STATUS"],
                    _L["AMD64_PERF_CNTR_GLOBAL_STATUS_CLR"], _L["AMD64_PERF_CNTR_GLOBAL_STATUS_SET"]]
        return out
    a, _, _, d = host.cpuid(0xA)
    gp, fixed = min(a >> 8 & 0xFF, 8), min(d & 0x1F, 3)
    out = [_L["CORE_PERF_FIXED_CTR0"] + i for i in range(fixed)]
    out += [_L["CORE_PERF_FIXED_CTR_CTRL"], _L["CORE_PERF_GLOBAL_STATUS"], _L["CORE_PERF_GLOBAL_CTRL"]]
    if not kernel.at_least(*_PMU_SPLIT_SINCE):
        out.append(_L["CORE_PERF_GLOBAL_OVF_CTRL"])
    if host.cpuid(1)[3] >> 21 & 1:
        out += [_L["IA32_PEBS_ENABLE"], _L["IA32_DS_AREA"]]
    out += [_L["ARCH_PERFMON_PERFCTR0"] + i for i in range(gp)]
    out += [_L["ARCH_PERFMON_EVENTSEL0"] + i for i in range(gp)]
    return out


def _msr_condition(cond: str, host: HostModel, kernel: KernelProfile, caps: KvmCaps) -> bool:
    words = kvm_cpu_caps(host, kernel, caps)
    amd = host.vendor in ("AuthenticAMD", "HygonGenuine")
    if cond == "always":
        return True
    if cond == "amd":                    # VM_HSAVE_PA: an AMD MSR (#GP on Intel)
        return amd
    if cond == "intel":                  # IA32_FEAT_CTL: #GP on AMD
        return not amd
    if cond == "mpx":
        return caps.mpx
    if cond == "tsc_aux":                # kvm_cpu_cap_has(RDTSCP) || (RDPID)
        return bool(words[(0x8000_0001, 0, 3)] >> 27 & 1 or words[(7, 0, 2)] >> 22 & 1)
    if cond == "spec_ctrl":              # readable with Intel's SPEC_CTRL or AMD's IBRS/SSBD/STIBP
        e8 = host.cpuid(0x8000_0008)[1]
        return bool(host.cpuid(7)[3] >> 26 & 1 or e8 & (1 << 14 | 1 << 15 | 1 << 24))
    if cond == "tsx_ctrl":               # needs ARCH_CAPABILITIES.TSX_CTRL_MSR: not in a dump
        return False
    if cond == "waitpkg":
        return bool(words[(7, 0, 2)] >> 5 & 1)
    if cond == "xfd":
        return caps.xfd
    if cond == "lbr_list":
        return kernel.at_least(*_LBR_LIST_SINCE)
    # The vendor module's has_emulated_msr: "hyperv" (CONFIG_KVM_HYPERV=y in distribution
    # kernels), "smm" (CONFIG_KVM_SMM=y), "vmx" (MCG_EXT_CTL: svm_has_emulated_msr refuses
    # it), "not_vmx" (AMD64_VIRT_SPEC_CTRL: "This is AMD only"), "svm" (TSC_RATIO).
    if cond in ("hyperv", "smm", "vmx", "not_vmx", "svm"):
        return cond in caps.ops.emulated_msrs
    raise ValueError(f"unknown MSR list condition {cond!r}")


@lru_cache(maxsize=256)
def _kvm_msr_lists(host: HostModel, kernel: KernelProfile, caps: KvmCaps,
                   xstate: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    def keep(entries: tuple[tuple[str, str], ...]) -> list[int]:
        return [_L[n] for n, c in entries if _msr_condition(c, host, kernel, caps)]

    pmu = _pmu_msrs(host, kernel, caps)
    save = keep(_SAVE_BASE)
    if not kernel.at_least(*_PMU_SPLIT_SINCE):
        save += pmu
    lbr = keep(_SAVE_XSTATE_AND_LBR)
    xfd = [m for m in lbr if m in (msr.IA32_XFD, msr.IA32_XFD_ERR)]
    # The 6.18 xstate MSRs (IA32_XSS, CET) after XFD: kvmfpu's _msr_list (order UNVERIFIED).
    save += xfd + [m for m in xstate if m not in xfd] + [m for m in lbr if m not in xfd]
    if kernel.at_least(*_PMU_SPLIT_SINCE):
        save += pmu
    emulated = keep(_EMULATED)
    if "vmx" in caps.ops.emulated_msrs:
        emulated += list(_EMULATED_VMX)
    emulated += keep(_EMULATED_TAIL)
    if caps.ops.feature_msrs == "pvm":
        features = [_L[n] for n in _PVM_FEATURE_MSRS]
    else:
        features = list(msr.VMX_MSRS) if caps.ops.feature_msrs == "vmx" else [_L["AMD64_DE_CFG"]]
        features += [_L["IA32_UCODE_REV"], _L["IA32_ARCH_CAPABILITIES"], _L["IA32_PERF_CAPABILITIES"]]
    return tuple(save + emulated), tuple(features)
