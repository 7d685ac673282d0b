"""The KVM uapi: structure layouts (from ``cdefs/kvm_xstate.h`` through cffi) and ioctl
request numbers built the way <linux/ioctl.h> builds them (_IOC: dir<<30 | size<<16 |
type<<8 | nr; KVMIO = 0xAE)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

KVMIO: Final = 0xAE
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2

# Capability numbers (include/uapi/linux/kvm.h).
KVM_CAP_XSAVE: Final = 55
KVM_CAP_XCRS: Final = 56
KVM_CAP_XSAVE2: Final = 208
KVM_API_VERSION: Final = 12


def cdefs_text() -> str:
    """The C declarations: packaged as kvmfpu.cdefs, or the repository's cdefs/."""
    try:
        return resources.files("kvmfpu.cdefs").joinpath("kvm_xstate.h").read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        return (Path(__file__).resolve().parent.parent / "cdefs" / "kvm_xstate.h").read_text()


@cache
def ffi() -> Any:
    import cffi

    out = cffi.FFI()
    text = "\n".join(line for line in cdefs_text().splitlines() if not line.startswith("#"))
    out.cdef(text)
    return out


def sizeof(struct: str) -> int:
    return int(ffi().sizeof(f"struct {struct}"))


def _ioc(direction: int, nr: int, size: int) -> int:
    return direction << 30 | size << 16 | KVMIO << 8 | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, struct: str) -> int:
    return _ioc(_IOC_READ, nr, sizeof(struct))


def _iow(nr: int, struct: str) -> int:
    return _ioc(_IOC_WRITE, nr, sizeof(struct))


def _iowr(nr: int, struct: str) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, sizeof(struct))


@cache
def requests() -> dict[str, int]:
    """Every ioctl kvmfpu issues, by its <linux/kvm.h> name."""
    return {
        "KVM_GET_API_VERSION": _io(0x00),
        "KVM_CREATE_VM": _io(0x01),
        "KVM_GET_MSR_INDEX_LIST": _iowr(0x02, "kvm_msr_list"),
        "KVM_CHECK_EXTENSION": _io(0x03),
        "KVM_GET_VCPU_MMAP_SIZE": _io(0x04),
        "KVM_GET_SUPPORTED_CPUID": _iowr(0x05, "kvm_cpuid2"),
        "KVM_CREATE_VCPU": _io(0x41),
        "KVM_GET_MSRS": _iowr(0x88, "kvm_msrs"),
        "KVM_SET_MSRS": _iow(0x89, "kvm_msrs"),
        "KVM_SET_CPUID2": _iow(0x90, "kvm_cpuid2"),
        "KVM_GET_CPUID2": _iowr(0x91, "kvm_cpuid2"),
        "KVM_GET_MP_STATE": _ior(0x98, "kvm_mp_state"),
        "KVM_SET_MP_STATE": _iow(0x99, "kvm_mp_state"),
        "KVM_GET_XSAVE": _ior(0xA4, "kvm_xsave"),
        "KVM_SET_XSAVE": _iow(0xA5, "kvm_xsave"),
        "KVM_GET_XCRS": _ior(0xA6, "kvm_xcrs"),
        "KVM_SET_XCRS": _iow(0xA7, "kvm_xcrs"),
        "KVM_GET_XSAVE2": _ior(0xCF, "kvm_xsave"),
        "KVM_GET_DEVICE_ATTR": _iow(0xE2, "kvm_device_attr"),
        "KVM_HAS_DEVICE_ATTR": _iow(0xE3, "kvm_device_attr"),
    }
