"""Vendor flavours as data (kvmfpu.kvm.flavors), the kvm/ package's shape (modules under 600
lines, uapi numbers from kvmfpu.uapi) and the limits the uapi module carries."""

from __future__ import annotations

import ast
import dataclasses
import errno
import re
from pathlib import Path

import pytest

from kvmfpu import uapi
from kvmfpu.arch import xfeatures as xf
from kvmfpu.core import msrs as msr
from kvmfpu.kvm import Kvm
from kvmfpu.kvm import vcpu as vcpu_module
from kvmfpu.kvm.errors import KvmError
from kvmfpu.kvm.flavors import FLAVORS, PVM, SVM, VMX, flavor
from kvmfpu.kvm.system import ARCH_REQ_XCOMP_GUEST_PERM

KVM_DIR = Path(vcpu_module.__file__).parent


def test_flavours_by_name() -> None:
    assert FLAVORS == ("vmx", "svm", "pvm")
    assert [flavor(n) for n in FLAVORS] == [VMX, SVM, PVM]
    with pytest.raises(ValueError, match=r"unknown flavour .kvm. .one of vmx, svm, pvm"):
        flavor("kvm")
    assert Kvm("zen4").ops is SVM and Kvm("skylake-sp").ops is VMX
    assert Kvm("zen4", flavor="pvm").ops is PVM and Kvm("zen4", flavor="pvm").flavor == "pvm"


@pytest.mark.parametrize(
    ("host", "name", "runs"),
    [
        ("skylake-sp", "vmx", True),
        ("skylake-sp", "svm", False),
        ("zen4", "vmx", False),
        ("zen4", "svm", True),
        ("hygon-dhyana", "svm", True),
        ("zen5", "pvm", True),
        ("sapphirerapids", "pvm", True),
    ],
)
def test_module_loads_on_its_vendor(host: str, name: str, runs: bool) -> None:
    # kvm_intel refuses AMD and Hygon hosts, kvm_amd the others (their hardware_setup / the
    # vendor's CPUID checks); kvm_pvm loads anywhere (this machine runs it on AMD).
    if runs:
        assert Kvm(host, flavor=name).flavor == name
    else:
        with pytest.raises(ValueError, match=f"flavour {name} does not run on"):
            Kvm(host, flavor=name)


def test_svm_clears_mpx_and_ibt_vmx_keeps_them() -> None:
    # svm_hardware_setup clears MPX (kvm_caps.supported_xcr0); 6.18's SVM CET has no IBT
    # (8db428fd5229). skylake-sp has MPX; vmx keeps BNDREGS|BNDCSR.
    assert Kvm("skylake-sp", "6.6").caps.supported_xcr0 & xf.MPX == xf.MPX
    assert not Kvm("zen4", "6.6").caps.mpx
    assert not SVM.ibt and VMX.ibt


def test_pvm_offers_no_xsaves_cet_or_pku() -> None:
    # kvm_pvm: XSAVES cleared, supported_xss = 0, no PKU (measured on this machine, pvm.py).
    caps = Kvm("zen5", "6.18", "pvm").caps
    assert not caps.xsaves and caps.supported_xss == 0 and not caps.pku
    assert Kvm("zen5", "6.18", "svm").caps.pku


def test_svm_cannot_hide_xsaves_vmx_can() -> None:
    # A guest CPUID without XSAVES: VMX leaves ENABLE_XSAVES clear (#UD), SVM runs it anyway
    # (svm_vcpu_after_set_cpuid cannot intercept it).
    for host, name, ud in (("skylake-sp", "vmx", True), ("zen4", "svm", False)):
        kvm = Kvm(host, "6.6", name)
        v = kvm.create_vm().create_vcpu()
        cpuid = [
            e._replace(eax=e.eax & ~8) if (e.function, e.index) == (0xD, 1) else e
            for e in kvm.get_supported_cpuid()
        ]
        v.set_cpuid2(cpuid)
        v.set_sregs(cr4_osxsave=True)
        with v.guest() as g:
            if ud:
                with pytest.raises(Exception, match="XSAVES not enabled"):
                    g.xsaves(0, 3)
            else:
                g.xsaves(0, 3)


def test_pvm_accepts_osxsave_without_xsave_in_cpuid() -> None:
    # __kvm_is_valid_cr4 checks cr4_guest_rsvd_bits on vmx/svm; kvm_pvm took CR4.OSXSAVE
    # with a guest CPUID lacking XSAVE (measured on this machine's 6.18.44 kvm_pvm).
    for name, refused in (("svm", True), ("pvm", False)):
        kvm = Kvm("zen5", "6.18", name)
        v = kvm.create_vm().create_vcpu()
        v.set_cpuid2([e for e in kvm.get_supported_cpuid() if e.function not in (1, 0xD)])
        if refused:
            with pytest.raises(KvmError) as err:
                v.set_sregs(cr4_osxsave=True)
            assert err.value.errno == errno.EINVAL
        else:
            v.set_sregs(cr4_osxsave=True)


@pytest.mark.parametrize("passthrough", [True, False])
def test_vmx_stops_intercepting_xfd_after_the_first_write(passthrough: bool) -> None:
    # b5274b1b7ba8 (vmx_set_msr): the first non-zero guest IA32_XFD write disables the
    # intercept. No other packaged flavour/host pair offers XFD (AMD hosts have no AMX,
    # kvm_pvm's CPUID filter drops XFD), so the record is changed to show it decides.
    kvm = Kvm("sapphirerapids", "6.6", "vmx")
    kvm.ops = dataclasses.replace(VMX, xfd_write_passthrough=passthrough)
    kvm.arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM, 18)
    v = kvm.create_vm().create_vcpu()
    v.set_cpuid2(kvm.get_supported_cpuid())
    v.set_sregs(cr4_osxsave=True)
    v.set_xcrs([(0, v.gsx)])
    with v.guest() as g:
        g.wrmsr(msr.IA32_XFD, 0)
        assert not v.xfd_no_write_intercept
        g.wrmsr(msr.IA32_XFD, xf.XTILEDATA)
    assert v.xfd_no_write_intercept is passthrough
    assert VMX.xfd_write_passthrough and not SVM.xfd_write_passthrough


def _sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(KVM_DIR.glob("*.py"))}


def test_no_flavour_name_comparisons_outside_the_table() -> None:
    # Vendor differences are read from kvm.ops / caps.ops (kvm_x86_ops as data).
    pattern = re.compile(r"flavor\s*(==|!=)|flavor\s+(not\s+)?in\s*\(")
    found = [
        f"{name}:{i}"
        for name, text in _sources().items()
        if name != "flavors.py"
        for i, line in enumerate(text.splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []


def test_kvm_modules_stay_under_600_lines() -> None:
    sizes = {name: text.count("\n") for name, text in _sources().items()}
    assert max(sizes.values()) <= 600, sizes


#: uapi numbers and limits kvm/ takes from kvmfpu.uapi instead of writing them again.
UAPI_NAMES = (
    "KVM_XSAVE_SIZE",
    "KVM_MAX_XCRS",
    "KVM_MAX_CPUID_ENTRIES",
    "MAX_IO_MSRS",
    "KVM_API_VERSION",
    "KVM_X86_XCOMP_GUEST_SUPP",
    "KVM_SUPPORTED_CPUID_MAX",
    "MP_RUNNABLE",
    "MP_UNINITIALIZED",
    "MP_INIT_RECEIVED",
    "MP_HALTED",
    "MP_SIPI_RECEIVED",
    "MP_AP_RESET_HOLD",
    "KVM_CAP_XSAVE2",
)


def test_kvm_modules_do_not_redeclare_uapi_numbers() -> None:
    literal = []
    for name, text in _sources().items():
        for node in ast.walk(ast.parse(text)):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets, value = node.targets, node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                targets, value = [node.target], node.value
            else:
                continue
            for t in targets:
                elts = t.elts if isinstance(t, ast.Tuple) else [t]
                for e in elts:
                    if (
                        isinstance(e, ast.Name)
                        and e.id in UAPI_NAMES
                        and not (isinstance(value, ast.Attribute))
                    ):
                        literal.append(f"{name}: {e.id}")
    assert literal == []


def test_uapi_limits_match_the_cdefs() -> None:
    # cdefs/kvm_xstate.h is compiled against <linux/kvm.h> in tests/test_cdefs.py.
    ffi = uapi.ffi()
    assert uapi.KVM_XSAVE_SIZE == uapi.sizeof("kvm_xsave") == 4096
    xcrs = dict(ffi.typeof("struct kvm_xcrs").fields)["xcrs"].type
    assert uapi.KVM_MAX_XCRS == xcrs.length == 16
    for state in ("RUNNABLE", "UNINITIALIZED", "INIT_RECEIVED", "HALTED", "SIPI_RECEIVED"):
        assert getattr(uapi, f"KVM_MP_STATE_{state}") == uapi.const(f"KVM_MP_STATE_{state}")
    assert uapi.KVM_MP_STATE_AP_RESET_HOLD == 9  # include/uapi/linux/kvm.h
    assert uapi.const("KVM_X86_XCOMP_GUEST_SUPP") == uapi.KVM_X86_XCOMP_GUEST_SUPP
    assert uapi.const("KVM_API_VERSION") == uapi.KVM_API_VERSION
    # KVM_MAX_CPUID_ENTRIES and MAX_IO_MSRS: 256 in kvm_host.h and x86.c, as the E2BIG
    # paths of tests/kvm/test_errno_paths.py exercise.
    assert uapi.KVM_MAX_CPUID_ENTRIES == uapi.MAX_IO_MSRS == 256
    assert (uapi.requests()["KVM_GET_XSAVE"], uapi.requests()["KVM_SET_XSAVE"]) == (
        uapi.KVM_GET_XSAVE,
        uapi.KVM_SET_XSAVE,
    )


def test_old_import_paths_still_work() -> None:
    from kvmfpu.kvm.system import ARCH_REQ_XCOMP_GUEST_PERM, KVM_X86_XCOMP_GUEST_SUPP
    from kvmfpu.kvm.vcpu import (
        CET_MSRS,
        KVM_MAX_XCRS,
        MP_NAMES,
        MP_RUNNABLE,
        Guest,
        MsrFailure,
        SRegs,
        Vcpu,
    )

    assert (ARCH_REQ_XCOMP_GUEST_PERM, KVM_X86_XCOMP_GUEST_SUPP, KVM_MAX_XCRS) == (0x1025, 0, 16)
    assert MP_NAMES[MP_RUNNABLE] == "RUNNABLE" and len(CET_MSRS) == 7
    assert Guest.__module__ == "kvmfpu.kvm.vcpu_run" and issubclass(MsrFailure, Exception)
    assert Vcpu.__module__ == "kvmfpu.kvm.vcpu" and SRegs().cr4_osxsave is False
