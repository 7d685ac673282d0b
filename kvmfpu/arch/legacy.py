"""The 512-byte legacy region (FXSAVE layout) and the 64-byte XSAVE header.

Source: Intel SDM Vol. 1 §10.5.1 (FXSAVE area, tables 10-2/10-3) and §13.4.1-13.4.2;
Linux ``struct fxregs_state`` and ``struct xstate_header`` (arch/x86/include/asm/fpu/types.h).
Offsets are from the start of the XSAVE area.
"""

from __future__ import annotations

from typing import Final

# Legacy region, 64-bit form (REX.W: FXSAVE64 / XSAVE64 and friends).
FCW: Final = 0
FSW: Final = 2
FTW: Final = 4           # abridged tag byte: bit i = physical register Ri is valid
FTW_RESERVED: Final = 5
FOP: Final = 6
FIP: Final = 8           # 64-bit form: FIP[63:0]
FDP: Final = 16          # 64-bit form: FDP[63:0]
# 32-bit form (no REX.W): FIP[31:0], FCS, reserved, FDP[31:0], FDS, reserved.
FIP32: Final = 8
FCS: Final = 12
FDP32: Final = 16
FDS: Final = 20
MXCSR: Final = 24
MXCSR_MASK: Final = 28
ST_SPACE: Final = 32     # ST0..ST7, 16-byte slots holding 10-byte registers
ST_SLOT: Final = 16
ST_BYTES: Final = 10
XMM_SPACE: Final = 160   # XMM0..XMM15, 16 bytes each
XMM_COUNT: Final = 16
RESERVED: Final = 416    # 48 bytes no XSAVE-family instruction writes (seen on real CPUs too)
SW_RESERVED: Final = 464  # 48 bytes for software (Linux: _fpx_sw_bytes / XCR0 copy)
LEGACY_SIZE: Final = 512

# The XSAVE header.
HEADER: Final = 512
XSTATE_BV: Final = 512
XCOMP_BV: Final = 520
HEADER_RESERVED: Final = 528
HEADER_SIZE: Final = 64
EXTENDED: Final = 576    # first byte after the header; compacted components start here

# Byte ranges of each legacy component inside the region (half-open).
X87_RANGES: Final = ((0, MXCSR), (ST_SPACE, XMM_SPACE))
SSE_XMM_RANGE: Final = (XMM_SPACE, RESERVED)
MXCSR_RANGE: Final = (MXCSR, MXCSR_MASK + 4)

# Init values (SDM §13.6: "initial configuration").
FCW_INIT: Final = 0x037F
MXCSR_INIT: Final = 0x1F80

# FCW bits 6 and 7, 13-15 are reserved: bit 6 reads as 1, the others as 0 (Bochs
# xrstor_x87_state/FPU_CW_Reserved_Bits; observed on AMD Zen 5 by tests/native).
FCW_KEEP: Final = 0x1F3F
FCW_ONE: Final = 0x0040
FSW_ES: Final = 1 << 7   # error summary
FSW_B: Final = 1 << 15   # busy, mirrors ES on processors since the 387
FOP_MASK: Final = 0x7FF  # the opcode is 11 bits; FOP[15:11] are stored as zero
