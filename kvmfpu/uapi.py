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

# Capability numbers (include/uapi/linux/kvm.h), also in the cdefs; kept here as plain
# constants for code that must not load cffi.
KVM_CAP_IRQCHIP: Final = 0
KVM_CAP_XSAVE: Final = 55
KVM_CAP_XCRS: Final = 56
KVM_CAP_XSAVE2: Final = 208
KVM_API_VERSION: Final = 12
KVM_X86_XCOMP_GUEST_SUPP: Final = 0
#: sizeof(struct kvm_xsave) and the kvm_xcrs array (cdefs; tests/kvm/test_uapi_limits.py).
KVM_XSAVE_SIZE: Final = 4096
KVM_MAX_XCRS: Final = 16
#: KVM_MP_STATE_* (include/uapi/linux/kvm.h).
KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED, KVM_MP_STATE_INIT_RECEIVED = 0, 1, 2
KVM_MP_STATE_HALTED, KVM_MP_STATE_SIPI_RECEIVED, KVM_MP_STATE_AP_RESET_HOLD = 3, 4, 9
#: The kernel's limits on what the uapi carries: KVM_MAX_CPUID_ENTRIES
#: (arch/x86/include/asm/kvm_host.h) and MAX_IO_MSRS (arch/x86/kvm/x86.c), both 256.
KVM_MAX_CPUID_ENTRIES: Final = 256
MAX_IO_MSRS: Final = 256

#: The ioctls kvmfpu issues (their numbers come from the cdefs).
REQUESTS: Final = (
    "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_GET_MSR_INDEX_LIST", "KVM_CHECK_EXTENSION",
    "KVM_GET_VCPU_MMAP_SIZE", "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU", "KVM_CREATE_IRQCHIP",
    "KVM_RUN", "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_GET_MSRS", "KVM_SET_MSRS",
    "KVM_SET_CPUID2", "KVM_GET_CPUID2", "KVM_GET_MP_STATE", "KVM_SET_MP_STATE",
    "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS", "KVM_GET_XSAVE", "KVM_SET_XSAVE",
    "KVM_GET_XCRS", "KVM_SET_XCRS", "KVM_GET_XSAVE2", "KVM_GET_DEVICE_ATTR",
    "KVM_HAS_DEVICE_ATTR",
)


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
    out.cdef(cdefs_text())
    return out


@cache
def _lib() -> Any:
    # Integer constants of a cdef are reachable through any library object.
    return ffi().dlopen(None)


def const(name: str) -> int:
    """A #define of the cdefs (ioctl number, capability id, ...)."""
    return int(getattr(_lib(), name))


def sizeof(struct: str) -> int:
    return int(ffi().sizeof(f"struct {struct}"))


def offsetof(struct: str, *path: str) -> int:
    """Offset of a (possibly nested) field: ``offsetof("kvm_vcpu_events", "smi", "latched_init")``."""
    return int(ffi().offsetof(f"struct {struct}", *path))


def ioc(direction: int, nr: int, size: int) -> int:
    """_IOC of <asm-generic/ioctl.h>: dir<<30 | size<<16 | KVMIO<<8 | nr."""
    return direction << 30 | size << 16 | KVMIO << 8 | nr


#: The hot pair as plain numbers (no cffi): _IOR/_IOW(KVMIO, 0xA4/0xA5, struct kvm_xsave);
#: tests/kvm/test_flavors.py checks them against the cdefs.
KVM_GET_XSAVE: Final = ioc(_IOC_READ, 0xA4, KVM_XSAVE_SIZE)
KVM_SET_XSAVE: Final = ioc(_IOC_WRITE, 0xA5, KVM_XSAVE_SIZE)


@cache
def requests() -> dict[str, int]:
    """Every ioctl kvmfpu issues, by its <linux/kvm.h> name."""
    return {name: const(name) for name in REQUESTS}
