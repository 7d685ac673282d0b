"""QEMU CPU models: versions apply cumulatively, aliases, options, components."""

from __future__ import annotations

import pytest

from kvmfpu.arch import xfeatures as xf
from kvmfpu.qemu import models
from kvmfpu.qemu.models import UnknownModel, resolve


@pytest.mark.parametrize(
    ("spec", "xcr0", "xss"),
    [
        ("Nehalem", 0, 0),
        ("Westmere-IBRS", 0, 0),
        ("SandyBridge", 0x7, 0),
        ("Skylake-Server", 0x2E7, 0),
        ("SapphireRapids", 0x602E7, 0),
        ("SapphireRapids-v5", 0x602E7, xf.CET),  # cet-ss/cet-ibt from v5, XSS with xsaves
        ("GraniteRapids-v4", 0x602E7, xf.CET),
        ("SierraForest", 0x207, 0),
        ("ClearwaterForest-v2", 0x207, xf.CET),
        ("DiamondRapids", 0xE02E7, xf.CET),  # APX (bit 19), AMX, AVX-512, CET
        ("Denverton", 0x1B, 0),  # MPX in v1
        ("Denverton-v2", 0x3, 0),  # mpx=off
        ("EPYC", 0x7, 0),
        ("EPYC-Milan", 0x207, 0),
        ("EPYC-Genoa", 0x2E7, 0),
        ("Opteron_G5", 0x7, 0),
        ("YongFeng", 0x207, 0),
    ],
)
def test_components(spec: str, xcr0: int, xss: int) -> None:
    g = resolve(spec)
    assert (g.xcr0, g.xss) == (xcr0, xss)


def test_versions_are_cumulative() -> None:
    assert not resolve("EPYC-v2").has("xsaves")
    assert resolve("EPYC-v3").has("xsaves") and resolve("EPYC-v5").has("xsaves")
    assert resolve("EPYC-Rome-v3").has("xsaves")
    assert not resolve("EPYC-Rome-v4").has("xsaves")  # erratum 1386
    assert not resolve("EPYC-Rome-v5").has("xsaves")  # stays off
    assert not resolve("Skylake-Server-v4").has("xsaves") and resolve("Skylake-Server-v5").has("xsaves")
    assert resolve("Snowridge-v1").has("mpx") and not resolve("Snowridge-v4").has("mpx")
    assert resolve("GraniteRapids-v2").has("avx10") and resolve("GraniteRapids-v3").has("avx10")


def test_unversioned_is_v1_and_aliases_name_a_version() -> None:
    assert resolve("Cascadelake-Server").label == "Cascadelake-Server-v1"
    assert resolve("Haswell-noTSX-IBRS").label == "Haswell-v4"
    assert resolve("epyc-rome-v4").label == "EPYC-Rome-v4"  # case-insensitive


def test_options_change_features() -> None:
    g = resolve("EPYC-Milan,-pku")
    assert g.xcr0 == 0x7 and g.label == "EPYC-Milan-v1,-pku"
    assert resolve("Skylake-Client,+xsaves,mpx=on").xcr0 == 0x1F
    assert resolve("SapphireRapids-v5,-xsaves").xss == 0  # supervisor state needs XSAVES
    assert resolve("SapphireRapids,shstk=on").xss == xf.CET
    assert resolve("Denverton,+apxf").xcr0 & (xf.MPX | xf.APX) == 0  # MPX and APX exclude


def test_host_passthrough() -> None:
    g = resolve("host")
    assert g.passthrough and g.label == "host"


@pytest.mark.parametrize(
    "bad", ["", "Skylake-Servr", "EPYC-v9", "EPYC,+nosuch", "EPYC,+pku=on", "EPYC,p k u"]
)
def test_bad_specs(bad: str) -> None:
    with pytest.raises(UnknownModel):
        resolve(bad)


def test_catalogue_covers_qemu_table() -> None:
    names = models.names()
    assert len(names) == 46
    for n in ("Nehalem", "DiamondRapids", "EPYC-Turin", "YongFeng", "qemu64", "Penryn"):
        assert n in names
    assert models.sources()[0]["commit"] == "5cb89cad7f30be3175dd5abbb79ae5e634476cfa"
    assert resolve("EPYC-Turin-v2").unverified


# --- whole models (data: QEMU v10.2.2 / @5cb89cad7f30 target/i386/cpu.c builtin_x86_defs) ----


def test_catalogue_counts() -> None:
    cat = models.catalogue()
    assert len(cat) == 46 and sum(len(m.versions) for m in cat) == 111
    assert sum(len(m.features) for m in cat) > 46 * 20  # every feature, not only xsave ones


def test_every_feature_of_a_model() -> None:
    # Skylake-Client's .features[] words (cpu.c) plus hypervisor (x86_cpu_load_model) and the
    # KVM defaults (kvm_default_props, kvm/kvm-cpu.c); the QEMU 7.2 oracle checks all models.
    g = resolve("Skylake-Client")
    for f in (
        "fpu",
        "sse4.1",
        "sse4.2",
        "pni",
        "lahf-lm",
        "avx2",
        "bmi2",
        "rdseed",
        "smap",
        "3dnowprefetch",
        "abm",
        "invpcid",
        "rtm",
        "hle",
        "xsavec",
        "hypervisor",
        "x2apic",
        "kvmclock",
        "kvm-pv-eoi",
    ):
        assert g.has(f), f
    assert not g.has("vmx") and not g.has("avx512f") and not g.has("monitor")
    assert (g.vendor, g.family, g.model, g.stepping) == ("GenuineIntel", 6, 94, 3)


def test_accelerator_defaults() -> None:
    # kvm_default_props turn svm off, so every SVM-word bit goes with it (feature_dependencies
    # svm -> FEAT_SVM); tcg_default_props turn vme off; TCG keeps no KVM PV bit.
    kvm = resolve("EPYC-Rome-v5")
    assert not kvm.has("svm") and not kvm.has("npt") and kvm.has("vme") and kvm.has("kvmclock")
    nested = resolve("EPYC-Rome-v5,+svm")
    assert nested.has("npt") and nested.has("v-vmsave-vmload") and nested.has("vgif")
    tcg = resolve("EPYC-Rome-v5", accel="tcg")
    assert tcg.has("svm") and tcg.has("npt") and not tcg.has("vme") and not tcg.has("kvmclock")
    assert not resolve("Skylake-Client,kvm=off").has("kvmclock")  # expose_kvm


def test_msr_word_features_are_kept_apart() -> None:
    g = resolve("Cascadelake-Server-v2")
    assert "arch-capabilities" in g.features and "ibrs-all" in g.msr_features
    # Cascadelake's VMX words are set but CPUID.1:ECX.VMX is not: the dependency clears them
    assert not resolve("Cascadelake-Server").msr_features & {"vmx-ept", "vmx-vpid"}
    assert "vmx-ept" in resolve("Cascadelake-Server,+vmx").msr_features
    off = resolve("Cascadelake-Server,+vmx,vmx=off")  # -f/+f last: +vmx wins over vmx=off
    assert "vmx-ept" in off.msr_features
    assert not resolve("Cascadelake-Server,vmx=on,-vmx").msr_features & {"vmx-ept"}


def test_version_props_other_than_features() -> None:
    # Haswell-v2 sets stepping 1, Icelake-Server-v4 model 106, YongFeng-v2 model 0x5b (cpu.c)
    assert resolve("Haswell-v2").stepping == 1 and resolve("Haswell-v3").stepping == 4
    assert resolve("Icelake-Server-v4").model == 106 and resolve("Icelake-Server-v3").model == 134
    assert resolve("YongFeng-v2").model == 0x5B


@pytest.mark.parametrize(
    ("spec", "has", "lacks"),
    [
        ("Westmere,+sse4_1", (), ()),  # alias registered by x86_cpu_initfn
        ("Westmere,sse4_1=off", (), ("sse4.1",)),
        ("Westmere,sse4-1=off", (), ("sse4.1",)),
        ("Westmere,-sse4.1", (), ("sse4.1",)),
        ("Westmere,lahf_lm=off", (), ("lahf-lm",)),
        ("Westmere,-lahf_lm", (), ("lahf-lm",)),
        ("Westmere,i64=off", (), ("lm",)),
        ("Westmere,-xd", (), ("nx",)),
        ("Westmere,+pclmuldq", ("pclmulqdq",), ()),
        ("Westmere,tsc_deadline=off", (), ("tsc-deadline",)),  # feat2prop for key=value
        ("Westmere,avx=on", ("avx",), ()),
        ("Westmere,avx=yes,aes=n", ("avx",), ("aes",)),
        ("Westmere,avx", ("avx",), ()),  # a bare name means =on
        ("Westmere,-avx,avx=on", (), ("avx",)),  # -f applies after key=value
    ],
)
def test_feature_spellings(spec: str, has: tuple[str, ...], lacks: tuple[str, ...]) -> None:
    g = resolve(spec)
    assert all(g.has(f) for f in has) and not any(g.has(f) for f in lacks)


def test_dependencies_drop_what_they_need() -> None:
    g = resolve("Cooperlake,-lm")  # lm -> vmx-entry-ia32e-mode
    assert "vmx-entry-ia32e-mode" not in g.msr_features
    asked = resolve("Westmere,+vmx-ept")  # no vmx: dropped, and noted
    assert "vmx-ept" not in asked.msr_features and any("vmx-ept" in n for n in asked.notes)


def test_check_enforce_and_notes() -> None:
    g = resolve("Skylake-Server-v5,enforce")
    assert g.enforce and g.check and g.label == "Skylake-Server-v5,enforce"
    assert not resolve("Skylake-Server-v5,check=off").check
    g = resolve(
        "EPYC,host-phys-bits=on,phys-bits=48,l3-cache=off,hv-relaxed,pmu=on,"
        "tsc-frequency=2000000000,model-id=x,level=0xd"
    )
    assert g.features == resolve("EPYC").features and len(g.notes) == 8
    assert resolve("EPYC,family=25,model=1,stepping=1,vendor=AuthenticAMD").family == 25
    assert resolve("host,migratable=off").passthrough


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("Skylake-Client,+tsc_deadline", "verbatim"),  # +/- names get no feat2prop
        ("Skylake-Client,+SSE2", "did you mean sse2"),  # property names are case-sensitive
        ("Skylake-Client,avx2=1", "on|off"),
        ("Skylake-Client,migratable=on", "host and max only"),
        ("Skylake-Client,family=xyz", "number"),
        ("Skylake-Client,avx512_vnni=on", "did you mean avx512vnni"),
        ("Icelake-Client", "Icelake-Client"),
    ],
)
def test_rejected_like_qemu(bad: str, why: str) -> None:
    with pytest.raises(UnknownModel, match=why):
        resolve(bad)


@pytest.mark.parametrize(
    ("spec", "absent", "present"),
    [
        # first release with each version: libvirt domaincaps qemu_X.x86_64.xml @003b573108d8,
        # QEMU v7.2.0 / v10.0.13 / v10.2.2 cpu.c (sources in cpu_models.json)
        ("SapphireRapids", "7.2", "8.0"),
        ("SapphireRapids-v2", "8.0", "8.2"),
        ("GraniteRapids", "8.0", "8.2"),
        ("EPYC-Genoa", "8.0", "8.2"),
        ("SierraForest", "9.0", "9.2"),
        ("ClearwaterForest", "9.2", "10.0"),
        ("EPYC-Turin", "10.0", "10.1"),
        ("SapphireRapids-v5", "10.2", "11.0"),
        ("DiamondRapids", "10.2", "11.0"),
    ],
)
def test_release_since(spec: str, absent: str, present: str) -> None:
    with pytest.raises(UnknownModel, match=f"QEMU {absent} has no"):
        resolve(spec, qemu=absent)
    g = resolve(spec, qemu=present)
    assert g.qemu == present and g.qemu_since == present and not g.notes


def test_release_unknowns_and_features() -> None:
    assert resolve("Skylake-Client-v1", qemu="6.2").qemu_since == "6.2"
    assert any("UNVERIFIED" in n for n in resolve("Skylake-Client-v4", qemu="6.2").notes)
    assert resolve("EPYC-Milan-v4").qemu_since == "11.1" and resolve("EPYC-Milan-v4").unverified
    with pytest.raises(UnknownModel, match=r"QEMU 7\.2 has no CPU feature 'cet-ss'"):
        resolve("Skylake-Client,+cet-ss", qemu="7.2")
    assert any("UNVERIFIED" in n for n in resolve("SapphireRapids,+avx10", qemu="8.2").notes)
    with pytest.raises(UnknownModel):
        resolve("EPYC", qemu="5.0")


def test_describe_every_feature() -> None:
    from kvmfpu.qemu import features as qf

    for name in qf.FEATURES:
        assert models.describe_feature(name).startswith(name)
    assert models.describe_feature("avx") == "avx (CPUID[eax=1h].ECX[28])"
    assert models.describe_feature("rdctl-no") == "rdctl-no (MSR 0x10a ARCH_CAPABILITIES bit 0)"
    assert models.FEATURES["sse4.1"] == models.FEATURES[qf.canonical("sse4_1")]


def test_11_0_versions_from_libvirts_copies() -> None:
    # libvirt src/cpu_map/x86_SapphireRapids-v6.xml has its-no, -v5 not (the only difference);
    # likewise GraniteRapids-v5, SierraForest-v5, ClearwaterForest-v3.
    for m, v in (("SapphireRapids", 6), ("GraniteRapids", 5), ("SierraForest", 5), ("ClearwaterForest", 3)):
        new, old = resolve(f"{m}-v{v}"), resolve(f"{m}-v{v - 1}")
        assert new.msr_features - old.msr_features == {"its-no"} and new.features == old.features
    # DiamondRapids: libvirt's x86_DiamondRapids.xml, names without a feature word kept apart
    dmr = next(m for m in models.catalogue() if m.name == "DiamondRapids")
    assert {"amx-fp8", "movrs", "apx-nci-ndd-nf"} <= set(dmr.unmodelled)
    g = resolve("DiamondRapids")
    assert g.has("apxf") and g.has("fred") and g.unverified
    # avx10 is in the definition but needs avx10-128 under the v10.2.2 dependency table
    assert "avx10" in dmr.features and not g.has("avx10") and "avx10" in g.unverified
