"""The real /dev/kvm with the model's interface (``kvmfpu.open_kvm``)."""

from kvmfpu.real.device import GuestUnavailable, RealKvm, RealVcpu, RealVm

__all__ = ["GuestUnavailable", "RealKvm", "RealVcpu", "RealVm", "open_kvm"]


def open_kvm(path: str = "/dev/kvm") -> RealKvm:
    """Open ``path``: the returned object has the same methods as ``kvmfpu.Kvm``, backed by
    real ioctls; failures are KvmError with the kernel's errno (``source == "kernel"``)."""
    return RealKvm(path)
