"""QEMU feature words and names (kvmfpu.qemu.features).

Expected values: qemu/qemu target/i386/cpu.c (feature_word_info[], x86_cpu_initfn's
object_property_add_alias calls, feature_dependencies[], x86_cpu_get_migratable_flags) at
v10.2.2 and @5cb89cad7f30, and the Intel SDM / AMD APM bit positions."""

from __future__ import annotations

import pytest

from kvmfpu.cpus import features as cpu_features
from kvmfpu.cpus.features import ECX, EDX, FeatureBit
from kvmfpu.qemu import features as f


@pytest.mark.parametrize(
    ("spelling", "canon"),
    [
        ("sse4.1", "sse4.1"),
        ("sse4_1", "sse4.1"),
        ("sse4-1", "sse4.1"),  # two aliases
        ("sse4_2", "sse4.2"),
        ("sse3", "pni"),
        ("pclmuldq", "pclmulqdq"),
        ("lahf_lm", "lahf-lm"),
        ("ds_cpl", "ds-cpl"),
        ("nodeid_msr", "nodeid-msr"),
        ("i64", "lm"),
        ("xd", "nx"),
        ("ffxsr", "fxsr-opt"),
        ("fxsr_opt", "fxsr-opt"),
        ("tsc_adjust", "tsc-adjust"),
        ("kvm_pv_eoi", "kvm-pv-eoi"),
        ("hv-apicv", "hv-avic"),
        ("tsc_deadline", "tsc-deadline"),  # feat2prop form of a key=value option
        ("cet-ss", "cet-ss"),
        ("amx-tile", "amx-tile"),
    ],
)
def test_spellings_reach_the_canonical_name(spelling: str, canon: str) -> None:
    if spelling == "hv-apicv":  # an alias of a Hyper-V property, not of a feature bit
        assert f.ALIASES[spelling] == canon
        return
    assert f.canonical(spelling) == canon
    assert spelling in f.spellings(canon) or spelling.replace("_", "-") == canon


def test_unknown_feature_has_a_hint() -> None:
    with pytest.raises(f.UnknownFeature, match="did you mean avx512vnni"):
        f.canonical("avx512_vnni")
    with pytest.raises(f.UnknownFeature):
        f.canonical("osxsave")  # NULL in feat_names: no property


@pytest.mark.parametrize(
    ("name", "bit"),
    [
        ("xsave", FeatureBit(1, 0, ECX, 26)),
        ("sse4.1", FeatureBit(1, 0, ECX, 19)),
        ("avx512vnni", FeatureBit(7, 0, ECX, 11)),
        ("cet-ss", FeatureBit(7, 0, ECX, 7)),
        ("cet-ibt", FeatureBit(7, 0, EDX, 20)),
        ("amx-tile", FeatureBit(7, 0, EDX, 24)),
        ("avx10", FeatureBit(7, 1, EDX, 19)),
        ("xsaves", FeatureBit(0xD, 1, 0, 3)),
        ("lm", FeatureBit(0x8000_0001, 0, EDX, 29)),
        ("xsaveerptr", FeatureBit(0x8000_0008, 0, 1, 2)),
    ],
)
def test_cpuid_bits(name: str, bit: FeatureBit) -> None:
    assert f.cpuid_bit(name) == bit


def test_cpuid_bits_agree_with_the_sdm_table_kvmfpu_already_has() -> None:
    # kvmfpu.cpus.features (SDM/APM, Linux names) and QEMU's table must place shared names alike.
    same = 0
    for linux_name, bit in cpu_features.FEATURES.items():
        try:
            qbit = f.cpuid_bit(linux_name)
        except f.UnknownFeature:
            continue
        assert qbit == bit, linux_name
        same += 1
    assert same >= 20


def test_msr_words() -> None:
    w, _ = f.FEATURES["rdctl-no"]
    assert (w.word, w.msr, w.leaf) == ("FEAT_ARCH_CAPABILITIES", 0x10A, None)
    assert f.cpuid_bit("rdctl-no") is None
    assert f.FEATURES["its-no"][1] == 62  # 64-bit MSR word
    assert f.WORD["FEAT_VMX_BASIC"].msr == 0x480


def test_multi_bit_names() -> None:
    w, m = f.mask("kvmclock")  # FEAT_KVM bits 0 and 3
    assert (w.word, m) == ("FEAT_KVM", 0b1001)
    assert f.mask("vmx-invept-single-context")[1] == (1 << 25) | (1 << 41)


def test_migratable_and_autoenable_flags() -> None:
    assert not f.is_migratable("invtsc")  # unmigratable_flags = CPUID_APM_INVTSC
    assert f.is_migratable("avx2")  # named: migratable
    assert f.WORD["FEAT_8000_0001_ECX"].no_autoenable == 1 << 22  # topoext
    assert f.WORD["FEAT_1_EDX"].no_autoenable == 1 << 28  # ht


def test_words_cover_the_brief() -> None:
    for word in (
        "FEAT_1_EDX",
        "FEAT_1_ECX",
        "FEAT_7_0_EBX",
        "FEAT_7_0_ECX",
        "FEAT_7_0_EDX",
        "FEAT_7_1_EAX",
        "FEAT_7_1_ECX",
        "FEAT_7_1_EDX",
        "FEAT_7_2_EDX",
        "FEAT_8000_0001_EDX",
        "FEAT_8000_0001_ECX",
        "FEAT_8000_0007_EDX",
        "FEAT_8000_0007_EBX",
        "FEAT_8000_0008_EBX",
        "FEAT_8000_0021_EAX",
        "FEAT_8000_0021_ECX",
        "FEAT_8000_0022_EAX",
        "FEAT_XSAVE",
        "FEAT_XSAVE_XCR0_LO",
        "FEAT_XSAVE_XCR0_HI",
        "FEAT_XSAVE_XSS_LO",
        "FEAT_XSAVE_XSS_HI",
        "FEAT_6_EAX",
        "FEAT_14_0_ECX",
        "FEAT_24_0_EBX",
        "FEAT_C000_0001_EDX",
        "FEAT_KVM",
        "FEAT_KVM_HINTS",
        "FEAT_SVM",
        "FEAT_ARCH_CAPABILITIES",
        "FEAT_CORE_CAPABILITY",
        "FEAT_PERF_CAPABILITIES",
        "FEAT_VMX_PROCBASED_CTLS",
        "FEAT_VMX_BASIC",
    ):
        assert word in f.WORD
    assert all(len(w.names) in (32, 64) for w in f.WORDS)


def test_dependencies() -> None:
    assert ("vmx-ept", "vmx-secondary-ctls") in f.DEPENDENCIES
    assert ("fred", "lkgs") in f.DEPENDENCIES and ("fred", "lm") in f.DEPENDENCIES
    full = {"vmx", "vmx-secondary-ctls", "vmx-ept", "vmx-eptad", "vmx-invept"}
    assert f.apply_dependencies(set(full)) == set()
    # Without vmx the chain goes in table order: VMX -> PROCBASED (vmx-secondary-ctls) ->
    # SECONDARY (vmx-ept) -> EPT_VPID_CAPS (vmx-eptad, vmx-invept), all in one pass.
    feats = full - {"vmx"}
    assert f.apply_dependencies(feats) == full - {"vmx"} and feats == set()
    # avx10 needs a vector length; avx10-512 needs avx10-256 needs avx10-128
    feats = {"avx10", "avx10-256", "avx10-512"}
    assert f.apply_dependencies(feats) == {"avx10", "avx10-256", "avx10-512"}


def test_first_seen() -> None:
    assert f.first_seen("cet-ss") == "11.0" and f.first_seen("avx") == "7.2"
    assert f.first_seen("avx10") in ("10.0", "10.2")


def test_dependencies_per_release() -> None:
    # v7.2.0's feature_dependencies[] has no sgx -> sgx1 entry (v10.0.13's has): at 7.2 sgx1
    # survives -sgx, at 10.0 it does not.
    assert f.DEPENDENCY_FIRST_SEEN[("sgx1", "sgx")] == "10.0"
    assert f.apply_dependencies({"sgx1"}, "7.2") == set()
    assert f.apply_dependencies({"sgx1"}, "10.0") == {"sgx1"}
    assert ("vmx-ept", "vmx-secondary-ctls") not in f.DEPENDENCY_FIRST_SEEN  # in 7.2 already
