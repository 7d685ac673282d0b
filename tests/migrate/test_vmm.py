"""kvmfpu.migrate.vmm: VMM versions (vmm_of), what each version saves and puts, and the
QEMU stream check. Sources are named per test."""

from __future__ import annotations

import pytest

from kvmfpu.blob.errors import InputError
from kvmfpu.core import msrs as msr
from kvmfpu.kvm.system import Kvm
from kvmfpu.migrate.check import COMPATIBLE, INCOMPATIBLE, check
from kvmfpu.migrate.vmm import VMMS, Saved, guest_state, put, stream_error, vmm_of
from kvmfpu.qemu import guest_cpuid
from kvmfpu.qemu.env import QemuEnv
from kvmfpu.qemu.models import resolve
from kvmfpu.qemu.versions import NEWEST, GuestState

XSTATE = (msr.IA32_XSS, msr.IA32_XFD, msr.IA32_XFD_ERR, msr.IA32_U_CET, msr.IA32_S_CET, msr.IA32_PL0_SSP)


def test_names_alone_are_the_newest_modelled() -> None:
    assert set(VMMS) == {
        "qemu",
        "raw",
        "firecracker",
        "cloud-hypervisor",
        "crosvm",
        "raw-xsave",
        "raw-noperm",
    }
    assert vmm_of("qemu") is VMMS["qemu"] and VMMS["qemu"].version == NEWEST
    assert vmm_of("firecracker").version == "1.16.1"
    assert vmm_of("cloud-hypervisor").version == "53.0"
    assert vmm_of("raw").version is None and vmm_of(VMMS["crosvm"]) is VMMS["crosvm"]


@pytest.mark.parametrize(
    "spec, xsave2, perm, offsets",
    [
        ("qemu@6.0", False, False, "intel-fixed"),
        ("qemu@6.2", False, False, "kvm-supported"),
        ("qemu@7.0", True, True, "host-cpuid"),
        ("qemu@7.2.1", True, True, "host-cpuid"),
        ("qemu@11.0", True, True, "host-cpuid"),
    ],
)
def test_qemu_versions(spec: str, xsave2: bool, perm: bool, offsets: str) -> None:
    """kvmfpu.qemu.versions (7.0 AMX pull of 2022-03-08; fea4500841 in 6.1)."""
    v = vmm_of(spec)
    assert (v.name, v.by_field, v.xsave2, v.asks_amx_perm, v.leaf_d_offsets) == (
        "qemu",
        True,
        xsave2,
        perm,
        offsets,
    )
    assert v.label == f"qemu@{v.version}" and v.qemu is not None


def test_qemu_msr_list_per_version() -> None:
    """kvm_put_msrs: IA32_XSS when listed (has_msr_xss, every version); XFD/XFD_ERR with the
    guest's XFD from 7.0 ([PULL 19/22]); CET MSRs from 11.0 (2025-12-27 pull)."""

    def has(f: str) -> bool:
        return f in {"xfd", "shstk", "ibt"}

    assert vmm_of("qemu@6.2").msr_list(XSTATE, has) == [msr.IA32_XSS]
    assert vmm_of("qemu@10.2").msr_list(XSTATE, has) == [msr.IA32_XSS, msr.IA32_XFD, msr.IA32_XFD_ERR]
    newest = vmm_of("qemu").msr_list(XSTATE, has)
    assert (
        newest[:5] == [msr.IA32_XSS, msr.IA32_XFD, msr.IA32_XFD_ERR, msr.IA32_U_CET, msr.IA32_S_CET]
        and msr.IA32_PL3_SSP in newest
    )


@pytest.mark.parametrize(
    "spec, version, xsave2, xss",
    [
        ("firecracker@1.10", "1.10.0", False, False),
        ("firecracker@1.11.0", "1.11.0", False, False),
        ("firecracker@1.12", "1.12.0", True, False),
        ("firecracker@1.16.0", "1.16.0", True, False),
        ("firecracker@v1.16.1", "1.16.1", True, True),
    ],
)
def test_firecracker_versions(spec: str, version: str, xsave2: bool, xss: bool) -> None:
    """KVM_GET_XSAVE2 + AMX permission from v1.12.0 (PR #5065, CHANGELOG v1.12.0); IA32_XSS
    in SERIALIZABLE_MSR_RANGES from v1.16.1 (14e18e41b, backport PR #5973 of #5972)."""
    v = vmm_of(spec)
    assert (v.version, v.xsave2, v.asks_amx_perm, v.cpuid_from_source) == (version, xsave2, xsave2, True)
    assert v.put_order == ("cpuid", "sregs", "xsave", "xcrs", "msrs")
    assert v.msr_list(XSTATE, lambda f: True) == ([msr.IA32_XSS] if xss else [])


@pytest.mark.parametrize(
    "spec, xsave2, perm",
    [
        ("cloud-hypervisor@22", False, False),
        ("cloud-hypervisor@23.0", False, True),
        ("cloud-hypervisor@49", False, True),
        ("cloud-hypervisor@v50.0", True, True),
        ("cloud-hypervisor@53", True, True),
    ],
)
def test_cloud_hypervisor_versions(spec: str, xsave2: bool, perm: bool) -> None:
    """XSAVE2 with XsaveState.extra: PR #7534 (4b4954ff8), release notes v50.0; AMX
    permission with --cpus features=amx: 6b0df31e5, v23.0."""
    v = vmm_of(spec)
    assert (v.xsave2, v.asks_amx_perm, v.msrs, v.msr_short_count) == (xsave2, perm, "index-list", "skip")


@pytest.mark.parametrize(
    "spec, words",
    [
        ("qemu@5.2", ["unknown QEMU version", "6.2, 7.0"]),
        ("qemu@seven", ["unknown QEMU version"]),
        ("firecracker@2.0", ["unknown firecracker version", "1.16.1"]),
        ("cloud-hypervisor@60", ["unknown cloud-hypervisor version", "53.0"]),
        ("crosvm@1.0", ["crosvm has no modelled versions"]),
        ("raw@1", ["raw has no modelled versions"]),
        ("vmware@7", ["unknown VMM 'vmware'", "qemu, raw, firecracker"]),
    ],
)
def test_bad_vmm_specs_say_what_is_accepted(spec: str, words: list[str]) -> None:
    with pytest.raises(InputError) as info:
        vmm_of(spec)
    text = str(info.value)
    assert all(w in text for w in words) and "\n" not in text


def _spr_amx_state() -> GuestState:
    kvm = Kvm("sapphirerapids", "6.6")
    cpu = guest_cpuid.build(kvm, resolve("SapphireRapids"))
    assert {"xfd", "amx-tile"} <= cpu.features
    return guest_state(QemuEnv(), cpu.features, {})


def test_amx_guest_from_qemu_8_2_to_6_2_fails_the_load() -> None:
    """cpu/msr_xfd and cpu/intel_amx_xtile ([PULL 19/22], 7.0) are sent for an AMX guest;
    QEMU 6.2 does not know them: vmstate_subsection_load -ENOENT, QEMU's two lines."""
    g = _spr_amx_state()
    err = stream_error(vmm_of("qemu@8.2"), vmm_of("qemu@6.2"), g)
    assert err == (
        "qemu-system-x86_64: error while loading state for instance 0x0 of device "
        "'cpu'\nqemu-system-x86_64: load of migration failed: No such file or directory"
    )
    assert stream_error(vmm_of("qemu@8.2"), vmm_of("qemu@7.0"), g) is None
    assert stream_error(vmm_of("qemu@6.2"), vmm_of("qemu@8.2"), g) is None


def test_cet_guest_from_11_0_to_older_qemu() -> None:
    """cpu/cet (11.0) is unknown to 10.x; the raw-buffer VMMs have no stream."""
    g = GuestState(frozenset({"cet-ss", "cet-ibt"}), xss=0x1800)
    assert stream_error(vmm_of("qemu"), vmm_of("qemu@10.1"), g) is not None
    chained = stream_error(vmm_of("qemu"), vmm_of("qemu@10.2"), g)
    assert chained is not None and "VM subsection 'cpu/cet' in 'cpu'" in chained
    assert stream_error(vmm_of("qemu"), vmm_of("qemu@11.0.1"), g) is None
    assert stream_error(vmm_of("firecracker"), vmm_of("firecracker@1.10"), g) is None


def test_cloud_hypervisor_skips_a_faulty_msr_where_firecracker_stops() -> None:
    """Cloud Hypervisor set_state (v49.0 hypervisor/src/kvm/mod.rs): on a short
    KVM_SET_MSRS count it warns "Detected faulty MSR" and sets the rest; Firecracker
    restore_state returns VcpuSetMsrsIncomplete. IA32_XFD 0x40000 is refused on a vCPU
    without XFD (kvm_guest_supported_xfd, the model)."""
    kvm = Kvm("skylake-sp", "6.6")
    pairs = [(msr.IA32_XSS, 0), (msr.IA32_XFD, 0x40000), (msr.IA32_XFD_ERR, 0)]
    for spec, fatal in (("cloud-hypervisor", False), ("firecracker", True)):
        v = kvm.create_vm().create_vcpu()
        cpuid = kvm.get_supported_cpuid()
        v.set_cpuid2(cpuid)
        buf = v.get_xsave()
        vmm = vmm_of(spec)
        steps = put(vmm, v, Saved(buf, "KVM_GET_XSAVE", 1, {}, cpuid), cpuid, pairs, {})
        last = steps[-1]
        assert last.name == "KVM_SET_MSRS" and last.fatal is fatal
        assert "IA32_XFD=0x40000" in last.detail
        assert ("Detected faulty MSR" in last.detail) is not fatal


@pytest.mark.parametrize(
    "src, dst, guest",
    [("zen3@6.6", "skylake-sp@6.6", "EPYC-Milan"), ("skylake-sp@6.6", "zen3@6.6", "EPYC-Milan")],
)
def test_qemu_6_0_between_amd_and_intel_loses_pkru(src: str, dst: str, guest: str) -> None:
    """Before fea4500841 (6.1) both ends used X86XSaveArea's PKRU at 0xA80; AMD keeps it at
    0x980. From 6.1 each end reads its host's offsets and the guest keeps its PKRU."""
    old = check(src, dst, guest, vmm=vmm_of("qemu@6.0"), advise=False)
    assert old.verdict == INCOMPATIBLE and [d[0] for d in old.lost] == ["pkru"]
    new = check(src, dst, guest, vmm=vmm_of("qemu@6.2"), advise=False)
    # The registers arrive whole from 6.1; the verdict still counts the CPU features an AMD
    # model loses on Intel (and back), which is a different finding.
    assert not new.lost and not any(f.level == "error" and f.stage != "cpu" for f in new.findings)


def test_qemu_6_0_same_intel_host_is_unaffected() -> None:
    """On Intel the hard-coded layout is the host's (Skylake-SP leaf 0xD)."""
    r = check("skylake-sp@6.6", "skylake-sp@6.6", "Skylake-Server-v5", vmm=vmm_of("qemu@6.0"), advise=False)
    assert r.verdict == COMPATIBLE


@pytest.mark.parametrize(
    "spec, fails",
    [("qemu", False), ("cloud-hypervisor@53", False), ("cloud-hypervisor@52", True), ("firecracker", True)],
)
def test_kvm_set_xcrs_on_a_host_without_xsave(spec: str, fails: bool) -> None:
    """kvm_vcpu_ioctl_x86_set_xcrs returns -EINVAL without host XSAVE (2d5b5a665508, the
    model). QEMU checks has_xcrs (KVM_CAP_XCRS); Cloud Hypervisor skips XCRS from v53.0
    (4b671954a); Firecracker's restore_state calls set_xcrs always."""
    kvm = Kvm("nehalem", "6.6")
    v = kvm.create_vm().create_vcpu()
    cpuid = kvm.get_supported_cpuid()
    v.set_cpuid2(cpuid)
    steps = put(vmm_of(spec), v, Saved(v.get_xsave(), "KVM_GET_XSAVE", 1, {}, cpuid), cpuid, [], {})
    xcrs = next(s for s in steps if s.name == "KVM_SET_XCRS")
    assert (xcrs.error is not None and xcrs.error.errno_name == "EINVAL") is fails
    assert steps[-1].name == ("KVM_SET_XCRS" if fails else "KVM_SET_MSRS")
