"""The cases issue 6 names, each run through the whole path on the models."""

from __future__ import annotations

import pytest

from kvmfpu.blob import sample_data
from kvmfpu.migrate.check import COMPATIBLE, CONDITIONS, INCOMPATIBLE, Report, check, read_blob


def errors(r: Report) -> list[str]:
    return [f.text for f in r.findings if f.level == "error"]


@pytest.mark.parametrize("src_kernel", ["5.15", "5.17.15"])
def test_nehalem_to_newer_on_5_17_fails_validate_user_xstate_header(src_kernel: str) -> None:
    r = check(f"nehalem@{src_kernel}", "skylake-sp@5.17.15", "Nehalem", advise=False)
    assert r.verdict == INCOMPATIBLE
    f = next(f for f in r.findings if f.level == "error")
    assert (f.errno, f.function, f.commit) == ("EINVAL", "validate_user_xstate_header",
                                               "ad856280ddea, 5.17")
    assert "KVM_SET_XSAVE" in f.text and "0x3 (x87|sse)" in f.text


@pytest.mark.parametrize("kernel", ["6.0", "6.6"])
def test_nehalem_to_newer_is_fine_from_6_0(kernel: str) -> None:
    r = check(f"nehalem@{kernel}", f"skylake-sp@{kernel}", "Nehalem", advise=False)
    assert r.verdict == COMPATIBLE and not r.lost


def test_nehalem_advice_names_the_fixed_kernel() -> None:
    r = check("nehalem@5.17.15", "skylake-sp@5.17.15", "Nehalem")
    assert any(a.kind == "kernel" and a.change == "destination kernel 6.0"
               and a.verdict == COMPATIBLE for a in r.advice)


def test_5_17_get_xsave2_on_a_host_without_xsave_loses_the_legacy_state() -> None:
    """5.17.0's short uabi_size (d187ba531230, CVE-2022-49557): QEMU's KVM_GET_XSAVE2 stops
    at 512 bytes, before the header."""
    r = check("nehalem@5.17", "skylake-sp@6.6", "Nehalem", advise=False)
    assert r.verdict == INCOMPATIBLE
    assert any("KVM_GET_XSAVE2 on nehalem@5.17 does not return" in e for e in errors(r))


def test_pkru_case_guest_epyc_from_milan_to_naples() -> None:
    """A 5.16 source exports the host PKRU of a guest without PKU; ad856280ddea (5.17)
    limits user_xfeatures to the guest's XCR0. 5.16.y never took it (only its AUTOSEL
    posting exists, which needs 5.17's c270ce393dfd), so 5.16.15 still leaks."""
    r = check("zen3@5.16", "zen1@5.16", "EPYC", advise=True)
    assert r.verdict == INCOMPATIBLE
    f = next(f for f in r.findings if f.level == "error")
    assert f.errno == "EINVAL" and "0x200 (pkru)" in f.text
    assert any(a.change == "source kernel 5.17" and a.verdict == COMPATIBLE for a in r.advice)
    assert check("zen3@5.16.15", "zen1@5.16.15", "EPYC", advise=False).verdict == INCOMPATIBLE
    assert check("zen3@6.6", "zen1@6.6", "EPYC", advise=False).verdict == COMPATIBLE


def test_pkru_case_guest_epyc_milan_cannot_land_on_naples() -> None:
    """Zen 1 has no PKU, and 6.6 applies erratum 1386 on family 17h: both features the guest
    had on Zen 3 are gone (x86_cpu_filter_features drops them; libvirt's virCPUx86UpdateLive
    would refuse the migration), and QEMU's KVM_SET_SREGS with CR4.PKE fails (kvm_set_cr4)."""
    r = check("zen3@6.6", "zen1@6.6", "EPYC-Milan")
    assert r.verdict == INCOMPATIBLE
    cpu = next(f for f in r.findings if f.stage == "cpu")
    assert cpu.level == "error" and {"pku", "xsaves"} <= set(cpu.features)
    assert "missing features: " in cpu.text and "erratum 1386" in cpu.text
    assert "pku (CPUID[eax=7h,ecx=0h].ECX[3]): the destination CPU (zen1) does not have it" \
        in cpu.text
    assert set(r.lost_features) == set(cpu.features)
    f = next(f for f in r.findings if f.level == "error" and f.errno)
    assert (f.errno, f.function) == ("EINVAL", "kvm_set_cr4") and "CR4.PKE" in f.text
    spec = "-cpu EPYC-Milan-v1" + "".join(f",-{x}" for x in r.lost_features)
    assert any(a.kind == "QEMU option" and a.change == spec and a.verdict == COMPATIBLE
               for a in r.advice)
    assert any(a.kind == "guest model" and a.verdict == COMPATIBLE for a in r.advice)


def test_zen4_to_skylake_raw_blob_misplaces_avx512() -> None:
    raw = check("zen4@6.6", "skylake-sp@6.6", "EPYC-Genoa", vmm="raw")
    assert raw.verdict == INCOMPATIBLE
    lost = {name for name, _, _ in raw.lost}
    assert {"zmm0", "zmm16", "k0"} <= lost and "pkru" in lost
    # QEMU re-lays every register, but an AMD model on Skylake-SP loses CPU features (libvirt
    # refuses, virCPUx86UpdateLive), so QEMU is no longer advice that makes it compatible.
    qemu = check("zen4@6.6", "skylake-sp@6.6", "EPYC-Genoa", vmm="qemu", advise=False)
    assert not qemu.lost and not any("register" in f.text for f in qemu.findings
                                     if f.level == "error")
    assert qemu.verdict == INCOMPATIBLE and {"sse4a", "avx512-bf16"} <= set(qemu.lost_features)
    assert any("QEMU re-lays" in f.text and "pkru 0x980->0xa80" in f.text
               for f in qemu.findings)


def test_zen4_capture_as_blob() -> None:
    """The shipped Zen 5 KVM_GET_XSAVE capture, handed over raw to Skylake-SP."""
    blob = read_blob(sample_data.path(sample_data.KVM_ZEN5))
    r = check("zen5@6.6", "skylake-sp@6.6", "EPYC-Genoa", vmm="raw", blob=blob,
              blob_name="sample", advise=False)
    assert r.verdict == INCOMPATIBLE and r.lost
    q = check("zen5@6.6", "zen4@6.6", "EPYC-Genoa", vmm="raw", blob=blob, advise=False)
    assert q.verdict == COMPATIBLE


def test_amx_guest_needs_xsave2_and_permission() -> None:
    ok = check("sapphirerapids@6.6", "sapphirerapids@6.6", "SapphireRapids", vmm="raw",
               advise=False)
    assert ok.verdict == CONDITIONS
    assert any("ARCH_REQ_XCOMP_GUEST_PERM" in f.text and "KVM_GET_XSAVE2" in f.text
               for f in ok.findings if f.level == "condition")
    old = check("sapphirerapids@6.6", "sapphirerapids@6.6", "SapphireRapids", vmm="raw-xsave",
                advise=False)
    f = next(f for f in old.findings if f.level == "error")
    assert (f.stage, f.errno, f.function) == ("source", "EINVAL", "kvm_vcpu_ioctl_x86_get_xsave")


def test_amx_guest_toward_a_destination_without_permission() -> None:
    r = check("sapphirerapids@6.6", "sapphirerapids@6.6", "SapphireRapids", vmm="raw",
              dst_vmm="raw-noperm", advise=False)
    f = next(f for f in r.findings if f.level == "error")
    assert (f.stage, f.errno, f.function) == ("destination", "EPERM", "__xfd_enable_feature")
    assert "KVM_SET_CPUID2" in f.text


def test_amx_guest_toward_a_destination_without_amx() -> None:
    r = check("sapphirerapids@6.6", "skylake-sp@6.6", "SapphireRapids")
    assert r.verdict == INCOMPATIBLE
    assert any(f.text.startswith("QEMU on the destination drops") and "amx-tile (" in f.text
               for f in r.findings)
    cpu = next(f for f in r.findings if f.stage == "cpu")
    assert cpu.level == "error" and {"amx-tile", "xfd"} <= set(cpu.features)
    f = next(f for f in r.findings if f.level == "error" and f.errno)
    assert f.errno == "EINVAL" and "xtilecfg|xtiledata" in f.text
    # The advice removes exactly the lost features, and its re-run must say it works.
    spec = "-cpu SapphireRapids-v1" + "".join(f",-{x}" for x in r.lost_features)
    assert any(a.change == spec and a.verdict != INCOMPATIBLE for a in r.advice)
    noamx = check("sapphirerapids@6.6", "sapphirerapids-noamx@6.6", "SapphireRapids",
                  advise=False)
    assert noamx.verdict == INCOMPATIBLE


def test_cet_guest_whose_xss_is_not_restored() -> None:
    """Firecracker's MSR list has no IA32_XSS: the guest's next XRSTORS of a context that
    names CET_U/CET_S takes #GP (SDM: XCOMP_BV outside XCR0 | IA32_XSS)."""
    r = check("sapphirerapids@6.18", "sapphirerapids@6.18", "SapphireRapids-v5",
              vmm="firecracker@1.16.0", advise=False)
    assert r.verdict == INCOMPATIBLE
    assert any("IA32_XSS 0x1800 -> 0x0 (not saved)" in e for e in errors(r))
    g = next(f for f in r.findings if f.stage == "guest")
    assert "XRSTORS" in g.text and "#GP(0)" in g.text and "XCOMP_BV sets 0x1800" in g.text


def test_cet_guest_with_firecracker_1_16_1() -> None:
    """Firecracker 1.16.1 saves IA32_XSS (PR #5972, backport 14e18e41b), so the guest's
    XRSTORS works; its MSR list still has no CET MSR, so their values are lost."""
    r = check("sapphirerapids@6.18", "sapphirerapids@6.18", "SapphireRapids-v5",
              vmm="firecracker@1.16.1", advise=False)
    assert r.verdict == INCOMPATIBLE
    assert not any("IA32_XSS" in e for e in errors(r))
    assert any("IA32_PL0_SSP" in e and "(not saved)" in e for e in errors(r))
    assert not any(f.stage == "guest" and f.level == "error" for f in r.findings)


def test_cet_guest_with_qemu_restores_xss_after_xsave_harmlessly() -> None:
    r = check("sapphirerapids@6.18", "sapphirerapids@6.18", "SapphireRapids-v5", advise=False)
    assert r.verdict == CONDITIONS and not errors(r)
    assert any("IA32_XSS (0x1800 (cet_u|cet_s)) is put after KVM_SET_XSAVE: harmless"
               in f.text for f in r.findings if f.level == "info")
    steps = [s for side, s, _ in r.steps if side == "destination"]
    assert steps.index("KVM_SET_MSRS") > steps.index("KVM_SET_XSAVE (12288-byte buffer)")


def test_cet_guest_to_a_kernel_without_cet() -> None:
    r = check("sapphirerapids@6.18", "sapphirerapids@6.12", "SapphireRapids-v5")
    assert r.verdict == INCOMPATIBLE
    assert any("IA32_XSS 0x1800 -> 0x0 (not put)" in e for e in errors(r))
    assert any(f.stage == "guest" for f in r.findings if f.level == "error")
    assert any(a.change == "destination kernel 6.18" for a in r.advice)


def test_zen_xsaves_erratum_guest_model() -> None:
    """EPYC-Rome-v4 drops XSAVES (erratum 1386): it lands on kernels that hide XSAVES on
    Zen 2, where EPYC-Rome-v1 loses the instruction its guest uses."""
    v4 = check("zen2@6.6", "zen2@7.3", "EPYC-Rome-v4", advise=False)
    assert v4.verdict == COMPATIBLE
    v1 = check("zen2@6.1", "zen2@7.3", "EPYC-Rome", advise=False)
    # The guest had XSAVES on 6.1 (before b0563468eeac reached 6.1.20) and loses it on 7.3:
    # libvirt refuses such a migration (virCPUx86UpdateLive "missing features").
    assert v1.verdict == INCOMPATIBLE
    cpu = next(f for f in v1.findings if f.stage == "cpu")
    assert cpu.features == ("xsaves",) and "b0563468eeac" in cpu.text and "seed 001" in cpu.text


def test_report_json_round_trip() -> None:
    r = check("zen3@5.16", "zen1@5.16", "EPYC")
    doc = r.to_json()
    assert doc["verdict"] == INCOMPATIBLE and doc["source"] == "zen3@5.16"
    assert any(f.get("function") == "fpu_copy_uabi_to_guest_fpstate" for f in doc["findings"])
    assert doc["scope"]["checked"] and doc["scope"]["not_checked"]
    assert doc["guest"]["xcr0"] == "0x7" and doc["advice"]
