from __future__ import annotations

import pathlib

import pytest

from kvmfpu import Kvm

DATA = pathlib.Path(__file__).parent / "data"


def guest_blob(host: str, kernel: str = "6.6") -> bytes:
    """KVM_GET_XSAVE of a model vCPU whose guest wrote x87, AVX-512, opmask, PKRU (and MPX
    where the host has it)."""
    kvm = Kvm(host, kernel)
    v = kvm.create_vm().create_vcpu()
    v.set_cpuid2(kvm.get_supported_cpuid())
    v.set_sregs(cr4_osxsave=True, cr4_pke=kvm.caps.pku)
    xcr0 = v.gsx & ~(v.gsx & 0x60000 if v.gsx & 0x60000 != 0x60000 else 0)
    v.set_xcrs([(0, xcr0)])
    with v.guest() as g:
        g.set_reg("fcw", 0x027F)
        g.set_reg("xmm1", 0x1234)
        if xcr0 & 0xE0:
            g.set_reg("zmm3", (7 << 500) | 5)
            g.set_reg("k1", 0xFF)
            g.set_reg("zmm20", 9 << 300)
        if xcr0 & 0x200:
            g.set_reg("pkru", 0xC)
        if xcr0 & 0x18:
            g.set_reg("bnd0", (5 << 64) | 3)
    return v.get_xsave()


@pytest.fixture
def data_dir() -> pathlib.Path:
    return DATA


@pytest.fixture(name="guest_blob")
def guest_blob_fixture() -> object:
    return guest_blob
