"""KVM_GET_SUPPORTED_CPUID of the model: row for row against this machine's /dev/kvm, and
specific rows of the packaged hosts with the kernel source that decides each.

Kernel sources named below: arch/x86/kvm/cpuid.c __do_cpuid_func / kvm_set_cpu_caps as read
in Debian linux-source 6.1.192 and 6.12.117 and the linux-next snapshot 1c60d04aac53
(ColinIanKing/linux-next); the Switch names are kvmfpu.kvm.profiles entries.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from kvmfpu.cpus import load
from kvmfpu.cpus import names as host_names_fn
from kvmfpu.cpus.model import HostModel
from kvmfpu.kvm import cpuid_leaves as cl
from kvmfpu.kvm.cpuid import KVM_CPUID_FLAG_SIGNIFCANT_INDEX, CpuidEntry
from kvmfpu.kvm.profiles import BY_NAME, NAMED
from kvmfpu.kvm.system import Kvm
from kvmfpu.native.differential import supported_cpuid_differences

HOSTS = host_names_fn()


def rows(kvm: Kvm) -> dict[tuple[int, int], CpuidEntry]:
    return {(e.function, e.index): e for e in kvm.get_supported_cpuid()}


def bit(value: int, n: int) -> bool:
    return bool(value >> n & 1)


# -- this machine ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pinned_cpu() -> Iterator[int]:
    """Pin to one CPU: KVM reports the APIC IDs of the CPU it ran on (leaf 1 EBX[31:24],
    0xB.0 EDX), so the capture and the ioctl must run on the same one."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("no usable /dev/kvm")
    before = os.sched_getaffinity(0)
    cpu = min(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def test_model_of_this_host_equals_real_table(pinned_cpu: int) -> None:
    """Proof 1: every row (function, index, flags, EAX..EDX, in KVM's order) of the model of
    the running host equals the real KVM_GET_SUPPORTED_CPUID (source: the machine)."""
    from kvmfpu.cpus.model import HostModel
    from kvmfpu.native.hostcpuid import capture
    from kvmfpu.probe import ProbeUnavailable, fingerprint
    from kvmfpu.real import open_kvm

    try:
        fp = fingerprint()
    except ProbeUnavailable as exc:
        pytest.skip(str(exc))
    host = HostModel(capture(), name="this-host-pinned")
    model = Kvm(host, fp.best.kernel, fp.best.flavor)
    with open_kvm() as real:
        got = real.get_supported_cpuid()
    want = model.get_supported_cpuid()
    assert supported_cpuid_differences(got, want) == []
    assert [e.values() for e in got] == [e.values() for e in want]
    print(f"\nKVM_GET_SUPPORTED_CPUID: {len(got)} rows, all equal ({fp.best.kernel}, {fp.best.flavor})")


def test_differences_name_the_row() -> None:
    """The comparison reports a missing row and a differing register (so it can fail)."""
    a = [CpuidEntry(1, 0, 0, 1, 2, 3, 4), CpuidEntry(7, 0, 1, 0, 0, 0, 0)]
    b = [CpuidEntry(1, 0, 0, 1, 2, 3, 5)]
    diff = supported_cpuid_differences(a, b)
    assert any("0x1.0" in d and "edx" in d for d in diff)
    assert any("0x7.0" in d and "model lacks" in d for d in diff)


# -- data integrity ------------------------------------------------------------------------------
def test_every_cap_switch_is_a_profile_switch() -> None:
    assert {c.switch for c in cl.CAPS if c.switch} <= set(BY_NAME)


def test_bits_are_unique_per_word() -> None:
    seen: dict[tuple[cl.Word, int], str] = {}
    for c in cl.CAPS:
        assert seen.setdefault((c.word, c.bit), c.name) == c.name, c


# -- rows of the packaged hosts -----------------------------------------------------------------
@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("kernel", NAMED)
def test_table_shape(host: str, kernel: str) -> None:
    """kvm_dev_ioctl_get_cpuid: basic leaves 0..EAX of leaf 0, then the extended ones, then
    KVM's 0x4000_0000/1; flags per cpuid_function_is_indexed; the brand string leaves
    0x8000_0002-4 are all zero (__do_cpuid_func's default case)."""
    kvm = Kvm(host, kernel)
    table = kvm.get_supported_cpuid()
    fns = [e.function for e in table]
    basic = [f for f in fns if f < 0x4000_0000]
    assert basic == sorted(basic) and basic[0] == 0 and max(basic) == table[0].eax
    assert fns[-2:] == [0x4000_0000, 0x4000_0001]
    assert table[-2].values()[3:] == (0x4000_0001, 0x4B4D564B, 0x564B4D56, 0x4D)
    assert table[-1].eax == 0x0100_7EFB
    for e in table:
        indexed = bool(e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX)
        assert indexed == (e.function in cl.INDEXED_FUNCTIONS), e
        if e.function in (0x8000_0002, 0x8000_0003, 0x8000_0004, 0x8000_0020):
            assert e.values()[3:] == (0, 0, 0, 0)
    r = rows(kvm)
    assert not r[(1, 0)].ecx >> 27 & 1  # OSXSAVE is a runtime bit
    assert len(r) == len(table)


def test_skylake_sp_leaf7_avx512_and_mpx() -> None:
    """Leaf 7.0 EBX on skylake-sp under 6.6 (vmx) has AVX512F (F(AVX512F)); MPX only when
    kvm_mpx_supported (vmx_set_cpu_caps) — the model's KvmCaps.mpx; Zen never has MPX
    (svm: no VENDOR MPX)."""
    kvm = Kvm("skylake-sp", "6.6")
    ebx = rows(kvm)[(7, 0)].ebx
    assert bit(ebx, 16) and bit(ebx, 28)  # AVX512F, AVX512CD
    assert bit(ebx, 14) == kvm.caps.mpx
    for host in ("zen2", "zen4"):
        assert not bit(rows(Kvm(host, "6.6"))[(7, 0)].ebx, 14)


def test_guest_phys_bits() -> None:
    """0x8000_0008 EAX: from 6.10 (b628cb523c65) EAX[23:16] = PhysAddrSize capped at 48
    without 5-level TDP; before, EAX = PhysAddrSize | LinAddrSize << 8 only."""
    sky = Kvm("skylake-sp", "6.6")
    host_eax = sky.host.cpuid(0x8000_0008)[0]
    phys = host_eax & 0xFF
    assert rows(sky)[(0x8000_0008, 0)].eax == phys | max(host_eax >> 8 & 0xFF, 48) << 8
    new = rows(Kvm("skylake-sp", "6.12"))[(0x8000_0008, 0)].eax
    assert new >> 16 == min(phys, 48) and new & 0xFF == phys
    ice = Kvm("icelake-sp", "6.12")  # LA57: 5-level EPT
    assert ice.host.has("la57")
    assert rows(ice)[(0x8000_0008, 0)].eax >> 16 == ice.host.cpuid(0x8000_0008)[0] & 0xFF


def test_topology_leaves() -> None:
    """Leaf 0xB: 5.15 copies the host's subleaves until level type 0; from
    cpuid_no_host_topology (6.1) only subleaf 0 with EDX (the x2APIC ID) is left, and
    0x8000_001E is all zero."""
    old, new = rows(Kvm("zen2", "5.15")), rows(Kvm("zen2", "6.1"))
    assert (0xB, 1) in old and old[(0xB, 0)].ecx & 0xFF00
    assert (0xB, 1) not in new
    assert new[(0xB, 0)].values()[3:6] == (0, 0, 0)
    assert new[(0x8000_001E, 0)].values()[3:] == (0, 0, 0, 0)
    assert any(old[(0x8000_001E, 0)].values()[3:])


def test_leaf_80000021_synthesised() -> None:
    """5.15 caps 0x8000_0000.EAX at 0x8000_001F; 5.18 (f144c49e8c39) raises it to
    0x8000_0021 and fills LFENCE_RDTSC, NULL_SEL_CLR_BASE (Zen 2 bare metal passes the
    null-selector test) and NO_SMM_CTL_MSR (kvm_set_cpu_caps) even though Zen 2 has no such
    leaf."""
    assert Kvm("zen2", "5.15").host.cpuid(0x8000_0000)[0] < 0x8000_0021
    assert rows(Kvm("zen2", "5.15"))[(0x8000_0000, 0)].eax == 0x8000_001F
    r = rows(Kvm("zen2", "6.1"))
    assert r[(0x8000_0000, 0)].eax == 0x8000_0021
    assert r[(0x8000_0021, 0)].eax == 1 << 2 | 1 << 6 | 1 << 9
    assert (0x8000_0021, 0) not in rows(Kvm("skylake-sp", "6.18"))  # Intel: max 0x8000_0008


def test_emulated_leaf1_bits() -> None:
    """TSC_DEADLINE_TIMER and HYPERVISOR: EMULATED_F in the newest kvm_set_cpu_caps
    (cpuid_emul_*), absent in 6.12.117's leaf-1 mask; Documentation/virt/kvm/api.rst of
    those kernels says the TSC deadline bit is always returned false. X2APIC is emulated in
    every version."""
    for host in ("skylake-sp", "zen4"):
        old, new = rows(Kvm(host, "6.12"))[(1, 0)].ecx, rows(Kvm(host, "6.18"))[(1, 0)].ecx
        assert not bit(old, 24) and not bit(old, 31) and bit(old, 21)
        assert bit(new, 24) and bit(new, 31)


def test_leaf7_1_history() -> None:
    """Granite Rapids, leaf 7.1: 6.1 offers AVX_VNNI and AVX512_BF16 only; 6.6 adds
    FZRM/FSRS/FSRC/AMX_FP16 (cpuid_6_3_7_1) and PREFETCHITI in 7.1 EDX (cpuid_7_1_edx); leaf
    7 reports subleaf 2 from cpuid_leaf7_subleaf2."""
    host = Kvm("graniterapids", "6.6").host
    assert host.cpuid(7, 0)[0] >= 2
    a = rows(Kvm("graniterapids", "6.1"))
    b = rows(Kvm("graniterapids", "6.6"))
    assert a[(7, 1)].eax & ~(1 << 4 | 1 << 5) == 0 and a[(7, 1)].edx == 0
    assert bit(b[(7, 1)].eax, 21) == bit(host.cpuid(7, 1)[0], 21)
    assert bit(b[(7, 1)].edx, 14) == bit(host.cpuid(7, 1)[3], 14)
    assert (7, 2) not in a and (7, 2) in b


def test_amx_leaves_follow_kvm_amx() -> None:
    """0x1D/0x1E are zero unless KVM offers AMX_TILE (5.17, 690a757d610e); then 0x1D has
    subleaves 0..EAX."""
    old, new = rows(Kvm("sapphirerapids", "5.15")), rows(Kvm("sapphirerapids", "6.18"))
    assert old[(0x1D, 0)].values()[3:] == (0, 0, 0, 0) and (0x1D, 1) not in old
    assert bit(new[(7, 0)].edx, 24) and (0x1D, 1) in new and any(new[(0x1E, 0)].values()[3:])


def test_svm_leaf_8000000a_and_vmx_bit() -> None:
    """svm_set_cpu_caps with nested=1: SVM in 0x8000_0001 ECX, 0x8000_000A = revision 1, 8
    ASIDs, VMCBCLEAN/FLUSHBYASID/SVME_ADDR_CHK always; vmx_set_cpu_caps: VMX in leaf 1 ECX."""
    r = rows(Kvm("zen4", "6.12"))
    assert bit(r[(0x8000_0001, 0)].ecx, 2)
    a = r[(0x8000_000A, 0)]
    assert (a.eax, a.ebx, a.ecx) == (1, 8, 0) and all(bit(a.edx, b) for b in (5, 6, 28))
    assert bit(rows(Kvm("skylake-sp", "6.12"))[(1, 0)].ecx, 5)


def test_pvm_flavour_on_zen4() -> None:
    """kvm_pvm (measured on the 6.18 machine): shadow paging, so no GuestPhysBits and no
    SVM leaf; the PVM_FILTER bits in leaf 1 and 7."""
    r = rows(Kvm("zen4", "6.18", "pvm"))
    assert r[(0x8000_0008, 0)].eax >> 16 == 0
    assert r[(0x8000_000A, 0)].values()[3:] == (0, 0, 0, 0)
    assert r[(7, 1)].eax == 0 and r[(1, 0)].ecx & ~0x8120_2000 == 0


def _with_bits(name: str, leaf: int, reg: int, bits: int) -> HostModel:
    """Packaged host ``name`` with ``bits`` added to CPUID ``leaf``.0 register ``reg`` (the
    view a guest gets when its hypervisor passes them, as on the 6.18 Zen 3 machine)."""
    base = load(name)
    table = dict(base.table)
    regs = list(table[(leaf, 0)])
    regs[reg] |= bits
    table[(leaf, 0)] = (regs[0], regs[1], regs[2], regs[3])
    return HostModel(table, name=f"{name}+{leaf:#x}.{reg}:{bits:#x}")


def test_virt_ssbd_is_svm_only_with_amd_ssbd() -> None:
    """0x8000_0008 EBX VIRT_SSBD (bit 25) on a host whose raw leaf has AMD_SSBD (24) and
    VIRT_SSBD: init_speculation_control (arch/x86/kernel/cpu/common.c) clears the kernel's
    VIRT_SSBD when AMD_SSBD is there, so kvm_set_cpu_caps' F(VIRT_SSBD) drops it; only
    svm_set_cpu_caps (svm.c: LS_CFG_SSBD or AMD_SSBD) sets it back. kvm_pvm runs no
    svm_set_cpu_caps: the 6.18 Zen 3 machine's raw 0x130ad205 comes back as 0x110ad205."""
    guest = _with_bits("zen3", 0x8000_0008, 1, 1 << 25)
    assert bit(guest.cpuid(0x8000_0008)[1], 24)
    assert not bit(rows(Kvm(guest, "6.18", "pvm"))[(0x8000_0008, 0)].ebx, 25)
    assert bit(rows(Kvm(guest, "6.18", "svm"))[(0x8000_0008, 0)].ebx, 25)
    # Family 0x17 without AMD_SSBD: a raw VIRT_SSBD stays in the kernel's caps (and rules
    # out LS_CFG_SSBD, bsp_init_amd), so F(VIRT_SSBD) passes it without svm too.
    zen1_guest = _with_bits("zen1", 0x8000_0008, 1, 1 << 25)
    assert bit(rows(Kvm(zen1_guest, "6.18", "pvm"))[(0x8000_0008, 0)].ebx, 25)
    # Bare-metal Zen 1 (no AMD_SSBD, no VIRT_SSBD): LS_CFG_SSBD, and kvm_set_cpu_caps itself
    # sets VIRT_SSBD ("the preference is to use SPEC CTRL MSR": only without AMD_SSBD).
    assert not bit(load("zen1").cpuid(0x8000_0008)[1], 25)
    for flavour in ("pvm", "svm"):
        assert bit(rows(Kvm("zen1", "6.18", flavour))[(0x8000_0008, 0)].ebx, 25)


def test_amd_ibrs_same_mode_since_6_16() -> None:
    """0x8000_0008 EBX AMD_IBRS_SAME_MODE (bit 19): F() in kvm_set_cpu_caps since
    65ca2872015c (cpuid_amd_ibrs_same_mode, 6.16); Zen 3 has it, 6.12.117's mask lacks it."""
    assert bit(load("zen3").cpuid(0x8000_0008)[1], 19)
    assert bit(rows(Kvm("zen3", "6.18"))[(0x8000_0008, 0)].ebx, 19)
    assert not bit(rows(Kvm("zen3", "6.12"))[(0x8000_0008, 0)].ebx, 19)


def test_pvm_filter_leaves_untested_bits_to_mainline() -> None:
    """kvm_pvm's leaf 7.0 EDX: the Zen 5 measurement (PVM_FILTER) dropped FSRM (bit 4, which
    that host had) and forced ARCH_CAPABILITIES (29); INTEL_STIBP (27) and SPEC_CTRL_SSBD
    (31) were absent there. The 6.18 Zen 3 machine (raw 7.0 EDX 0x88000010) returns
    0xa8000000: both pass as in mainline (F() in the CPUID_7_EDX mask), FSRM stays dropped."""
    guest = _with_bits("zen3", 7, 3, 1 << 27 | 1 << 31)
    assert guest.cpuid(7)[3] == 0x8800_0010
    assert rows(Kvm(guest, "6.18", "pvm"))[(7, 0)].edx == 0xA800_0000
    # Leaf 1 ECX: the measured bits only, whatever this host has beyond them.
    assert rows(Kvm(guest, "6.18", "pvm"))[(1, 0)].ecx & ~0x8120_2000 == 0


def test_supported_cpuid_is_cached_and_fast() -> None:
    """On the migration matrix's path: repeated calls return equal tables quickly."""
    kvm = Kvm("icelake-sp", "6.6")
    first = kvm.get_supported_cpuid()
    t = time.perf_counter()
    for _ in range(200):
        assert kvm.get_supported_cpuid() == first
    assert time.perf_counter() - t < 0.5


# -- KVM_GET_MSR_INDEX_LIST / KVM_GET_MSR_FEATURE_INDEX_LIST ------------------------------------
def test_msr_lists_per_vendor() -> None:
    """kvm_init_msr_lists (x86.c, 6.12.117): VM_HSAVE_PA only on AMD (rdmsr_safe fails on
    Intel), IA32_FEAT_CTL only on Intel; MCG_EXT_CTL and the VMX MSRs only with vmx
    (svm_has_emulated_msr), AMD64_VIRT_SPEC_CTRL and TSC_RATIO not with vmx
    (vmx_has_emulated_msr); feature MSRs: the 18 VMX ones on vmx, DE_CFG on svm."""
    from kvmfpu.core import msrs as msr

    L = msr.LISTED
    intel, amd = Kvm("icelake-sp", "6.12"), Kvm("zen4", "6.12")
    ia, aa = intel.msr_index_list_all(), amd.msr_index_list_all()
    assert L["VM_HSAVE_PA"] in aa and L["VM_HSAVE_PA"] not in ia
    assert L["IA32_FEAT_CTL"] in ia and L["IA32_FEAT_CTL"] not in aa
    assert L["IA32_MCG_EXT_CTL"] in ia and L["IA32_MCG_EXT_CTL"] not in aa
    assert 0x480 in ia and 0x480 not in aa
    assert L["AMD64_TSC_RATIO"] in aa and L["AMD64_TSC_RATIO"] not in ia
    assert intel.msr_feature_index_list()[:18] == tuple(range(0x480, 0x492))
    assert amd.msr_feature_index_list()[0] == L["AMD64_DE_CFG"]
    assert len(set(ia)) == len(ia) and len(set(aa)) == len(aa)


def test_msr_lists_follow_kvm_features() -> None:
    """kvm_probe_msr_to_save: XFD/XFD_ERR with XFD (5.17), TSC_AUX with RDTSCP or RDPID,
    IA32_XSS and the CET MSRs from 6.18 (c0a5f2989122) where KVM supports CET."""
    from kvmfpu.core import msrs as msr

    assert msr.IA32_XFD in Kvm("sapphirerapids", "6.6").msr_index_list_all()
    assert msr.IA32_XFD not in Kvm("sapphirerapids", "5.15").msr_index_list_all()
    assert msr.LISTED["TSC_AUX"] in Kvm("zen4", "6.6").msr_index_list_all()
    new = Kvm("sapphirerapids", "6.18")
    assert set(new.msr_index_list()) <= set(new.msr_index_list_all())
    assert msr.IA32_S_CET in new.msr_index_list_all()


def test_sgx_only_with_enable_sgx() -> None:
    """vmx_set_cpu_caps clears SGX, SGX_LC and leaf 0x12 without enable_sgx; the libvirt
    Ice Lake-SP dump sets CPUID.7.EBX[2] but leaf 0x12 has no SGX1 (SGX off in firmware),
    so KVM offers no SGX and leaf 0x12 is all zero."""
    kvm = Kvm("icelake-sp", "6.12")
    assert kvm.host.cpuid(7)[1] >> 2 & 1 and not kvm.host.cpuid(0x12)[0] & 1
    r = rows(kvm)
    assert not bit(r[(7, 0)].ebx, 2) and not bit(r[(7, 0)].ecx, 30)
    assert r[(0x12, 0)].values()[3:] == (0, 0, 0, 0) and (0x12, 1) not in r


def test_pebs_ds_bits_with_pebs_ept() -> None:
    """vmx_set_cpu_caps sets DS and DTES64 when vmx_pebs_supported (x86_pmu.pebs_ept:
    Ice Lake-X and later servers, arch/x86/events/intel/core.c); libvirt's
    x86_64-cpuid-Xeon-w7-3465X-disabled.xml (Sapphire Rapids) does not list DS or DTES64
    among the bits QEMU+KVM could not enable, while it lists ACPI/HTT/TM/PBE."""
    spr, sky = rows(Kvm("sapphirerapids", "6.12"))[(1, 0)], rows(Kvm("skylake-sp", "6.12"))[(1, 0)]
    assert bit(spr.edx, 21) and bit(spr.ecx, 2) and bit(spr.ecx, 15)  # DS, DTES64, PDCM
    assert not any(bit(spr.edx, b) for b in (22, 28, 29, 31))
    assert not bit(sky.edx, 21) and not bit(sky.ecx, 2)


def test_deprecated_x87_bits() -> None:
    """FDP_EXCPTN_ONLY/ZERO_FCS_FDS: dropped by 5.15.0, passed from 5.17
    (cpuid_deprecated_x87, "KVM: x86: Report deprecated x87 features in supported CPUID")."""
    host = Kvm("skylake-sp", "6.1").host
    assert host.cpuid(7)[1] >> 13 & 1
    assert not bit(rows(Kvm("skylake-sp", "5.15"))[(7, 0)].ebx, 13)
    assert bit(rows(Kvm("skylake-sp", "6.1"))[(7, 0)].ebx, 13)
