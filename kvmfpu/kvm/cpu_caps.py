"""kvm_cpu_caps: the feature words KVM offers, from the host's CPUID, the kernel version and
the vendor module (kvm_set_cpu_caps, then vmx_set_cpu_caps / svm_set_cpu_caps / kvm_pvm).

The data is kvmfpu.kvm.cpuid_leaves (bits, kinds, the Switch that brought each); this module
applies it. The host kernel's own capabilities (boot_cpu_data) are taken as the raw CPUID
except for the synthetic bits in :func:`kernel_has`, which follow the kernel rules named
there. Module parameters are their defaults (nested=1, enable_pmu=1, kvm_intel sgx and
pt_mode off: SGX and Intel PT are not modelled and stay clear, UNVERIFIED for hosts that run
SGX guests).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Final

from kvmfpu.arch import xfeatures as xf
from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm import cpuid_leaves as cl
from kvmfpu.kvm.caps import PVM_FILTER, PVM_FILTER_HOST, KvmCaps
from kvmfpu.kvm.flavors import SVM, VMX
from kvmfpu.kvm.profiles import KernelProfile

CapWords = Mapping[cl.Word, int]

AMD_VENDORS: Final = ("AuthenticAMD", "HygonGenuine")


def _raw(host: HostModel, name: str) -> bool:
    c = cl.BY_NAME[name]
    leaf, sub, reg = c.word
    return bool(host.cpuid(leaf, sub)[reg] >> c.bit & 1)


def tdp_enabled(caps: KvmCaps) -> bool:
    """EPT/NPT: on for vmx and svm (module defaults on hardware that has them); kvm_pvm
    runs guests on shadow page tables (0x8000_0008 on the 6.18 machine: GuestPhysBits 0)."""
    return caps.ops.tdp


def kernel_has(host: HostModel, name: str) -> bool:
    """boot_cpu_has(X86_FEATURE_<name>) for the synthetic features kvm_set_cpu_caps reads.
    Rules (arch/x86/kernel/cpu/{amd,intel,common,bugs}.c as read in 6.12.117):
    - IBPB/IBRS/STIBP/SPEC_CTRL_SSBD: Intel's leaf-7 bit or AMD's 0x8000_0008 bit
      (init_speculation_control).
    - LFENCE_RDTSC: set with SSE2 on AMD and Intel (init_amd / early_init_intel).
    - NO_NULL_SEG_BUG: check_null_seg_clears_base only runs for AMD/Hygon: the CPUID bit, or
      family 0x17/0x18 on bare metal (the write-and-read test passes); a guest without the
      bit has the bug.
    - TSA_SQ_NO/TSA_L1_NO: tsa_init forces them on bare-metal AMD other than family 0x19
      (Zen 3/4); a guest keeps the raw bits (UNVERIFIED: read from memory of the 2025 TSA
      patches, not in a file read here).
    - NO_SSB_BUG: the raw AMD_SSB_NO bit (Intel's ARCH_CAPABILITIES SSB_NO MSR is not in a
      CPUID dump: Intel hosts are taken to have the bug).
    - LS_CFG_SSBD: AMD family 0x15-0x17 / Hygon 0x18 without AMD_SSBD or VIRT_SSBD
      (bsp_init_amd).
    - VIRT_SSBD: the raw bit unless AMD_SSBD is there (init_speculation_control clears it,
      common.c as in v6.11.5 and the older trees read); kvm_cpu_cap_init's F(VIRT_SSBD)
      then drops it and only svm_set_cpu_caps sets it back (kvm_amd; not kvm_pvm).
    Anything else: the raw bit."""
    amd = host.vendor in AMD_VENDORS
    family = host.signature[0]
    bare = not _raw(host, "HYPERVISOR")
    if name == "IBPB":
        return _raw(host, "SPEC_CTRL") or _raw(host, "AMD_IBPB")
    if name == "IBRS":
        return _raw(host, "SPEC_CTRL") or _raw(host, "AMD_IBRS")
    if name == "STIBP":
        return _raw(host, "INTEL_STIBP") or _raw(host, "AMD_STIBP")
    if name == "SSBD":
        return _raw(host, "SPEC_CTRL_SSBD") or _raw(host, "AMD_SSBD")
    if name == "LFENCE_RDTSC":
        return _raw(host, "XMM2")
    if name == "NO_NULL_SEG_BUG":
        if not amd:
            return True
        return _raw(host, "NULL_SEL_CLR_BASE") or (bare and family in (0x17, 0x18))
    if name in ("TSA_SQ_NO", "TSA_L1_NO"):
        return _raw(host, name) or (amd and bare and family != 0x19)
    if name == "NO_SSB_BUG":
        return _raw(host, "AMD_SSB_NO")
    if name == "LS_CFG_SSBD":
        return (amd and family in (0x15, 0x16, 0x17, 0x18) and not _raw(host, "AMD_SSBD")
                and not _raw(host, "VIRT_SSBD"))
    if name == "VIRT_SSBD":
        return _raw(host, "VIRT_SSBD") and not _raw(host, "AMD_SSBD")
    return _raw(host, name)


def _known(kernel: KernelProfile, c: cl.Cap) -> bool:
    return c.switch is None or kernel.has(c.switch)


def _common(host: HostModel, kernel: KernelProfile, caps: KvmCaps) -> dict[cl.Word, int]:
    """kvm_set_cpu_caps: per word, (F & kernel | PASS) & (raw | SYNTH) | EMUL (kvm_cpu_caps
    starts as boot_cpu_data's words, so an F bit needs the kernel's own bit too)."""
    words = dict.fromkeys(cl.ALL_WORDS, 0)
    for c in cl.CAPS:
        if not _known(kernel, c) or c.kind == "VENDOR":
            continue
        if c.kind == "EMUL":
            on = True
        elif c.kind == "PASS":
            on = _raw(host, c.name)
        else:  # F and SYNTH: the kernel's bit (kernel_has: the raw one unless a rule says)
            on = kernel_has(host, c.name)
        if on:
            words[c.word] |= 1 << c.bit

    def setf(name: str, on: bool = True) -> None:
        c = cl.BY_NAME[name]
        if on and _known(kernel, c):
            words[c.word] |= 1 << c.bit
        elif not on:
            words[c.word] &= ~(1 << c.bit)

    tdp = tdp_enabled(caps)
    # xstate-related bits: decided once in kvmfpu.kvm.caps (MPX, PKU, CET, AMX, 0xD.1).
    setf("MPX", caps.mpx)  # vmx_set_cpu_caps: kvm_mpx_supported()
    setf("PKU", caps.pku and tdp)
    setf("SHSTK", caps.shstk and tdp)
    setf("IBT", caps.ibt)
    amx = kernel.has("amx") and bool(caps.supported_xcr0 & xf.XTILE)
    for name in ("AMX_TILE", "AMX_INT8", "AMX_BF16"):
        setf(name, amx and _raw(host, name))
    words[cl.W_D_1_EAX] = caps.d1_eax
    # Leaf 7 EDX speculation bits: kvm_cpu_cap_set from the kernel's synthetic features.
    if kernel.has("cpuid_amd_ibpb_ret"):
        spec = _raw(host, "AMD_IBPB_RET") and _raw(host, "AMD_IBPB") and _raw(host, "AMD_IBRS")
    else:
        spec = kernel_has(host, "IBPB") and kernel_has(host, "IBRS")
    if spec:
        setf("SPEC_CTRL")
    if kernel_has(host, "STIBP"):
        setf("INTEL_STIBP")
    if _raw(host, "AMD_SSBD"):
        setf("SPEC_CTRL_SSBD")
    if not tdp:
        setf("GBPAGES")
    # 0x8000_0008 EBX: "AMD has separate bits for each SPEC_CTRL bit".
    if kernel_has(host, "IBPB"):
        setf("AMD_IBPB")
    if kernel_has(host, "IBRS"):
        setf("AMD_IBRS")
    if kernel_has(host, "STIBP"):
        setf("AMD_STIBP")
    if kernel_has(host, "SSBD"):
        setf("AMD_SSBD")
    if kernel_has(host, "NO_SSB_BUG"):
        setf("AMD_SSB_NO")
    if kernel_has(host, "LS_CFG_SSBD") and not _raw(host, "AMD_SSBD"):
        setf("VIRT_SSBD")
    # 0x8000_0021 EAX: kvm_cpu_cap_set after the mask (LFENCE_RDTSC, NULL_SEL_CLR_BASE).
    if kernel_has(host, "LFENCE_RDTSC"):
        setf("LFENCE_RDTSC")
    if kernel_has(host, "NO_NULL_SEG_BUG"):
        setf("NULL_SEL_CLR_BASE")
    return words


def sgx_enabled(host: HostModel, caps: KvmCaps) -> bool:
    """kvm_intel's enable_sgx (default 1) survives hardware_setup when the CPU has ENCLS
    exiting (taken as: every SGX host with VMX) and the host kernel kept SGX (the dump has
    the SGX bit and SGX1 in leaf 0x12)."""
    return caps.ops.sgx and _raw(host, "SGX") and bool(host.cpuid(0x12, 0)[0] & 1)


#: x86_pmu.pebs_ept: intel_pmu_init sets it for Ice Lake-X/D, Sapphire Rapids, Emerald
#: Rapids, Granite Rapids-X/D (arch/x86/events/intel/core.c, 6.12.117); intel_ds_init also
#: for PEBS format 5/6 (IA32_PERF_CAPABILITIES[11:8], not in a CPUID dump), taken as true for
#: Sierra Forest (0xAF: libvirt's Xeon-6731E host expansion offers DS and DTES64; UNVERIFIED).
PEBS_EPT_MODELS: Final = frozenset({0x6A, 0x6C, 0x8F, 0xCF, 0xAD, 0xAE, 0xAF})


def _vmx_pebs(host: HostModel) -> bool:
    """vmx_pebs_supported: X86_FEATURE_PEBS (taken as: the DS bit) and kvm_pmu_cap.pebs_ept
    (with enable_pmu: an architectural PMU)."""
    family, model, _ = host.signature
    return _raw(host, "DS") and family == 6 and model in PEBS_EPT_MODELS and bool(host.cpuid(0xA)[0] & 0xFF)


def _vmx(host: HostModel, kernel: KernelProfile, caps: KvmCaps, words: dict[cl.Word, int]) -> None:
    """vmx_set_cpu_caps: VMX with nested=1; UMIP (emulated via descriptor-table exiting,
    which every VMX host with XSAVE has); WAITPKG when the host has it; MPX per KvmCaps; SGX,
    SGX_LC and the leaf-0x12 word cleared without enable_sgx; DS/DTES64 with PEBS
    virtualisation; INTEL_PT left clear (pt_mode=0, the default)."""
    words[cl.W_1_ECX] |= 1 << cl.BY_NAME["VMX"].bit
    if _vmx_pebs(host):
        words[cl.W_1_EDX] |= 1 << cl.BY_NAME["DS"].bit
        if _raw(host, "DTES64"):
            words[cl.W_1_ECX] |= 1 << cl.BY_NAME["DTES64"].bit
    if not sgx_enabled(host, caps):
        words[cl.W_7_0_EBX] &= ~(1 << cl.BY_NAME["SGX"].bit)
        words[cl.W_7_0_ECX] &= ~(1 << cl.BY_NAME["SGX_LC"].bit)
        words[cl.W_12_EAX] = 0
    words[cl.W_7_0_ECX] |= 1 << cl.BY_NAME["UMIP"].bit
    if _raw(host, "WAITPKG"):
        words[cl.W_7_0_ECX] |= 1 << cl.BY_NAME["WAITPKG"].bit


def _svm(host: HostModel, kernel: KernelProfile, words: dict[cl.Word, int]) -> None:
    """svm_set_cpu_caps: SVM and the nested 0x8000_000A EDX bits (nested=1), VIRT_SSBD with
    LS_CFG_SSBD or AMD_SSBD, PERFCTR_CORE / PERFMON_V2 (enable_pmu=1) when the host has
    them, BUS_LOCK_DETECT cleared; SEV not modelled (sev_enabled needs firmware state)."""
    words[cl.W_E1_ECX] |= 1 << cl.BY_NAME["SVM"].bit
    host_a = host.cpuid(0x8000_000A)[3]
    for _name, bit, rule in cl.SVM_NESTED_EDX:
        if rule == "always" or host_a >> bit & 1:
            words[cl.W_EA_EDX] |= 1 << bit
    if kernel_has(host, "LS_CFG_SSBD") or _raw(host, "AMD_SSBD"):
        words[cl.W_E8_EBX] |= 1 << cl.BY_NAME["VIRT_SSBD"].bit
    if _raw(host, "PERFCTR_CORE"):
        words[cl.W_E1_ECX] |= 1 << cl.BY_NAME["PERFCTR_CORE"].bit
        if kernel.has("cpuid_leaf_80000022") and host.cpuid(0x8000_0022)[0] & 1:
            words[cl.W_E22_EAX] |= 1
    words[cl.W_7_0_ECX] &= ~(1 << cl.BY_NAME["BUS_LOCK_DETECT"].bit)


def _pvm(words: dict[cl.Word, int]) -> None:
    """kvm_pvm, as measured on the 6.18 machines (kvmfpu.kvm.caps.PVM_FILTER): a bit the
    measurement decided (the measuring host had it, or KVM reported it) is kept where the
    measurement kept it (and this host's mainline word has it), dropped where it was
    dropped, forced where it was forced. A bit the measuring host lacked and KVM did not
    report was never tested: it follows mainline kvm_set_cpu_caps. The Zen 3 machine (AMD
    EPYC, family 19h model 01h, 6.18.44 kvm_pvm) confirms that: its raw 7.0 EDX has
    INTEL_STIBP and SPEC_CTRL_SSBD (bits 27, 31; the Zen 5 host had neither), and real
    KVM_GET_SUPPORTED_CPUID keeps both while dropping FSRM (bit 4) as on Zen 5."""
    for w, measured in PVM_FILTER.items():
        if w == cl.W_D_1_EAX:
            continue  # already in KvmCaps.d1_eax
        host_val = PVM_FILTER_HOST[w]
        untested = ~(host_val | measured)
        mainline = words.get(w, 0)
        words[w] = (mainline & (measured | untested)) | (measured & ~host_val)


@lru_cache(maxsize=512)
def kvm_cpu_caps(host: HostModel, kernel: KernelProfile, caps: KvmCaps) -> CapWords:
    """The feature words of KVM_GET_SUPPORTED_CPUID (cached: hosts, profiles and caps are
    immutable and shared)."""
    words = _common(host, kernel, caps)
    # The vendor module's set_cpu_caps (vmx_set_cpu_caps, svm_set_cpu_caps; kvm_pvm's
    # measured filter).
    if caps.ops is VMX:
        _vmx(host, kernel, caps, words)
    elif caps.ops is SVM:
        _svm(host, kernel, words)
    else:
        _pvm(words)
    return MappingProxyType(words)  # shared through the cache: read-only
