"""kvmfpu: an executable model of the x86 XSAVE architecture and the Linux KVM FPU/xstate
userspace ABI. ``kvmfpu.Kvm(host, kernel, flavor)`` is /dev/kvm on a chosen host CPU model
and kernel version; ``kvmfpu.core.Cpu`` the emulated processor; ``kvmfpu.cpus`` the host
models; ``kvmfpu.scenarios`` the seed bugs."""

import importlib

# Not typing.TYPE_CHECKING: importing typing would widen the window before the command
# line's Ctrl-C handler (mypy treats any TYPE_CHECKING name as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from kvmfpu.kvm import HostOops, KernelProfile, Kvm, KvmError, Vcpu, Vm
    from kvmfpu.real import open_kvm

__version__ = "0.1.0"
__all__ = ["HostOops", "KernelProfile", "Kvm", "KvmError", "Vcpu", "Vm", "__version__",
           "model_of_running_host", "open_kvm"]

# The names are imported when first used (PEP 562), so `import kvmfpu` is cheap: the
# command line installs its Ctrl-C handler before the heavy modules load (kvmfpu.entry).
_LAZY = {"HostOops": "kvmfpu.kvm", "KernelProfile": "kvmfpu.kvm", "Kvm": "kvmfpu.kvm",
         "KvmError": "kvmfpu.kvm", "Vcpu": "kvmfpu.kvm", "Vm": "kvmfpu.kvm",
         "open_kvm": "kvmfpu.real"}


def __getattr__(name: str) -> "Any":
    where = _LAZY.get(name)
    if where is None and not name.startswith("__"):
        # A subpackage, as `import kvmfpu; kvmfpu.cpus` worked when the eager imports
        # loaded them all.
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def model_of_running_host(path: str = "/dev/kvm") -> "Kvm":
    """The model (this machine's CPUID, the best-matching kernel profile, the loaded vendor
    module's flavour) that behaves like the running /dev/kvm (see ``kvmfpu probe``)."""
    from kvmfpu.probe import model_of_running_host as find
    return find(path)
