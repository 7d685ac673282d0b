"""KVM's CPUID feature words as data: which bits ``kvm_set_cpu_caps`` (arch/x86/kvm/cpuid.c)
lets through to KVM_GET_SUPPORTED_CPUID, how each one is decided, and from which kernel.

Sources, read for facts only:
- v6.1: Debian linux-source-6.1 6.1.192 (a stable tree: mitigation bits such as the TSA, SRSO
  and BHI ones are stable backports there, not v6.1 as released).
- v6.12: Debian linux-source-6.12 6.12.117.
- newest: the linux-next snapshot in ColinIanKing/linux-next at 1c60d04aac53 (newer than
  v6.18: the "kvm_cpu_cap_init(leaf, F(...), EMULATED_F(...), ...)" form of Sean
  Christopherson's CPUID overhaul series).
- the development machine's Linux 6.18.44 KVM_GET_SUPPORTED_CPUID (what it can show).
Bit positions: arch/x86/include/asm/cpufeatures.h and arch/x86/kvm/reverse_cpuid.h (6.12),
Intel SDM Vol. 2A CPUID and AMD APM Vol. 3 for the bits those files do not name.

Kinds (the macros of the newest kvm_set_cpu_caps; older kernels spell the same rules with
kvm_cpu_cap_mask/kvm_cpu_cap_set):
- ``F``: KVM offers the bit when the host kernel has it (boot_cpu_data) and raw CPUID has it.
- ``EMUL``: KVM offers it whatever the host (EMULATED_F / kvm_cpu_cap_set).
- ``SYNTH``: the kernel may synthesise it without raw CPUID (mitigation bits): the host's
  kernel capability decides (see cpu_caps.kernel_has).
- ``PASS``: raw CPUID alone decides (PASSTHROUGH_F: LA57).
- ``VENDOR``: only vmx_set_cpu_caps/svm_set_cpu_caps may set it (see cpu_caps).
A ``switch`` names the kernel-profile Switch (kvmfpu.kvm.profiles) from which KVM knows the
bit; without one the bit is known in every modelled kernel (5.15 on).
"""

from __future__ import annotations

from typing import Final, NamedTuple

EAX, EBX, ECX, EDX = 0, 1, 2, 3

Word = tuple[int, int, int]  # (leaf, subleaf, register)

W_1_ECX: Final[Word] = (1, 0, ECX)
W_1_EDX: Final[Word] = (1, 0, EDX)
W_7_0_EBX: Final[Word] = (7, 0, EBX)
W_7_0_ECX: Final[Word] = (7, 0, ECX)
W_7_0_EDX: Final[Word] = (7, 0, EDX)
W_7_1_EAX: Final[Word] = (7, 1, EAX)
W_7_1_ECX: Final[Word] = (7, 1, ECX)
W_7_1_EDX: Final[Word] = (7, 1, EDX)
W_7_2_EDX: Final[Word] = (7, 2, EDX)
W_D_1_EAX: Final[Word] = (0xD, 1, EAX)
W_12_EAX: Final[Word] = (0x12, 0, EAX)
W_24_EBX: Final[Word] = (0x24, 0, EBX)
W_E1_ECX: Final[Word] = (0x8000_0001, 0, ECX)
W_E1_EDX: Final[Word] = (0x8000_0001, 0, EDX)
W_E7_EDX: Final[Word] = (0x8000_0007, 0, EDX)
W_E8_EBX: Final[Word] = (0x8000_0008, 0, EBX)
W_EA_EDX: Final[Word] = (0x8000_000A, 0, EDX)
W_E1F_EAX: Final[Word] = (0x8000_001F, 0, EAX)
W_E21_EAX: Final[Word] = (0x8000_0021, 0, EAX)
W_E21_ECX: Final[Word] = (0x8000_0021, 0, ECX)
W_E22_EAX: Final[Word] = (0x8000_0022, 0, EAX)
W_C1_EDX: Final[Word] = (0xC000_0001, 0, EDX)


class Cap(NamedTuple):
    word: Word
    bit: int
    name: str
    kind: str = "F"
    switch: str | None = None


def _caps(word: Word, spec: str) -> tuple[Cap, ...]:
    """``"NAME:bit[:kind[:switch]] ..."`` -> Caps (a compact table per word)."""
    out = []
    for item in spec.split():
        name, bit, *rest = item.split(":")
        kind = rest[0] if rest and rest[0] else "F"
        out.append(Cap(word, int(bit), name, kind, rest[1] if len(rest) > 1 else None))
    return tuple(out)


CAPS: Final[tuple[Cap, ...]] = (
    *_caps(
        W_1_ECX,
        "XMM3:0 PCLMULQDQ:1 DTES64:2:VENDOR VMX:5:VENDOR SSSE3:9 FMA:12 CX16:13 "
        "PDCM:15 PCID:17 XMM4_1:19 XMM4_2:20 X2APIC:21:EMUL MOVBE:22 POPCNT:23 "
        "TSC_DEADLINE_TIMER:24:EMUL:cpuid_emul_tsc_deadline AES:25 XSAVE:26 AVX:28 "
        "F16C:29 RDRAND:30 HYPERVISOR:31:EMUL:cpuid_emul_hypervisor",
    ),
    *_caps(
        W_1_EDX,
        "FPU:0 VME:1 DE:2 PSE:3 TSC:4 MSR:5 PAE:6 MCE:7 CX8:8 APIC:9 SEP:11 MTRR:12 "
        "PGE:13 MCA:14 CMOV:15 PAT:16 PSE36:17 CLFLUSH:19 DS:21:VENDOR MMX:23 FXSR:24 "
        "XMM:25 XMM2:26 SELFSNOOP:27",
    ),
    *_caps(
        W_7_0_EBX,
        "FSGSBASE:0 TSC_ADJUST:1:EMUL SGX:2 BMI1:3 HLE:4 AVX2:5 FDP_EXCPTN_ONLY:6::cpuid_deprecated_x87 "
        "SMEP:7 BMI2:8 ERMS:9 INVPCID:10 RTM:11 ZERO_FCS_FDS:13::cpuid_deprecated_x87 MPX:14:VENDOR "
        "AVX512F:16 AVX512DQ:17 RDSEED:18 ADX:19 SMAP:20 AVX512IFMA:21 CLFLUSHOPT:23 "
        "CLWB:24 INTEL_PT:25:VENDOR AVX512PF:26 AVX512ER:27 AVX512CD:28 SHA_NI:29 "
        "AVX512BW:30 AVX512VL:31",
    ),
    *_caps(
        W_7_0_ECX,
        "AVX512VBMI:1 UMIP:2 PKU:3 WAITPKG:5:VENDOR AVX512_VBMI2:6 SHSTK:7::cet GFNI:8 "
        "VAES:9 VPCLMULQDQ:10 AVX512_VNNI:11 AVX512_BITALG:12 AVX512_VPOPCNTDQ:14 "
        "LA57:16:PASS RDPID:22 BUS_LOCK_DETECT:24 CLDEMOTE:25 MOVDIRI:27 MOVDIR64B:28 "
        "SGX_LC:30",
    ),
    *_caps(
        W_7_0_EDX,
        "AVX512_4VNNIW:2 AVX512_4FMAPS:3 FSRM:4 AVX512_VP2INTERSECT:8 MD_CLEAR:10 "
        "SERIALIZE:14 TSXLDTRK:16 IBT:20::cet AMX_BF16:22::amx AVX512_FP16:23 "
        "AMX_TILE:24::amx AMX_INT8:25::amx SPEC_CTRL:26 INTEL_STIBP:27 "
        "FLUSH_L1D:28::cpuid_flush_l1d ARCH_CAPABILITIES:29:EMUL SPEC_CTRL_SSBD:31",
    ),
    *_caps(
        W_7_1_EAX,
        "SHA512:0::cpuid_sha512_sm3_sm4 SM3:1::cpuid_sha512_sm3_sm4 "
        "SM4:2::cpuid_sha512_sm3_sm4 AVX_VNNI:4 AVX512_BF16:5 CMPCCXADD:7::cpuid_6_3_7_1 "
        "FZRM:10::cpuid_6_3_7_1 FSRS:11::cpuid_6_3_7_1 FSRC:12::cpuid_6_3_7_1 "
        "LKGS:18::cpuid_lkgs WRMSRNS:19::cpuid_wrmsrns AMX_FP16:21::cpuid_6_3_7_1 "
        "AVX_IFMA:23::cpuid_6_3_7_1 LAM:26::cpuid_lam",
    ),
    *_caps(W_7_1_ECX, "MSR_IMM:5::cpuid_msr_imm"),
    *_caps(
        W_7_1_EDX,
        "AVX_VNNI_INT8:4::cpuid_7_1_edx AVX_NE_CONVERT:5::cpuid_7_1_edx "
        "AMX_COMPLEX:8::cpuid_amx_complex AVX_VNNI_INT16:10::cpuid_avx_vnni_int16 "
        "PREFETCHITI:14::cpuid_7_1_edx AVX10:19::cpuid_avx10",
    ),
    *_caps(
        W_7_2_EDX,
        "INTEL_PSFD:0::cpuid_leaf7_subleaf2 IPRED_CTRL:1::cpuid_leaf7_subleaf2 "
        "RRSBA_CTRL:2::cpuid_leaf7_subleaf2 DDPD_U:3::cpuid_leaf7_subleaf2 "
        "BHI_CTRL:4::cpuid_leaf7_subleaf2 "
        "MCDT_NO:5::cpuid_leaf7_subleaf2",
    ),
    *_caps(W_D_1_EAX, "XSAVEOPT:0 XSAVEC:1 XGETBV1:2 XSAVES:3 XFD:4::amx"),
    *_caps(W_12_EAX, "SGX1:0 SGX2:1 SGX_EDECCSSA:11::cpuid_sgx_edeccssa"),
    *_caps(W_24_EBX, "AVX10_128:16::cpuid_avx10 AVX10_256:17::cpuid_avx10 AVX10_512:18::cpuid_avx10"),
    *_caps(
        W_E1_ECX,
        "LAHF_LM:0 CMP_LEGACY:1 SVM:2:VENDOR CR8_LEGACY:4 ABM:5 SSE4A:6 MISALIGNSSE:7 "
        "3DNOWPREFETCH:8 OSVW:9 XOP:11 FMA4:16 TBM:21 TOPOEXT:22 PERFCTR_CORE:23:VENDOR",
    ),
    *_caps(
        W_E1_EDX,
        "FPU:0 VME:1 DE:2 PSE:3 TSC:4 MSR:5 PAE:6 MCE:7 CX8:8 APIC:9 SYSCALL:11 "
        "MTRR:12 PGE:13 MCA:14 CMOV:15 PAT:16 PSE36:17 NX:20 MMXEXT:22 MMX:23 FXSR:24 "
        "FXSR_OPT:25 GBPAGES:26 RDTSCP:27 LM:29 3DNOWEXT:30 3DNOW:31",
    ),
    *_caps(W_E7_EDX, "CONSTANT_TSC:8"),
    *_caps(
        W_E8_EBX,
        "CLZERO:0 XSAVEERPTR:2 WBNOINVD:9 AMD_IBPB:12 AMD_IBRS:14 AMD_STIBP:15 "
        "AMD_STIBP_ALWAYS_ON:17 AMD_IBRS_SAME_MODE:19::cpuid_amd_ibrs_same_mode "
        "AMD_SSBD:24 VIRT_SSBD:25 AMD_SSB_NO:26 AMD_PSFD:28 "
        "AMD_IBPB_RET:30::cpuid_amd_ibpb_ret",
    ),
    *_caps(W_E1F_EAX, "SME:0:VENDOR SEV:1:VENDOR SEV_ES:3:VENDOR SME_COHERENT:10"),
    *_caps(
        W_E21_EAX,
        "NO_NESTED_DATA_BP:0 WRMSR_XX_BASE_NS:1::cpuid_wrmsr_xx_base_ns "
        "LFENCE_RDTSC:2:SYNTH VERW_CLEAR:5:SYNTH:cpuid_tsa NULL_SEL_CLR_BASE:6:SYNTH "
        "AUTOIBRS:8::cpuid_autoibrs NO_SMM_CTL_MSR:9:EMUL PREFETCHI:20::cpuid_prefetchi "
        "SBPB:27:SYNTH:cpuid_srso IBPB_BRTYPE:28:SYNTH:cpuid_srso "
        "SRSO_NO:29:SYNTH:cpuid_srso SRSO_USER_KERNEL_NO:30::cpuid_srso_user_kernel_no",
    ),
    *_caps(W_E21_ECX, "TSA_SQ_NO:1:SYNTH:cpuid_tsa TSA_L1_NO:2:SYNTH:cpuid_tsa"),
    *_caps(W_E22_EAX, "PERFMON_V2:0:VENDOR"),
    *_caps(
        W_C1_EDX,
        "XSTORE:2 XSTORE_EN:3 XCRYPT:6 XCRYPT_EN:7 ACE2:8 ACE2_EN:9 PHE:10 PHE_EN:11 PMM:12 PMM_EN:13",
    ),
)

#: Every word KVM computes (some have only vendor-set bits, e.g. 0x8000_000A EDX).
ALL_WORDS: Final[tuple[Word, ...]] = (
    W_1_ECX,
    W_1_EDX,
    W_7_0_EBX,
    W_7_0_ECX,
    W_7_0_EDX,
    W_7_1_EAX,
    W_7_1_ECX,
    W_7_1_EDX,
    W_7_2_EDX,
    W_D_1_EAX,
    W_12_EAX,
    W_24_EBX,
    W_E1_ECX,
    W_E1_EDX,
    W_E7_EDX,
    W_E8_EBX,
    W_EA_EDX,
    W_E1F_EAX,
    W_E21_EAX,
    W_E21_ECX,
    W_E22_EAX,
    W_C1_EDX,
)

#: Feature name -> its Cap. Names in both leaf 1 and 0x8000_0001 EDX map to leaf 1.
BY_NAME: Final[dict[str, Cap]] = {}
for _c in CAPS:
    BY_NAME.setdefault(_c.name, _c)

#: 0x8000_000A EDX bits svm_set_cpu_caps may set with nested=1 (the kvm_amd default), and
#: what each depends on: "host" (the host's own bit; module parameters default on when the
#: hardware has it) or "always".
SVM_NESTED_EDX: Final[tuple[tuple[str, int, str], ...]] = (
    ("NPT", 0, "host"),
    ("LBRV", 1, "host"),
    ("NRIPS", 3, "host"),
    ("TSCRATEMSR", 4, "host"),
    ("VMCBCLEAN", 5, "always"),
    ("FLUSHBYASID", 6, "always"),
    ("PAUSEFILTER", 10, "host"),
    ("PFTHRESHOLD", 12, "host"),
    ("V_VMSAVE_VMLOAD", 15, "host"),
    ("VGIF", 16, "host"),
    ("VNMI", 25, "host"),
    ("SVME_ADDR_CHK", 28, "always"),
)

#: cpuid_function_is_indexed (arch/x86/include/asm/cpuid.h, 6.12): the functions whose
#: entries carry KVM_CPUID_FLAG_SIGNIFCANT_INDEX.
INDEXED_FUNCTIONS: Final = frozenset(
    {4, 7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1D, 0x1E, 0x1F, 0x24, 0x8000_001D}
)

#: KVM_CPUID_SIGNATURE / KVM_CPUID_FEATURES (__do_cpuid_func): "KVMKVMKVM\\0\\0\\0" and the
#: PV features: CLOCKSOURCE, NOP_IO_DELAY, CLOCKSOURCE2, ASYNC_PF, STEAL_TIME (with
#: sched_info_on()), PV_EOI, PV_UNHALT, PV_TLB_FLUSH, ASYNC_PF_VMEXIT, PV_SEND_IPI,
#: POLL_CONTROL, PV_SCHED_YIELD, ASYNC_PF_INT and CLOCKSOURCE_STABLE_BIT (bit 24); the same
#: from 5.15 (ASYNC_PF_INT is 5.8) to the newest source, and what the 6.18 machine returns.
KVM_SIGNATURE: Final = (0x4B4D564B, 0x564B4D56, 0x0000004D)
KVM_PV_FEATURES: Final = 0x0100_7EFB

#: Registers (mask) of leaves KVM passes through unchanged apart from the named bits.
E6_EDX_RESERVED: Final = 0x3 << 16  # 0x8000_0006 EDX[17:16] dropped
E8_ECX_DROPPED: Final = 0xFFFF_0F00  # 0x8000_0008 ECX[31:16] and [11:8] dropped
E1_EBX_DROPPED: Final = 0x0FFF_0000  # 0x8000_0001 EBX[27:16] dropped
#: Leaf 0x12 (arch/x86/include/asm/sgx.h): MISCSELECT bits KVM passes (SGX_MISC_EXINFO) and
#: SECS.ATTRIBUTES: DEBUG, MODE64BIT, PROVISIONKEY, EINITTOKENKEY, KSS (6.1.192), plus
#: ASYNC_EXIT_NOTIFY (bit 10) with EDECCSSA (SGX_ATTR_PRIV_MASK | SGX_ATTR_UNPRIV_MASK, 6.12.117).
SGX_MISC_EXINFO: Final = 1
SGX_ATTRIBUTES: Final = 0x0000_00B6
SGX_ATTR_ASYNC_EXIT_NOTIFY: Final = 1 << 10
