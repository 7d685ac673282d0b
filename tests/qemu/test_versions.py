"""kvmfpu.qemu.versions: each QEMU release's xsave facts, the `cpu` subsections it sends
and the error an older destination prints. Sources are named per test."""

from __future__ import annotations

import pytest

from kvmfpu.qemu import versions as qv
from kvmfpu.qemu.env import QemuEnv
from kvmfpu.qemu.versions import GuestState, load_error, release, subsections_sent

AMX = GuestState(frozenset({"xfd", "amx-tile", "avx512f", "pku"}))
CET = GuestState(frozenset({"shstk", "ibt"}), xss=0x1800)  # Linux spellings


@pytest.mark.parametrize(
    "text, series",
    [("7.2", "7.2"), ("7.2.1", "7.2"), ("8.2.0", "8.2"), (" 10.1.3 ", "10.1"), ("11.0", "11.0")],
)
def test_release_accepts_a_series_or_a_patch_level(text: str, series: str) -> None:
    assert release(text).version == series


@pytest.mark.parametrize("text", ["7.3", "5.2", "6", "11", "abc", "7.2-rc1", "v7.2", ""])
def test_release_rejects_what_is_not_modelled(text: str) -> None:
    with pytest.raises(qv.UnknownVersion) as info:
        release(text)
    assert isinstance(info.value, ValueError)
    assert "6.2, 7.0" in str(info.value) and "\n" not in str(info.value)


def test_releases_are_ordered_and_newest_is_11_0() -> None:
    keys = [tuple(int(p) for p in r.split(".")) for r in qv.RELEASES]
    assert keys == sorted(keys) and qv.NEWEST == "11.0"
    for r in (
        "6.2",
        "7.0",
        "7.1",
        "7.2",
        "8.0",
        "8.1",
        "8.2",
        "9.0",
        "9.1",
        "9.2",
        "10.0",
        "10.1",
        "10.2",
        "11.0",
    ):
        assert r in qv.RELEASES


@pytest.mark.parametrize(
    "version, xsave2", [("6.0", False), ("6.2", False), ("7.0", True), ("8.2", True), ("11.0", True)]
)
def test_xsave2_and_amx_permission_from_7_0(version: str, xsave2: bool) -> None:
    """qemu-devel [PULL] of 2022-03-08 (7.0): 'x86: Use new XSAVE ioctls handling' and
    15/22 'x86: Grant AMX permission for guest' (kvm_request_xsave_components)."""
    r = release(version)
    assert r.has_xsave2 is xsave2 and r.asks_amx_perm is xsave2 and r.xfd_msrs is xsave2


@pytest.mark.parametrize(
    "version, mode",
    [
        ("6.0", "intel-fixed"),
        ("6.1", "kvm-supported"),
        ("6.2", "kvm-supported"),
        ("7.0", "host-cpuid"),
        ("10.1", "host-cpuid"),
        ("11.0", "host-cpuid"),
    ],
)
def test_leaf_d_offsets_per_release(version: str, mode: str) -> None:
    """Before 6.1 struct X86XSaveArea; fea4500841 (6.1) KVM_GET_SUPPORTED_CPUID; 7.0's
    'Grant AMX permission' patch switched kvm_cpu_xsave_init to host_cpuid (its diff);
    10.1-era kvm-cpu.c @12d1a768 still host_cpuid."""
    assert release(version).leaf_d_offsets == mode


@pytest.mark.parametrize("version, cet", [("10.2", False), ("11.0", True), ("7.2", False)])
def test_cet_msrs_from_11_0(version: str, cet: bool) -> None:
    """The 2025-12-27 pull for 11.0 brought the CET MSRs and subsections."""
    assert release(version).cet_msrs is cet


def test_subsections_each_release_knows() -> None:
    """cpu/msr_xfd, cpu/intel_amx_xtile: [PULL 19/22] 2022-03-08 (7.0); cpu/msr_pl0_ssp,
    cpu/cet, cpu/apx: [PULL 088, 089, 101/153] 2025-12-27 (11.0); mpx, avx512, xss, pkru:
    long before 6.0 (machine.c @06b43e082c6b)."""
    old = {"cpu/mpx", "cpu/avx512", "cpu/xss", "cpu/pkru"}
    amx = {"cpu/msr_xfd", "cpu/intel_amx_xtile"}
    cet = {"cpu/msr_pl0_ssp", "cpu/cet", "cpu/apx"}
    assert release("6.2").subsections == old
    assert release("7.0").subsections == old | amx == release("10.2").subsections
    assert release("11.0").subsections == old | amx | cet
    for s in qv.SUBSECTIONS:
        assert s.since in qv.RELEASES and s.source and "_needed" in s.needed


def test_amx_guest_sends_xfd_and_tile_subsections() -> None:
    """xfd_msrs_needed: CPUID_D_1_EAX_XFD; amx_xtile_needed: CPUID_7_0_EDX_AMX_TILE."""
    assert subsections_sent("8.2", AMX) == ["cpu/msr_xfd", "cpu/intel_amx_xtile"]
    assert subsections_sent("6.2", AMX) == []  # 6.2 has neither subsection


def test_register_values_drive_the_old_subsections() -> None:
    """pkru_needed (pkru != 0), xss_needed (xss != 0), avx512_needed, mpx_needed."""
    assert subsections_sent("7.2", GuestState()) == []
    g = GuestState(pkru=0x55555554, xss=0x100, avx512_live=True, mpx_live=True)
    assert subsections_sent("7.2", g) == ["cpu/mpx", "cpu/avx512", "cpu/xss", "cpu/pkru"]


def test_cet_guest_in_stream_order() -> None:
    """vmstate_x86_cpu lists pl0_ssp, cet, apx in that order (11.0 pull)."""
    g = GuestState(frozenset({"cet-ss", "apxf"}), xss=0x1800, pl0_ssp=0x1000)
    assert subsections_sent("11.0", g) == ["cpu/xss", "cpu/msr_pl0_ssp", "cpu/cet", "cpu/apx"]
    assert subsections_sent("10.1", g) == ["cpu/xss"]
    assert subsections_sent("11.0", CET) == ["cpu/xss", "cpu/cet"]


def test_guest_state_from_qemu_fields() -> None:
    env = QemuEnv(pkru=4, xss=0x800, opmask=[0, 1] + [0] * 6)
    g = GuestState.of({"pku"}, env)
    assert (g.pkru, g.xss, g.avx512_live, g.mpx_live) == (4, 0x800, True, False)
    z = QemuEnv(zmm=[0] * 16 + [1] + [0] * 15)  # Hi16_ZMM only
    assert GuestState.of(set(), z).avx512_live
    y = QemuEnv(zmm=[(1 << 255)] * 16)  # YMM high halves only
    assert not GuestState.of(set(), y).avx512_live


OLD_ERROR = (
    "qemu-system-x86_64: error while loading state for instance 0x0 of device 'cpu'\n"
    "qemu-system-x86_64: load of migration failed: No such file or directory"
)


def test_older_destination_fails_the_load_with_qemus_two_lines() -> None:
    """vmstate_subsection_load -> -ENOENT (lookup), qemu_loadvm_section_start_full's
    error_report, process_incoming_migration_co's strerror: the same two lines as
    qemu-devel's ppc64 'cpu/bhrb' report (vmstate_subsection_load_bad cpu: cpu/bhrb/(lookup))."""
    assert load_error("6.2", ["cpu/msr_xfd", "cpu/intel_amx_xtile"]) == OLD_ERROR
    assert load_error("10.1", ["cpu/xss", "cpu/cet"]) == OLD_ERROR
    assert load_error("7.0", ["cpu/msr_xfd", "cpu/intel_amx_xtile"]) is None
    assert load_error("6.2", ["cpu/xss", "cpu/pkru"]) is None
    assert load_error("11.0", ["cpu/cet", "cpu/apx"]) is None


def test_chained_error_names_the_subsection_from_10_2() -> None:
    """Error-object conversion: "VM subsection '%s' in '%s' does not exist", prefixed by
    savevm.c and migration.c (release UNVERIFIED)."""
    msg = load_error("10.2", ["cpu/msr_pl0_ssp", "cpu/cet"])
    assert msg is not None and "\n" not in msg
    assert msg.endswith("VM subsection 'cpu/msr_pl0_ssp' in 'cpu' does not exist")
    assert "instance 0x0 of device 'cpu'" in msg and "No such file or directory" in msg


def test_every_fact_names_a_source() -> None:
    for name, f in qv.FACTS.items():
        assert f.since in qv.RELEASES, name
        assert len(f.source) > 30, name
