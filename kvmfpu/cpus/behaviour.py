"""How a processor family executes the XSAVE family where the SDM leaves a choice.

CPUID does not enumerate these; they are per-vendor facts with their sources:

* AMD: measured on the kvmfpu development machine (AMD EPYC, family 1Ah model 02h, Zen 5)
  by the real-CPU probe (``tests/native``). XRSTOR compares the loaded state with its
  initial configuration to set XINUSE; XGETBV(1) reports XINUSE[1] when MXCSR != 1F80h
  (XSAVE/XSAVEOPT still write XSTATE_BV[1] from the XMM registers alone); FOP, FIP and FDP
  are only retained when an unmasked x87 exception is pending (FSW.ES), even with
  CPUID 8000_0008h:EBX[2] XSaveErPtr set; FIP/FDP are held as linear addresses,
  sign-extended from the top implemented bit: 57 bits on Zen 5 (LA57), 48 on Zen 3 (no
  LA57); the 32-bit forms keep FCS/FDS. PKRU stays marked modified after XRSTOR: XSAVEOPT
  to the address of the last XRSTOR still writes PKRU when it is in use, while it skips
  the unmodified XMM and YMM state (Zen 3). XSAVE, XSAVEOPT and XSAVEC write only bytes 3:0 of the
  8-byte PKRU component, leaving bytes 7:4 as they were in memory (measured on AMD EPYC
  family 19h model 01h, Zen 3, where the guest kernel enables PKU; the Zen 4/5 development
  machines' guests had no PKU).
* Intel: the SDM's stated behaviour and Bochs ``cpu/xsave.cc`` (``xrstor_x87_state``):
  XRSTOR with XSTATE_BV[i]=1 sets XINUSE[i] (SDM §13.6 allows keeping XINUSE[i]=1 for
  init values); full 64-bit FIP/FDP; FCS/FDS saved as zero when CPUID.7.0:EBX[13]
  ("deprecates FPU CS and FPU DS") is set. The whole 8-byte PKRU component is written
  (bytes 7:4 as zero): the SDM's layout, not measured on an Intel part here.
* Both: FCW reserved bits 6 (reads 1), 7 and 13-15 (read 0); FSW.ES and FSW.B recomputed
  from the unmasked exception flags; FOP is 11 bits (Bochs; seen on Zen 5).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CoreBehaviour:
    vendor: str
    mxcsr_mask: int                  # FXSAVE's MXCSR_MASK: reserved-bit check for MXCSR
    xinuse_compares_init: bool       # XINUSE[i] = (component != init) rather than = XSTATE_BV[i]
    xgetbv1_sse_counts_mxcsr: bool   # XGETBV(1) bit 1 also set by MXCSR != 1F80h
    x87_pointers_need_es: bool       # FOP/FIP/FDP discarded unless FSW.ES
    x87_pointer_bits: int            # width of FIP/FDP before sign extension
    zero_fcs_fds: bool               # 32-bit forms store FCS/FDS as 0
    pkru_save_bytes: int             # bytes of the PKRU component a save writes (4 or 8)
    pkru_stays_modified: bool        # XRSTOR leaves XMODIFIED[9] set (no XSAVEOPT skip)
    source: str


def mxcsr_mask_for(vendor: str, misalignsse: bool) -> int:
    """MXCSR_MASK as FXSAVE reports it.

    0xFFFF: every processor with DAZ (all SSE2 parts). AMD adds bit 17 (MM, misaligned SSE
    exception mask) where CPUID 8000_0001h:ECX[7] MisAlignSse is set: 0x2FFFF, as the
    development machine's FXSAVE and KVM_GET_XSAVE show.
    """
    return 0x2FFFF if vendor == "AuthenticAMD" and misalignsse else 0xFFFF


def behaviour_for(vendor: str, *, misalignsse: bool, zero_fcs_fds: bool,
                  la57: bool = False) -> CoreBehaviour:
    amd = vendor in ("AuthenticAMD", "HygonGenuine")
    if amd:
        return CoreBehaviour(
            vendor=vendor,
            mxcsr_mask=mxcsr_mask_for("AuthenticAMD", misalignsse),
            xinuse_compares_init=True,
            xgetbv1_sse_counts_mxcsr=True,
            x87_pointers_need_es=True,
            x87_pointer_bits=57 if la57 else 48,
            zero_fcs_fds=False,
            pkru_save_bytes=4,
            pkru_stays_modified=True,
            source="measured on AMD Zen 5 (family 1Ah model 02h) and Zen 3 (19h/01h) with tests/native",
        )
    return CoreBehaviour(
        vendor=vendor,
        mxcsr_mask=mxcsr_mask_for(vendor, misalignsse),
        xinuse_compares_init=False,
        xgetbv1_sse_counts_mxcsr=False,
        x87_pointers_need_es=False,
        x87_pointer_bits=64,
        zero_fcs_fds=zero_fcs_fds,
        pkru_save_bytes=8,
        pkru_stays_modified=False,
        source="Intel SDM Vol.1 §13.6-13.8 and Bochs cpu/xsave.cc",
    )
