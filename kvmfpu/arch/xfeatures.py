"""The XSAVE state components (xfeatures) 0-19.

Source: Intel SDM Vol. 1 ch. 13 (table 13-1 and §13.2-13.5) for numbers, kinds and
architectural sizes; Linux ``arch/x86/include/asm/fpu/types.h`` (enum xfeature) for the
kernel names. Sizes here are the architectural ones; a host's real sizes and offsets
come from its CPUID leaf 0xD (see :mod:`kvmfpu.arch.layout`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class XFeature(enum.IntEnum):
    """State component numbers, as bits of XCR0 / IA32_XSS / XSTATE_BV / XCOMP_BV."""

    X87 = 0
    SSE = 1
    YMM = 2
    BNDREGS = 3
    BNDCSR = 4
    OPMASK = 5
    ZMM_HI256 = 6
    HI16_ZMM = 7
    PT = 8
    PKRU = 9
    PASID = 10
    CET_U = 11
    CET_S = 12
    HDC = 13
    UINTR = 14
    LBR = 15
    HWP = 16
    XTILECFG = 17
    XTILEDATA = 18
    APX = 19

    @property
    def mask(self) -> int:
        return 1 << int(self)


class Kind(enum.Enum):
    """Managed through XCR0 (user) or IA32_XSS (supervisor)."""

    USER = "user"
    SUPERVISOR = "supervisor"


@dataclass(frozen=True)
class XFeatureInfo:
    feature: XFeature
    name: str          # kvmfpu's lowercase name
    linux_name: str    # XFEATURE_* in Linux
    kind: Kind
    size: int          # architectural size in bytes (legacy components: their bytes in the area)
    dynamic: bool      # may be armed by IA32_XFD (SDM §13.14); Linux: XFEATURE_MASK_USER_DYNAMIC
    description: str

    @property
    def bit(self) -> int:
        return int(self.feature)

    @property
    def mask(self) -> int:
        return 1 << int(self.feature)


_U, _S = Kind.USER, Kind.SUPERVISOR

XFEATURES: Final[tuple[XFeatureInfo, ...]] = (
    XFeatureInfo(XFeature.X87, "x87", "XFEATURE_FP", _U, 160, False,
                 "x87 FPU: FCW, FSW, FTW, FOP, FIP, FDP, ST0-ST7"),
    XFeatureInfo(XFeature.SSE, "sse", "XFEATURE_SSE", _U, 256 + 8, False,
                 "SSE: XMM0-XMM15 and MXCSR"),
    XFeatureInfo(XFeature.YMM, "ymm", "XFEATURE_YMM", _U, 256, False,
                 "AVX: upper 128 bits of YMM0-YMM15"),
    XFeatureInfo(XFeature.BNDREGS, "bndregs", "XFEATURE_BNDREGS", _U, 64, False,
                 "MPX bounds registers BND0-BND3"),
    XFeatureInfo(XFeature.BNDCSR, "bndcsr", "XFEATURE_BNDCSR", _U, 64, False,
                 "MPX BNDCFGU and BNDSTATUS"),
    XFeatureInfo(XFeature.OPMASK, "opmask", "XFEATURE_OPMASK", _U, 64, False,
                 "AVX-512 opmask registers k0-k7"),
    XFeatureInfo(XFeature.ZMM_HI256, "zmm_hi256", "XFEATURE_ZMM_Hi256", _U, 512, False,
                 "AVX-512: upper 256 bits of ZMM0-ZMM15"),
    XFeatureInfo(XFeature.HI16_ZMM, "hi16_zmm", "XFEATURE_Hi16_ZMM", _U, 1024, False,
                 "AVX-512: ZMM16-ZMM31"),
    XFeatureInfo(XFeature.PT, "pt", "XFEATURE_PT_UNIMPLEMENTED_SO_FAR", _S, 128, False,
                 "Intel Processor Trace MSRs"),
    XFeatureInfo(XFeature.PKRU, "pkru", "XFEATURE_PKRU", _U, 8, False,
                 "Protection-key rights register for user pages"),
    XFeatureInfo(XFeature.PASID, "pasid", "XFEATURE_PASID", _S, 8, False,
                 "IA32_PASID MSR"),
    XFeatureInfo(XFeature.CET_U, "cet_u", "XFEATURE_CET_USER", _S, 16, False,
                 "CET user state: IA32_U_CET, IA32_PL3_SSP"),
    XFeatureInfo(XFeature.CET_S, "cet_s", "XFEATURE_CET_KERNEL", _S, 24, False,
                 "CET supervisor state: IA32_PL0_SSP..IA32_PL2_SSP"),
    XFeatureInfo(XFeature.HDC, "hdc", "XFEATURE_RSRVD_COMP_13", _S, 8, False,
                 "Hardware duty cycling: IA32_PM_CTL1"),
    XFeatureInfo(XFeature.UINTR, "uintr", "XFEATURE_RSRVD_COMP_14", _S, 48, False,
                 "User interrupts state"),
    XFeatureInfo(XFeature.LBR, "lbr", "XFEATURE_LBR", _S, 0x328, False,
                 "Architectural LBR state (size depends on LBR depth)"),
    XFeatureInfo(XFeature.HWP, "hwp", "XFEATURE_RSRVD_COMP_16", _S, 8, False,
                 "HWP request: IA32_HWP_REQUEST"),
    XFeatureInfo(XFeature.XTILECFG, "xtilecfg", "XFEATURE_XTILE_CFG", _U, 64, False,
                 "AMX tile configuration (TILECFG)"),
    XFeatureInfo(XFeature.XTILEDATA, "xtiledata", "XFEATURE_XTILE_DATA", _U, 8192, True,
                 "AMX tile data TMM0-TMM7"),
    XFeatureInfo(XFeature.APX, "apx", "XFEATURE_APX", _U, 128, False,
                 "APX extended GPRs R16-R31"),
)

INFO: Final[dict[XFeature, XFeatureInfo]] = {i.feature: i for i in XFEATURES}
BY_NAME: Final[dict[str, XFeatureInfo]] = {i.name: i for i in XFEATURES}
MAX_XFEATURE: Final = max(XFeature)

# Masks (Linux XFEATURE_MASK_* spelling where one exists).
FP: Final = XFeature.X87.mask
SSE: Final = XFeature.SSE.mask
FPSSE: Final = FP | SSE
YMM: Final = XFeature.YMM.mask
BNDREGS: Final = XFeature.BNDREGS.mask
BNDCSR: Final = XFeature.BNDCSR.mask
MPX: Final = BNDREGS | BNDCSR
OPMASK: Final = XFeature.OPMASK.mask
ZMM_HI256: Final = XFeature.ZMM_HI256.mask
HI16_ZMM: Final = XFeature.HI16_ZMM.mask
AVX512: Final = OPMASK | ZMM_HI256 | HI16_ZMM
PT: Final = XFeature.PT.mask
PKRU: Final = XFeature.PKRU.mask
PASID: Final = XFeature.PASID.mask
CET_U: Final = XFeature.CET_U.mask
CET_S: Final = XFeature.CET_S.mask
CET: Final = CET_U | CET_S
LBR: Final = XFeature.LBR.mask
XTILECFG: Final = XFeature.XTILECFG.mask
XTILEDATA: Final = XFeature.XTILEDATA.mask
XTILE: Final = XTILECFG | XTILEDATA
APX: Final = XFeature.APX.mask

USER_MASK: Final = sum(i.mask for i in XFEATURES if i.kind is Kind.USER)
SUPERVISOR_MASK: Final = sum(i.mask for i in XFEATURES if i.kind is Kind.SUPERVISOR)
DYNAMIC_MASK: Final = sum(i.mask for i in XFEATURES if i.dynamic)
KNOWN_MASK: Final = USER_MASK | SUPERVISOR_MASK

# XCOMP_BV bit 63: the compacted format (SDM §13.4.3).
XCOMP_COMPACTED: Final = 1 << 63


def info(feature: int | XFeature) -> XFeatureInfo:
    """Return the table row for a component number (KeyError outside 0-19)."""
    return INFO[XFeature(feature)]


def name_of(bit: int) -> str:
    """kvmfpu's name for a bit, or ``bit<N>`` for components not in the table."""
    try:
        return INFO[XFeature(bit)].name
    except ValueError:
        return f"bit{bit}"


def bits(mask: int) -> list[int]:
    """The set bit numbers of a 64-bit mask, lowest first. A negative mask (an int64 field
    holding -1) is its 64-bit two's complement: Python's -1 has no highest bit to stop at."""
    if mask < 0:
        mask &= (1 << 64) - 1
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def describe_mask(mask: int) -> str:
    """``0x2e7 (x87|sse|ymm|opmask|zmm_hi256|hi16_zmm|pkru)``."""
    if not mask:
        return "0x0 (none)"
    names = [name_of(b) if b != 63 else "compacted" for b in bits(mask)]
    return f"{mask:#x} ({'|'.join(names)})"
