"""The emulated processor core: XSAVE, XRSTOR and friends, with the real faults."""

from kvmfpu.core.cpu import Cpu, CpuState, xcr0_problem
from kvmfpu.core.faults import (
    DeviceNotAvailable,
    Fault,
    GeneralProtection,
    InvalidOpcode,
    PageFault,
)
from kvmfpu.core.regfile import REGISTERS

__all__ = [
    "REGISTERS",
    "Cpu",
    "CpuState",
    "DeviceNotAvailable",
    "Fault",
    "GeneralProtection",
    "InvalidOpcode",
    "PageFault",
    "xcr0_problem",
]
