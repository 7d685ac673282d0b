"""CPUID feature bits kvmfpu reads.

Source: Intel SDM Vol. 2A (CPUID, tables 3-8 .. 3-10), AMD APM Vol. 3 appendix E, and Linux
``arch/x86/include/asm/cpufeatures.h`` for the names.
"""

from __future__ import annotations

from typing import Final, NamedTuple

EAX, EBX, ECX, EDX = 0, 1, 2, 3


class FeatureBit(NamedTuple):
    leaf: int
    subleaf: int
    reg: int   # EAX=0 .. EDX=3
    bit: int


FEATURES: Final[dict[str, FeatureBit]] = {
    # leaf 1
    "fpu": FeatureBit(1, 0, EDX, 0),
    "fxsr": FeatureBit(1, 0, EDX, 24),
    "sse": FeatureBit(1, 0, EDX, 25),
    "sse2": FeatureBit(1, 0, EDX, 26),
    "xsave": FeatureBit(1, 0, ECX, 26),
    "osxsave": FeatureBit(1, 0, ECX, 27),
    "avx": FeatureBit(1, 0, ECX, 28),
    "hypervisor": FeatureBit(1, 0, ECX, 31),
    # leaf 7
    "fdp_excptn_only": FeatureBit(7, 0, EBX, 6),
    "mpx": FeatureBit(7, 0, EBX, 14),
    "avx512f": FeatureBit(7, 0, EBX, 16),
    "intel_pt": FeatureBit(7, 0, EBX, 25),
    "zero_fcs_fds": FeatureBit(7, 0, EBX, 13),
    "avx2": FeatureBit(7, 0, EBX, 5),
    "pku": FeatureBit(7, 0, ECX, 3),
    "ospke": FeatureBit(7, 0, ECX, 4),
    "shstk": FeatureBit(7, 0, ECX, 7),
    "la57": FeatureBit(7, 0, ECX, 16),
    "enqcmd": FeatureBit(7, 0, ECX, 29),
    "uintr": FeatureBit(7, 0, EDX, 5),
    "arch_lbr": FeatureBit(7, 0, EDX, 19),
    "ibt": FeatureBit(7, 0, EDX, 20),
    "amx_bf16": FeatureBit(7, 0, EDX, 22),
    "amx_tile": FeatureBit(7, 0, EDX, 24),
    "amx_int8": FeatureBit(7, 0, EDX, 25),
    "apx_f": FeatureBit(7, 1, EDX, 21),
    # leaf 0xD subleaf 1
    "xsaveopt": FeatureBit(0xD, 1, EAX, 0),
    "xsavec": FeatureBit(0xD, 1, EAX, 1),
    "xgetbv1": FeatureBit(0xD, 1, EAX, 2),
    "xsaves": FeatureBit(0xD, 1, EAX, 3),
    "xfd": FeatureBit(0xD, 1, EAX, 4),
    # extended leaves
    "lm": FeatureBit(0x8000_0001, 0, EDX, 29),
    "misalignsse": FeatureBit(0x8000_0001, 0, ECX, 7),
    "xsaveerptr": FeatureBit(0x8000_0008, 0, EBX, 2),
}

#: Leaves whose ECX input selects a subleaf (others ignore ECX).
INDEXED_LEAVES: Final = frozenset({
    0x4, 0x7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1B, 0x1D, 0x1E, 0x1F, 0x20,
    0x23, 0x24, 0x8000_001D, 0x8000_0020, 0x8000_0026,
})
