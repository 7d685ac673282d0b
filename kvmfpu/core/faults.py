"""Processor exceptions raised by the emulated core.

A fault carries its vector, the mnemonic that raised it and a one-line reason naming the
SDM condition. A faulting instruction changes neither memory nor registers (the core
checks everything before it writes anything), as on the real processor: tests/native
compares the register state the kernel saved at a real fault with the state before it.
"""

from __future__ import annotations

from typing import ClassVar


class Fault(Exception):
    """An x86 exception raised by an instruction."""

    vector: ClassVar[int] = -1
    label: ClassVar[str] = "#??"
    has_error_code: ClassVar[bool] = False

    def __init__(self, mnemonic: str, reason: str, error_code: int = 0):
        self.mnemonic = mnemonic
        self.reason = reason
        self.error_code = error_code
        super().__init__(str(self))

    def __str__(self) -> str:
        code = f"({self.error_code})" if self.has_error_code else ""
        return f"{self.mnemonic}: {self.label}{code}: {self.reason}"

    def __reduce__(self) -> tuple[type[Fault], tuple[str, str, int]]:
        return (type(self), (self.mnemonic, self.reason, self.error_code))


class InvalidOpcode(Fault):
    """#UD, vector 6."""

    vector = 6
    label = "#UD"


class DeviceNotAvailable(Fault):
    """#NM, vector 7 (CR0.TS/EM, or an XFD-armed component)."""

    vector = 7
    label = "#NM"


class GeneralProtection(Fault):
    """#GP(0), vector 13."""

    vector = 13
    label = "#GP"
    has_error_code = True


class PageFault(Fault):
    """#PF, vector 14: the access runs outside the caller's memory buffer."""

    vector = 14
    label = "#PF"
    has_error_code = True


VECTORS: dict[int, type[Fault]] = {
    cls.vector: cls for cls in (InvalidOpcode, DeviceNotAvailable, GeneralProtection, PageFault)
}
