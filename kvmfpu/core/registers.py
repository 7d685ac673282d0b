"""Registers by name, whole components, and instructions that use components (the
layers above and tests write state through these as instructions would)."""

from __future__ import annotations

from typing import Any

from kvmfpu.arch import legacy
from kvmfpu.arch import xfeatures as xf
from kvmfpu.arch.xfeatures import name_of
from kvmfpu.core.faults import (
    DeviceNotAvailable,
    GeneralProtection,
    InvalidOpcode,
)
from kvmfpu.core.regfile import REGISTERS
from kvmfpu.core.state import (
    _X87,
    CoreState,
    _sext,
)


class Registers(CoreState):
    def _register(self, name: str) -> Any:
        try:
            reg = REGISTERS[name.lower()]
        except KeyError:
            raise KeyError(f"unknown register {name!r}") from None
        for p in reg.pieces:
            if p.bit not in self._rf.ranges:
                raise KeyError(f"{name}: component {name_of(p.bit)} is not on "
                               f"{self.host.name}")
        return reg

    def reg_bytes(self, name: str) -> bytes:
        """The register's bytes, least significant first (``fcs``/``fds`` included)."""
        key = name.lower()
        if key in ("fcs", "fds"):
            return (self._fcs if key == "fcs" else self._fds).to_bytes(2, "little")
        reg = self._register(key)
        out = bytearray()
        for p in reg.pieces:
            s = self._rf.start[p.bit] + p.offset
            out += self._regs[s:s + p.size]
        return bytes(out)

    def reg(self, name: str) -> int:
        """A register's value: x87 (fcw fsw ftw fop fip fdp fcs fds st0-7 mm0-7), mxcsr,
        xmm/ymm/zmm0-31, k0-7, bnd0-3, bndcfgu, bndstatus, pkru, pasid, u_cet, pl0-3_ssp,
        tilecfg, tmm0-7, r16-r31."""
        return int.from_bytes(self.reg_bytes(name), "little")

    def set_reg(self, name: str, value: int | bytes) -> None:
        """Write a register as an instruction would (for tests and the layers above).

        Components it touches are marked modified (XMODIFIED) and in use (XINUSE): on
        processors that track XINUSE by value (AMD), only if the result is not initial.
        x87 fields are held in their canonical form (FCW reserved bits, 11-bit FOP).
        """
        key = name.lower()
        if key in ("fcs", "fds"):
            v = int.from_bytes(value, "little") if isinstance(value, bytes) else value
            setattr(self, "_" + key, v & 0xFFFF)
            self._touch(1)
            return
        reg = self._register(key)
        if not reg.writable:
            raise ValueError(f"{name} is read-only")
        size = reg.size
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            if len(data) != size:
                raise ValueError(f"{name} holds {size} bytes, got {len(data)}")
        else:
            if not 0 <= value < 1 << (8 * size):
                raise ValueError(f"{value:#x} does not fit the {8 * size}-bit register {name}")
            data = value.to_bytes(size, "little")
        if key == "mxcsr" and int.from_bytes(data, "little") & self._mxcsr_rsvd:
            raise GeneralProtection("LDMXCSR", f"MXCSR={int.from_bytes(data, 'little'):#x} sets "
                                               "reserved bits")
        pos = 0
        for p in reg.pieces:
            s = self._rf.start[p.bit] + p.offset
            self._regs[s:s + p.size] = data[pos:pos + p.size]
            pos += p.size
        if reg.mask & 1 and key in ("fcw", "fsw", "fop", "fip", "fdp"):
            self._canon_x87_fields()
        if key == "mxcsr":
            self._xmodified |= xf.SSE   # MXCSR is SSE state but not part of XINUSE[1]
        else:
            self._touch(reg.mask)

    def component_bytes(self, bit: int) -> bytes:
        """The current contents of component ``bit`` as the standard format lays them out
        (x87/SSE: the 512-byte legacy region)."""
        if bit < 2:
            return bytes(self._regs[:legacy.LEGACY_SIZE])
        try:
            s, e = self._rf.ranges[bit][0]
        except KeyError:
            raise KeyError(f"component {name_of(bit)} is not on {self.host.name}") from None
        return bytes(self._regs[s:e])

    def set_component(self, bit: int, data: bytes) -> None:
        """Write a whole extended component (bit >= 2) in its standard layout, as
        instructions writing its registers would (XINUSE/XMODIFIED as for set_reg)."""
        if bit < 2:
            raise ValueError("x87 and SSE live in the legacy region: use set_reg")
        try:
            s, e = self._rf.ranges[bit][0]
        except KeyError:
            raise KeyError(f"component {name_of(bit)} is not on {self.host.name}") from None
        if len(data) != e - s:
            raise ValueError(f"{name_of(bit)} is {e - s} bytes, got {len(data)}")
        self._regs[s:e] = data
        self._touch(1 << bit)

    def use(self, mask: int, mnemonic: str = "instruction") -> None:
        """Execute an instruction that uses components ``mask`` (e.g. TILELOADD: XTILEDATA).

        #UD when a component is not enabled in XCR0; #NM with IA32_XFD_ERR set when one
        is XFD-armed (SDM §13.14); otherwise the components count as modified.
        """
        user = mask & xf.USER_MASK
        if user & ~self._xcr0:
            raise InvalidOpcode(mnemonic, f"{xf.describe_mask(user & ~self._xcr0)} not enabled "
                                          "in XCR0")
        armed = user & self._xfd
        if armed:
            self._xfd_err = armed
            raise DeviceNotAvailable(mnemonic, f"IA32_XFD arms {xf.describe_mask(armed)}; "
                                               f"IA32_XFD_ERR <- {armed:#x}")
        self._xmodified |= mask

    def tilerelease(self) -> None:
        """TILERELEASE: TILECFG and TILEDATA return to their initial configuration
        (XINUSE[18:17] = 0). #UD/#NM as for the other AMX instructions (``use``)."""
        self.use(xf.XTILE, "TILERELEASE")
        for bit in (int(xf.XFeature.XTILECFG), int(xf.XFeature.XTILEDATA)):
            s, e = self._rf.ranges[bit][0]
            self._regs[s:e] = bytes(e - s)
        self._xinuse &= ~xf.XTILE


    def _canon_x87_fields(self) -> None:
        regs = self._regs
        fcw, fsw, ftw, _, fop, fip, fdp = _X87.unpack_from(regs, 0)
        fcw = (fcw & legacy.FCW_KEEP) | legacy.FCW_ONE
        bits_ = self._beh.x87_pointer_bits
        if bits_ < 64:
            fip, fdp = _sext(fip, bits_), _sext(fdp, bits_)
        _X87.pack_into(regs, 0, fcw, fsw, ftw, 0, fop & legacy.FOP_MASK, fip, fdp)

    def _touch(self, mask: int) -> None:
        self._xmodified |= mask
        if self._beh.xinuse_compares_init:
            self._xinuse = (self._xinuse & ~mask) | self._nonzero_components(mask)
        else:
            self._xinuse |= mask

