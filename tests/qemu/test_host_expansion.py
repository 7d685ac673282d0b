"""Proof 2: QEMU's ``host`` CPU model under KVM, against libvirt's captures of real hosts.

Data: tests/cpus/data/cputestdata/<CPU>.json, made by tools/import_cputestdata.py from
libvirt/libvirt tests/cputestdata (each file names the libvirt files and commits it was read
from): the host's CPUID dump, and QEMU's ``query-cpu-model-expansion`` of ``host`` there
(``props``) or, for the oldest captures, ``qom-get host feature-words``.

For every host, ``host_expansion(Kvm(dump, kernel))`` is compared feature by feature with the
capture, over the CPUID-word properties both sides name (older QEMUs lacked newer names: the
intersection is compared; MSR-word properties -- ``vmx-*``, ARCH_CAPABILITIES bits -- are not
modelled, see kvmfpu.qemu.host_cpu). The kernel and QEMU versions of a capture are not
recorded; :data:`KERNEL` picks a plausible modelled kernel per host. Every disagreement is
listed in :data:`EXPLAINED` with its category and reason; an unexplained disagreement fails,
and so does an explanation that no longer matches a disagreement.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from kvmfpu import cpus
from kvmfpu.kvm.system import Kvm
from kvmfpu.qemu import features as F
from kvmfpu.qemu.host_cpu import (
    FIXUPS,
    host_expansion,
    supported_features,
    supported_words,
)

DATA = Path(__file__).resolve().parents[1] / "cpus" / "data" / "cputestdata"
TOOL = Path(__file__).resolve().parents[2] / "tools" / "import_cputestdata.py"
REGS = ("eax", "ebx", "ecx", "edx")

HOSTS = sorted(p.stem for p in DATA.glob("*.json"))

# -- the kernel each capture is compared at ---------------------------------------------------
# Captures from QEMUs that name the 10.x features (props of ~250 and more) are taken with a
# 6.12 kernel; the 9950X one (prefetchi, srso-user-kernel-no: KVM 6.13 and later) with 6.18;
# every older capture with the oldest kernel modelled, 5.15 (their kernels were older still:
# what KVM learned between them and 5.15 is explained below as "kernel").
KERNEL: dict[str, str] = {
    **{
        h: "6.12"
        for h in (
            "Core-i7-1270P",
            "Core-i7-1365U",
            "EPYC-9334-32-Core",
            "Xeon-6731E",
            "Xeon-6788P",
            "Xeon-Bronze-3408U",
            "Xeon-E3-1270-v5",
            "Xeon-Gold-6152",
            "Xeon-Gold-6530",
            "Xeon-Silver-4214R",
            "Xeon-w7-3465X",
        )
    },
    "Ryzen-9-9950X-16-Core": "6.18",
}
DEFAULT_KERNEL = "5.15"

# -- explanations -------------------------------------------------------------------------------
KERNEL_AT_CAPTURE = "kernel"  # the capture's kernel was older (or newer) than the one modelled
KERNEL_PARAMETER = "kernel parameter"
FIRMWARE = "firmware/microcode"  # host state that a CPUID dump does not carry
QEMU_VERSION = "QEMU version"
MODEL_GAP = "kvmfpu model gap"  # a KVM behaviour the model does not follow yet
UNVERIFIED = "UNVERIFIED"
CATEGORIES = (KERNEL_AT_CAPTURE, KERNEL_PARAMETER, FIRMWARE, QEMU_VERSION, MODEL_GAP, UNVERIFIED)

Why = tuple[str, str]

PV = (
    KERNEL_AT_CAPTURE,
    "a KVM paravirtual feature (0x4000_0001 EAX) the capture's kernel did not offer "
    "yet (PV_TLB_FLUSH, PV_SEND_IPI, POLL_CONTROL, PV_SCHED_YIELD, ASYNC_PF_INT came with 4.16 .. 5.8)",
)
PDCM = (
    KERNEL_AT_CAPTURE,
    "KVM offers PDCM only once it virtualises PERF_CAPABILITIES (vmx_set_cpu_caps, "
    "with a vPMU); the capture's kernel predates that",
)
PDCM_HYBRID = (
    MODEL_GAP,
    "hybrid host (CPUID 7 EDX bit 15): perf exports no PMU capabilities for hybrid "
    "PMUs, so KVM has no vPMU and leaves PDCM clear; the model's CPUID still sets it (its MSR "
    "list already knows: _pmu_present)",
)
UMIP = (
    KERNEL_AT_CAPTURE,
    "the host has no UMIP; KVM emulates it on VMX (descriptor-table exiting) since "
    "Linux 4.16, newer than the capture's kernel",
)
VMX = (KERNEL_PARAMETER, "kvm_intel nested=0, the default before Linux 4.20: KVM does not offer VMX")
SVM = (
    UNVERIFIED,
    "svm off: kvm_amd nested=0 or a kernel that did not offer SVM (the capture's QEMU "
    "still reported npt/nrip-save, so it predates feature_dependencies)",
)
NESTED_SVM = (
    KERNEL_AT_CAPTURE,
    "nested SVM feature KVM offers in 0x8000_000A since 5.17 .. 6.7 "
    "(VGIF/LBRV/PAUSEFILTER/PFTHRESHOLD/TSCRATEMSR/V_VMSAVE_VMLOAD; VMCBCLEAN and "
    "FLUSHBYASID unconditionally in 6.7), newer than the capture's kernel (the model "
    "offers them from 5.15 on: UNVERIFIED for 5.15 itself)",
)
PERFCTR_CORE = (
    KERNEL_AT_CAPTURE,
    "KVM offers PERFCTR_CORE (AMD core counters) since Linux 5.x, newer than the capture's kernel",
)
SPEC_AMD_BITS = (
    KERNEL_AT_CAPTURE,
    "KVM sets the AMD IBPB/STIBP/SSBD bits of 0x8000_0008 EBX from Intel's "
    "SPEC_CTRL features since Linux 5.x; the capture's kernel did not",
)
ARCH_CAPS = (
    KERNEL_AT_CAPTURE,
    "the host does not enumerate ARCH_CAPABILITIES (or is AMD/Hygon); the capture's kernel did "
    "not yet emulate the MSR on every host (KVM_GET_MSR_INDEX_LIST without 0x10a: QEMU clears "
    "arch-capabilities, kvm.c has_msr_arch_capabs); UNVERIFIED which kernel",
)
XSAVES_OLD = (
    KERNEL_AT_CAPTURE,
    "the capture's kernel did not offer XSAVES to guests; UNVERIFIED which release changed it for this host",
)
DS_PEBS = (
    KERNEL_AT_CAPTURE,
    "KVM offers DS and DTES64 with guest PEBS (vmx_pebs_supported: PEBS baseline and PEBS via EPT), "
    "which the capture's kernel did not have yet",
)
SBPB = (
    FIRMWARE,
    "the kernel synthesises SBPB and IBPB_BRTYPE on Zen 4 when the microcode accepts a "
    "PRED_CMD SBPB write (bsp_init_amd); not in the CPUID dump",
)
TSC_DEADLINE = (
    UNVERIFIED,
    "the capture's KVM/QEMU did not offer tsc-deadline "
    "(KVM_CAP_TSC_DEADLINE_TIMER, Linux 3.2, or QEMU's in-kernel irqchip check)",
)
ARAT = (
    QEMU_VERSION,
    "the capture's QEMU predates kvm_arch_get_supported_cpuid's leaf 6 ARAT fix-up "
    "(UNVERIFIED which release)",
)
RDTSCP = (
    UNVERIFIED,
    "rdtscp off in an old AMD capture (old kernels offered RDTSCP on SVM only with "
    "their rdtscp_supported hook); not verified",
)
ASYNCPF_INT = (
    UNVERIFIED,
    "kvm-asyncpf-int off in a capture with a kernel newer than 5.8 (where KVM "
    "offers ASYNC_PF_INT); not verified (a distribution kernel without it?)",
)
MPX = (UNVERIFIED, "the capture's kernel offered MPX; the model's KvmCaps.mpx is off for this host")

PV_ALL = "kvm-asyncpf-int kvm-asyncpf-vmexit kvm-poll-control kvm-pv-ipi kvm-pv-sched-yield kvm-pv-tlb-flush"
NSVM = "flushbyasid lbrv pause-filter pfthreshold tsc-scale vmcb-clean"
PKU = (
    KERNEL_PARAMETER,
    "pku off: a host kernel without OSPKE (nopku, or CONFIG_X86_INTEL_MEMORY_PROTECTION_KEYS=n); "
    "KVM offers PKU only then",
)
RDPID = (KERNEL_AT_CAPTURE, "KVM offered RDPID after the capture's kernel")
SHA = (UNVERIFIED, "sha-ni off in this old capture although the host has SHA; not verified")
ARCH_CAPS_ZEN5 = (
    UNVERIFIED,
    "arch-capabilities off on this Zen 5 capture, on in the Zen 4 EPYC-9334 one; "
    "KVM_GET_MSR_INDEX_LIST without MSR 0x10a there?",
)
ARCH_CAPS_8268 = (
    UNVERIFIED,
    "arch-capabilities off while the capture has ibrs-all/rdctl-no on: an older QEMU's handling of "
    "the MSR word",
)

#: (host, why, the features it explains), one line per host and reason.
TABLE: tuple[tuple[str, Why, str], ...] = (
    ("A10-5800K", PV, PV_ALL),
    ("A10-5800K", NESTED_SVM, NSVM + " svme-addr-chk"),
    ("A10-5800K", SVM, "svm"),
    ("A10-5800K", PERFCTR_CORE, "perfctr-core"),
    ("A10-5800K", RDTSCP, "rdtscp"),
    ("A10-5800K", TSC_DEADLINE, "tsc-deadline"),
    ("Cooperlake", PDCM, "pdcm"),
    ("Core-i5-2500", PV, PV_ALL),
    ("Core-i5-2500", PDCM, "pdcm"),
    ("Core-i5-2500", UMIP, "umip"),
    ("Core-i5-2500", VMX, "vmx"),
    ("Core-i5-6600", PV, PV_ALL),
    ("Core-i5-6600", PDCM, "pdcm"),
    ("Core-i5-6600", VMX, "vmx"),
    ("Core-i7-1270P", PDCM_HYBRID, "pdcm"),
    ("Core-i7-1365U", PDCM_HYBRID, "pdcm"),
    ("Core-i7-2600", ARAT, "arat"),
    ("Core-i7-2600", PDCM, "pdcm"),
    ("Core-i7-2600", UMIP, "umip"),
    ("Core-i7-2600", VMX, "vmx"),
    ("Core-i7-4510U", PDCM, "pdcm"),
    ("Core-i7-4510U", UMIP, "umip"),
    ("Core-i7-5600U-ibrs", PDCM, "pdcm"),
    ("Core-i7-5600U-ibrs", UMIP, "umip"),
    ("Core-i7-5600U", PDCM, "pdcm"),
    ("Core-i7-5600U", UMIP, "umip"),
    ("Core-i7-7600U", SPEC_AMD_BITS, "amd-ssbd ibpb"),
    ("Core-i7-7600U", ARCH_CAPS, "arch-capabilities"),
    ("Core-i7-7600U", PDCM, "pdcm"),
    ("Core-i7-7700", PDCM, "pdcm"),
    ("Core-i7-7700", UMIP, "umip"),
    ("Core-i7-7700", VMX, "vmx"),
    ("Core-i7-7700", XSAVES_OLD, "xsaves"),
    ("Core-i7-8550U", SPEC_AMD_BITS, "amd-ssbd ibpb"),
    ("Core-i7-8550U", PDCM, "pdcm"),
    ("Core-i7-8700", SPEC_AMD_BITS, "ibpb"),
    ("Core-i7-8700", PDCM, "pdcm"),
    ("Core-i7-8700", VMX, "vmx"),
    ("EPYC-7502-32-Core", NESTED_SVM, NSVM),
    ("EPYC-7601-32-Core-ibpb", NESTED_SVM, NSVM),
    ("EPYC-7601-32-Core-ibpb", SVM, "svm"),
    ("EPYC-7601-32-Core-ibpb", PERFCTR_CORE, "perfctr-core"),
    ("EPYC-7601-32-Core-ibpb", RDTSCP, "rdtscp"),
    ("EPYC-7601-32-Core-ibpb", XSAVES_OLD, "xsaves"),
    ("EPYC-7601-32-Core", NESTED_SVM, NSVM),
    ("EPYC-7601-32-Core", SVM, "svm"),
    ("EPYC-7601-32-Core", PERFCTR_CORE, "perfctr-core"),
    ("EPYC-7601-32-Core", XSAVES_OLD, "xsaves"),
    ("EPYC-7713-64-Core", NESTED_SVM, NSVM),
    ("EPYC-9334-32-Core", SBPB, "ibpb-brtype sbpb"),
    ("Hygon-C86-7185-32-core", NESTED_SVM, NSVM),
    ("Hygon-C86-7185-32-core", ARCH_CAPS, "arch-capabilities"),
    ("Hygon-C86-7185-32-core", PV, "kvm-pv-ipi kvm-pv-tlb-flush"),
    ("Hygon-C86-7185-32-core", SVM, "svm"),
    ("Hygon-C86-7185-32-core", PERFCTR_CORE, "perfctr-core"),
    ("Hygon-C86-7185-32-core", XSAVES_OLD, "xsaves"),
    ("Ice-Lake-Server", SPEC_AMD_BITS, "amd-ssbd ibpb"),
    ("Ice-Lake-Server", DS_PEBS, "ds dtes64"),
    ("Ice-Lake-Server", MPX, "mpx"),
    ("Ice-Lake-Server", PDCM, "pdcm"),
    ("Ice-Lake-Server", RDPID, "rdpid"),
    ("Ice-Lake-Server", VMX, "vmx"),
    ("Ryzen-5-5500U-with-Radeon-Graphics", NESTED_SVM, NSVM + " v-vmsave-vmload vgif"),
    ("Ryzen-7-1800X-Eight-Core", NESTED_SVM, NSVM),
    ("Ryzen-7-1800X-Eight-Core", PERFCTR_CORE, "perfctr-core"),
    ("Ryzen-7-1800X-Eight-Core", XSAVES_OLD, "xsaves"),
    ("Ryzen-7-1800X-Eight-Core", SHA, "sha-ni"),
    ("Ryzen-9-3900X-12-Core", NESTED_SVM, NSVM),
    ("Ryzen-9-9950X-16-Core", ARCH_CAPS_ZEN5, "arch-capabilities"),
    ("Xeon-E3-1225-v5", SPEC_AMD_BITS, "ibpb"),
    ("Xeon-E3-1225-v5", PV, "kvm-pv-tlb-flush"),
    ("Xeon-E3-1225-v5", PDCM, "pdcm"),
    ("Xeon-E3-1225-v5", UMIP, "umip"),
    ("Xeon-E3-1225-v5", VMX, "vmx"),
    ("Xeon-E3-1225-v5", XSAVES_OLD, "xsaves"),
    ("Xeon-E3-1245-v5", PDCM, "pdcm"),
    ("Xeon-E3-1245-v5", UMIP, "umip"),
    ("Xeon-E5-2609-v3", SPEC_AMD_BITS, "ibpb stibp"),
    ("Xeon-E5-2609-v3", PDCM, "pdcm"),
    ("Xeon-E5-2609-v3", UMIP, "umip"),
    ("Xeon-E5-2609-v3", VMX, "vmx"),
    ("Xeon-E5-2623-v4", SPEC_AMD_BITS, "ibpb stibp"),
    ("Xeon-E5-2623-v4", PDCM, "pdcm"),
    ("Xeon-E5-2623-v4", UMIP, "umip"),
    ("Xeon-E5-2623-v4", VMX, "vmx"),
    ("Xeon-E5-2630-v4", PDCM, "pdcm"),
    ("Xeon-E5-2630-v4", UMIP, "umip"),
    ("Xeon-E5-2630-v4", VMX, "vmx"),
    ("Xeon-E5-2650-v4", PDCM, "pdcm"),
    ("Xeon-E5-2650-v4", UMIP, "umip"),
    ("Xeon-E5-2650-v4", VMX, "vmx"),
    ("Xeon-E7-4830", PDCM, "pdcm"),
    ("Xeon-E7-4830", UMIP, "umip"),
    ("Xeon-E7-4830", VMX, "vmx"),
    ("Xeon-E7-8890", PDCM, "pdcm"),
    ("Xeon-E7-8890", UMIP, "umip"),
    ("Xeon-E7-8890", VMX, "vmx"),
    ("Xeon-Gold-5115", ARCH_CAPS, "arch-capabilities"),
    ("Xeon-Gold-5115", SPEC_AMD_BITS, "ibpb stibp"),
    ("Xeon-Gold-5115", PDCM, "pdcm"),
    ("Xeon-Gold-5115", PKU, "pku"),
    ("Xeon-Gold-5115", UMIP, "umip"),
    ("Xeon-Gold-5115", VMX, "vmx"),
    ("Xeon-Gold-5115", XSAVES_OLD, "xsaves"),
    ("Xeon-Gold-6130", SPEC_AMD_BITS, "amd-ssbd ibpb"),
    ("Xeon-Gold-6130", PDCM, "pdcm"),
    ("Xeon-Gold-6148", PDCM, "pdcm"),
    ("Xeon-Gold-6148", PKU, "pku"),
    ("Xeon-Gold-6148", UMIP, "umip"),
    ("Xeon-Gold-6148", VMX, "vmx"),
    ("Xeon-Gold-6148", XSAVES_OLD, "xsaves"),
    ("Xeon-Gold-6530", ASYNCPF_INT, "kvm-asyncpf-int"),
    ("Xeon-Platinum-8268", SPEC_AMD_BITS, "amd-ssbd ibpb"),
    ("Xeon-Platinum-8268", ARCH_CAPS_8268, "arch-capabilities"),
    ("Xeon-Platinum-8268", PDCM, "pdcm"),
    ("Xeon-Platinum-8268", VMX, "vmx"),
    ("Xeon-Platinum-9242", PDCM, "pdcm"),
    ("Xeon-W3520", ARAT, "arat"),
    ("Xeon-W3520", PDCM, "pdcm"),
    ("Xeon-W3520", TSC_DEADLINE, "tsc-deadline"),
    ("Xeon-W3520", UMIP, "umip"),
    ("Xeon-W3520", VMX, "vmx"),
    ("Xeon-w7-3465X", ASYNCPF_INT, "kvm-asyncpf-int"),
)


def _explained() -> dict[str, dict[str, Why]]:
    out: dict[str, dict[str, Why]] = {}
    for host, why, names in TABLE:
        for n in names.split():
            assert n not in out.get(host, {}), (host, n)
            out.setdefault(host, {})[n] = why
    return out


#: host -> feature -> (category, reason): every disagreement with a capture.
EXPLAINED: dict[str, dict[str, Why]] = _explained()


# -- comparison -----------------------------------------------------------------------------------
@cache
def host_file(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / f"{name}.json").read_text())
    return data


def recorded(name: str) -> tuple[dict[str, bool], set[str]]:
    """The capture's feature props (canonical names) and the names it has that QEMU's table
    here does not register (dropped or renamed since)."""
    exp = host_file(name)["qemu_host_expansion"]
    out: dict[str, bool] = {}
    unknown: set[str] = set()
    if "props" in exp:
        for raw, value in exp["props"].items():
            try:
                c = F.canonical(raw)
            except F.UnknownFeature:
                unknown.add(raw)
                continue
            assert out.get(c, value) == value, f"{name}: two spellings of {c} disagree"
            out[c] = value
    else:
        by_reg = {(w.leaf, w.subleaf, w.reg): w for w in F.WORDS if w.leaf is not None}
        for leaf, sub, reg, value in exp["feature_words"]:
            w = by_reg.get((int(leaf, 16), int(sub, 16), REGS.index(reg)))
            if w is None:
                continue
            for n in w.names:
                if n is not None and n not in out:
                    _, m = F.mask(n)
                    out[n] = int(value, 16) & m == m
    return out, unknown


@cache
def comparison(name: str) -> tuple[dict[str, tuple[bool, bool]], int, int]:
    """{feature: (captured, modelled)} for the disagreements; features compared; names of
    the capture not compared (unknown to the table here, or MSR-word features)."""
    kvm = Kvm(cpus.load(DATA / f"{name}.json"), KERNEL.get(name, DEFAULT_KERNEL))
    mine = host_expansion(kvm)
    rec, unknown = recorded(name)
    compared = {n: v for n, v in rec.items() if n in mine}
    bad = {n: (v, mine[n]) for n, v in compared.items() if v != mine[n]}
    return bad, len(compared), len(rec) - len(compared) + len(unknown)


def test_hosts_imported() -> None:
    assert len(HOSTS) >= 45
    assert set(EXPLAINED) <= set(HOSTS)


@pytest.mark.parametrize("name", HOSTS)
def test_host_file_loads_and_names_its_sources(name: str) -> None:
    host = cpus.load(DATA / f"{name}.json")
    data = host_file(name)
    assert data["source"]["kind"] == "libvirt" and len(data["source"]["commit"]) == 40
    src = data["qemu_host_expansion"]["source"]
    assert src["repo"] == "libvirt/libvirt" and src["path"].endswith(f"x86_64-cpuid-{name}.json")
    assert ("props" in data["qemu_host_expansion"]) != ("feature_words" in data["qemu_host_expansion"])
    assert host.vendor in ("GenuineIntel", "AuthenticAMD", "HygonGenuine")
    for leaf, sub, reg, mask in data.get("disabled", []):
        assert reg in REGS and int(mask, 16) and int(leaf, 16) >= 0 and int(sub, 16) >= 0


@pytest.mark.parametrize("name", HOSTS)
def test_host_expansion_matches_the_capture(name: str) -> None:
    bad, compared, _ = comparison(name)
    assert compared >= 150
    why = EXPLAINED.get(name, {})
    unexplained = {n: v for n, v in bad.items() if n not in why}
    assert not unexplained, f"{name}: (captured, modelled) {unexplained}"
    stale = set(why) - set(bad)
    assert not stale, f"{name}: explained but agreeing now: {sorted(stale)}"
    for category, reason in why.values():
        assert category in CATEGORIES and reason
    # The direction each explanation claims: only MPX and SBPB were on in the capture.
    for n, w in why.items():
        assert bad[n] == ((True, False) if w in (MPX, SBPB) else (False, True)), (name, n, bad[n])


def _bit(host: cpus.HostModel, leaf: int, sub: int, reg: int, bit: int) -> bool:
    return bool(host.cpuid(leaf, sub)[reg] >> bit & 1)


#: Facts of the CPUID dump an explanation rests on: why -> predicate over the host.
EVIDENCE: dict[Why, Any] = {
    UMIP: lambda h: not _bit(h, 7, 0, 2, 2),  # the host lacks UMIP: KVM's emulation it is
    PDCM_HYBRID: lambda h: _bit(h, 7, 0, 3, 15),  # a hybrid part
    VMX: lambda h: h.vendor == "GenuineIntel" and _bit(h, 1, 0, 2, 5),
    SVM: lambda h: h.vendor != "GenuineIntel" and _bit(h, 0x8000_0001, 0, 2, 2),
    NESTED_SVM: lambda h: h.vendor != "GenuineIntel",
    SPEC_AMD_BITS: lambda h: h.vendor == "GenuineIntel",
    SBPB: lambda h: not _bit(h, 0x8000_0021, 0, 0, 27) and not _bit(h, 0x8000_0021, 0, 0, 28),
    SHA: lambda h: _bit(h, 7, 0, 1, 29),
    MPX: lambda h: _bit(h, 7, 0, 1, 14),
    PKU: lambda h: _bit(h, 7, 0, 2, 3),
    ARCH_CAPS: lambda h: not _bit(h, 7, 0, 3, 29) or h.vendor != "GenuineIntel",
}


def test_explanations_rest_on_the_dumps() -> None:
    for name, why in EXPLAINED.items():
        host = cpus.load(DATA / f"{name}.json")
        for n, w in why.items():
            if w in EVIDENCE:
                assert EVIDENCE[w](host), (name, n, w[1])


def agreement() -> dict[str, Any]:
    rows = {h: comparison(h) for h in HOSTS}
    return {
        "hosts": len(rows),
        "hosts_fully_agreeing": sum(1 for bad, _, _ in rows.values() if not bad),
        "hosts_agreeing_after_explanations": sum(
            1 for h, (bad, _, _) in rows.items() if set(bad) <= set(EXPLAINED.get(h, {}))
        ),
        "features_compared": sum(c for _, c, _ in rows.values()),
        "features_agreeing": sum(c - len(bad) for bad, c, _ in rows.values()),
        "names_not_compared": sum(u for _, _, u in rows.values()),
        "by_category": {
            c: sum(1 for h in EXPLAINED for why in EXPLAINED[h].values() if why[0] == c) for c in CATEGORIES
        },
    }


def test_agreement_figures(capsys: pytest.CaptureFixture[str]) -> None:
    fig = agreement()
    with capsys.disabled():
        print(f"\nhost expansion vs libvirt captures: {json.dumps(fig)}")
    assert fig["hosts_agreeing_after_explanations"] == fig["hosts"]
    assert fig["features_agreeing"] / fig["features_compared"] > 0.97
    assert fig["hosts_fully_agreeing"] >= 0


# -- the functions themselves ---------------------------------------------------------------------
def test_fixups_on_a_model() -> None:
    kvm = Kvm(cpus.load(DATA / "Xeon-Gold-6152.json"), "6.12")
    raw = {(e.function, e.index): e for e in kvm.get_supported_cpuid()}
    words = supported_words(kvm)
    assert words["FEAT_1_ECX"] & (1 << 31) and not raw[(1, 0)].ecx & (1 << 31)  # hypervisor
    assert words["FEAT_1_ECX"] >> 24 & 1  # tsc-deadline (KVM_CAP_TSC_DEADLINE_TIMER)
    assert words["FEAT_6_EAX"] >> 2 & 1  # arat
    assert words["FEAT_8000_0001_ECX"] >> 22 & 1  # topoext, an Intel host notwithstanding
    assert words["FEAT_KVM_HINTS"] & 1  # kvm-hint-dedicated supported ...
    exp = host_expansion(kvm)
    assert not exp["kvm-hint-dedicated"] and not exp["topoext"]  # ... but no_autoenable
    assert not exp["invtsc"] and host_expansion(kvm, migratable=False)["invtsc"]
    assert words["FEAT_XSAVE_XCR0_LO"] == kvm.get_device_attr(0, 0) & 0xFFFF_FFFF
    assert exp["x2apic"] and not host_expansion(kvm, irqchip="off")["x2apic"]
    assert host_expansion(kvm, irqchip="split")["kvm-msi-ext-dest-id"] and not exp["kvm-msi-ext-dest-id"]
    assert "FEAT_VMX_BASIC" not in words and not any(n.startswith("vmx-") for n in exp)
    assert supported_features(kvm) >= {n for n, on in exp.items() if on}
    assert {(leaf, reg) for leaf, _, reg, _ in FIXUPS} >= {(1, 2), (1, 3), (7, 1), (0xD, 0)}
    with pytest.raises(ValueError):
        supported_words(kvm, irqchip="maybe")


def test_dependencies_clear_dependents() -> None:
    kvm = Kvm(cpus.load(DATA / "Xeon-Gold-6152.json"), "6.12")
    exp = host_expansion(kvm)
    for feature, needed in F.DEPENDENCIES:
        if feature in exp and needed in exp and not exp[needed]:
            assert not exp[feature], (feature, needed)


# -- this machine -----------------------------------------------------------------------------------
def _kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


@pytest.mark.skipif(not _kvm_usable(), reason="no usable /dev/kvm")
def test_real_device_equals_its_model() -> None:
    import kvmfpu

    real = kvmfpu.open_kvm()
    model = kvmfpu.model_of_running_host()
    try:
        mine, theirs = host_expansion(real), host_expansion(model)
        assert {n: (v, theirs[n]) for n, v in mine.items() if theirs[n] != v} == {}
        assert supported_words(real) == supported_words(model)
    finally:
        real.close()


def _qmp(*commands: dict[str, Any]) -> Iterator[dict[str, Any]]:
    script = "".join(json.dumps(c) + "\n" for c in ({"execute": "qmp_capabilities"}, *commands))
    proc = subprocess.run(
        [
            "qemu-system-x86_64",
            "-machine",
            "none",
            "-accel",
            "kvm",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
            "stdio",
        ],
        input=script + json.dumps({"execute": "quit"}) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        pytest.skip(f"qemu-system-x86_64 does not start with -accel kvm here: {proc.stderr.strip()[:200]}")
    for line in proc.stdout.splitlines():
        msg = json.loads(line)
        if "return" in msg or "error" in msg:
            yield msg


# QEMU 7.2 (Debian's) predates two of the fix-ups of the kvm.c read: the host ERMS (leaf 7 EBX)
# and FSRM (leaf 7 EDX) bits that KVM_GET_SUPPORTED_CPUID leaves out. Their difference is
# asserted below to be exactly that.
QEMU_72_MISSING_FIXUPS = {"erms": (7, 0, 1, 9), "fsrm": (7, 0, 3, 4)}


@pytest.mark.skipif(
    not _kvm_usable() or shutil.which("qemu-system-x86_64") is None,
    reason="needs /dev/kvm and qemu-system-x86_64",
)
def test_real_qemu_query_cpu_model_expansion() -> None:
    import kvmfpu
    from kvmfpu.native.hostcpuid import this_host

    replies = list(
        _qmp(
            {"execute": "query-version"},
            {
                "execute": "query-cpu-model-expansion",
                "arguments": {"type": "full", "model": {"name": "host"}},
            },
        )
    )
    version, expansion = replies[1]["return"], replies[2]
    assert "return" in expansion, expansion
    theirs: dict[str, bool] = {}
    for raw, value in expansion["return"]["model"]["props"].items():
        if isinstance(value, bool) and F.registered(raw):
            theirs[F.canonical(raw)] = value
    real = kvmfpu.open_kvm()
    try:
        mine = host_expansion(real)
        raw_cpuid = {(e.function, e.index): e for e in real.get_supported_cpuid()}
    finally:
        real.close()
    compared = {n: v for n, v in theirs.items() if n in mine}
    assert len(compared) >= 150
    bad = {n: (v, mine[n]) for n, v in compared.items() if v != mine[n]}
    if (version["qemu"]["major"], version["qemu"]["minor"]) < (8, 0):
        host = this_host()
        for n in set(bad) & set(QEMU_72_MISSING_FIXUPS):
            leaf, sub, reg, bit = QEMU_72_MISSING_FIXUPS[n]
            e = raw_cpuid.get((leaf, sub))
            kvm_bit = e is not None and (e.eax, e.ebx, e.ecx, e.edx)[reg] >> bit & 1
            assert bad[n] == (False, True) and not kvm_bit and host.cpuid(leaf, sub)[reg] >> bit & 1
            del bad[n]
    assert bad == {}, f"(QEMU {version['qemu']}, modelled): {bad}"


# -- the import tool ----------------------------------------------------------------------------------
def _tool() -> Any:
    spec = importlib.util.spec_from_file_location("import_cputestdata", TOOL)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["import_cputestdata"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_tool_reads_libvirt_files(tmp_path: Path) -> None:
    tool = _tool()
    base = tmp_path / "x86_64-cpuid-Test-CPU"
    base.with_suffix(".xml").write_text(
        "<!-- Test CPU -->\n<cpudata arch='x86'>\n"
        "  <cpuid eax_in='0x00000000' ecx_in='0x00' eax='0x0000000d' ebx='0x756e6547' ecx='0x6c65746e'"
        " edx='0x49656e69'/>\n"
        "  <cpuid eax_in='0x00000001' ecx_in='0x00' eax='0x000306c3' ebx='0x00100800' ecx='0x7ffafbff'"
        " edx='0xbfebfbff'/>\n"
        # a CPU with XSAVE has leaf 0xD (the host-dump check refuses one without it)
        "  <cpuid eax_in='0x0000000d' ecx_in='0x00' eax='0x00000007' ebx='0x00000340' ecx='0x00000340'"
        " edx='0x00000000'/>\n"
        "  <msr index='0x10a' edx='0x00000000' eax='0x0000000c'/>\n</cpudata>\n"
    )
    Path(f"{base}.json").write_text(
        json.dumps(
            {
                "return": {
                    "model": {
                        "name": "base",
                        "props": {
                            "sse4_1": True,
                            "sse4.1": True,
                            "vmx-exit-nosave-debugctl": True,
                            "pmu": False,
                            "lahf_lm": True,
                            "family": 6,
                        },
                    }
                },
                "id": "model-expansion",
            }
        )
        + "\n"
        + json.dumps({"return": {}})
    )
    Path(f"{base}-disabled.xml").write_text(
        "<cpudata arch='x86'>\n  <cpuid eax_in='0x00000001' ecx_in='0x00' eax='0x00000000'"
        " ebx='0x00000000' ecx='0x00000800' edx='0x00000000'/>\n</cpudata>\n"
    )
    cap = tool.read_libvirt(tmp_path, "Test-CPU", "0" * 40)
    assert cap.props == {"sse4.1": True, "lahf-lm": True}
    assert cap.msrs == {0x10A: 0xC} and cap.disabled[(1, 0)][2] == 0x800
    out = tmp_path / "Test-CPU.json"
    out.write_text(tool.to_host_file(cap))
    host = cpus.load(out)
    assert host.vendor == "GenuineIntel"
    data = json.loads(out.read_text())
    assert data["disabled"] == [["0x00000001", "0x00", "ecx", "0x00000800"]]
    assert data["title"] == "Test CPU"
