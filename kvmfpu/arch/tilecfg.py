"""When a 64-byte TILECFG is valid: the one check the emulated core (XRSTOR/XRSTORS of
component 17) and the decoder's anomaly rule both use.

Source: Intel SDM vol. 2, LDTILECFG, "Operation" (and Table 3-10, the memory layout); XRSTOR
applies the same validity when it loads TILECFG and raises #GP on an invalid one (SDM
vol. 1 ch. 13, AMX state; the Bochs model, xsave.cc, does the same). What the pseudocode
checks, in order:

- palette_id (byte 0) above the maximum palette (1: CPUID.(EAX=1DH,ECX=0).EAX on every AMX
  part; "the only legal non-INIT value for palette_id is 1"), or not enabled in XCR0 (the
  caller: XRSTOR loads component 17 only when XCR0[17] is set);
- palette_id 0 is the INIT state: nothing else is read, so reserved bytes and tile fields
  set under palette 0 are no error (TILECFG and TILEDATA load as zeros);
- palette 1: bytes 2-15 zero; each of the 8 tiles' bytes per row (16-31) at most 64 and
  bytes 32-47 zero; each tile's rows (48-55) at most 16 and bytes 56-63 zero; and for each
  tile rows and bytes per row both zero or both non-zero. start_row (byte 1) is not checked.
"""

from __future__ import annotations

from typing import Final

#: Palette 1 (CPUID leaf 1DH subleaf 1 on Sapphire Rapids to Granite Rapids): 8 tiles of at
#: most 16 rows of 64 bytes.
MAX_PALETTE: Final = 1
MAX_NAMES: Final = 8
BYTES_PER_ROW: Final = 64
MAX_ROWS: Final = 16


def problem(cfg: bytes) -> str | None:
    """Why XRSTOR (or LDTILECFG) would raise #GP loading ``cfg``, or None when valid."""
    if len(cfg) != 64:
        return f"{len(cfg)} bytes, not the 64 of a tile configuration"
    palette = cfg[0]
    if palette > MAX_PALETTE:
        return f"palette {palette} is not supported (the only non-INIT palette is 1)"
    if palette == 0:
        return None  # INIT: the rest is not read
    if any(cfg[2:16]):
        return "reserved bytes 2-15 are not zero"
    if any(cfg[16 + 2 * MAX_NAMES : 48]):
        return "reserved bytes 32-47 are not zero"
    if any(cfg[48 + MAX_NAMES : 64]):
        return "reserved bytes 56-63 are not zero"
    for n in range(MAX_NAMES):
        colsb = int.from_bytes(cfg[16 + 2 * n : 18 + 2 * n], "little")
        rows = cfg[48 + n]
        if colsb > BYTES_PER_ROW:
            return f"tile {n}: {colsb} bytes per row (at most {BYTES_PER_ROW})"
        if rows > MAX_ROWS:
            return f"tile {n}: {rows} rows (at most {MAX_ROWS})"
        if (rows == 0) != (colsb == 0):
            return f"tile {n}: rows={rows} and bytes per row={colsb} must both be zero or not"
    return None
