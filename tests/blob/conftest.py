from __future__ import annotations

import pathlib
import struct

import pytest

from kvmfpu import Kvm

DATA = pathlib.Path(__file__).parent / "data"


def guest_blob(host: str, kernel: str = "6.6") -> bytes:
    """KVM_GET_XSAVE of a model vCPU whose guest wrote x87, AVX-512, opmask, PKRU (and MPX
    where the host has it)."""
    kvm = Kvm(host, kernel)
    v = kvm.create_vm().create_vcpu()
    v.set_cpuid2(kvm.get_supported_cpuid())
    v.set_sregs(cr4_osxsave=True, cr4_pke=kvm.caps.pku)
    xcr0 = v.gsx & ~(v.gsx & 0x60000 if v.gsx & 0x60000 != 0x60000 else 0)
    v.set_xcrs([(0, xcr0)])
    with v.guest() as g:
        g.set_reg("fcw", 0x027F)
        g.set_reg("xmm1", 0x1234)
        if xcr0 & 0xE0:
            g.set_reg("zmm3", (7 << 500) | 5)
            g.set_reg("k1", 0xFF)
            g.set_reg("zmm20", 9 << 300)
        if xcr0 & 0x200:
            g.set_reg("pkru", 0xC)
        if xcr0 & 0x18:
            g.set_reg("bnd0", (5 << 64) | 3)
    return v.get_xsave()


@pytest.fixture
def data_dir() -> pathlib.Path:
    return DATA


@pytest.fixture(name="guest_blob")
def guest_blob_fixture() -> object:
    return guest_blob


class Containers:
    """Ways users hand kvmfpu an xsave buffer: hex dump dialects, ELF cores, signal frames."""

    @staticmethod
    def hex(data: bytes) -> str:
        return "\n".join(data[i:i + 32].hex() for i in range(0, len(data), 32)) + "\n"

    @staticmethod
    def xxd(data: bytes) -> str:
        lines = []
        for off in range(0, len(data), 16):
            chunk = data[off:off + 16]
            groups = " ".join(chunk[i:i + 2].hex() for i in range(0, len(chunk), 2))
            text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
            lines.append(f"{off:08x}: {groups:<39}  {text}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def gdb(data: bytes, base: int = 0x7FFDDEADB000) -> str:
        lines = []
        for off in range(0, len(data), 8):
            chunk = data[off:off + 8]
            label = f"<buf+{off}>" if off else "<buf>"
            lines.append(f"{base + off:#x} {label}:\t" + "\t".join(f"{b:#04x}" for b in chunk))
        return "\n".join(lines) + "\n"

    @staticmethod
    def note(name: bytes, ntype: int, desc: bytes) -> bytes:
        def pad(b: bytes) -> bytes:
            return b + bytes(-len(b) % 4)
        return struct.pack("<III", len(name) + 1, len(desc), ntype) + pad(name + b"\0") + pad(desc)

    @staticmethod
    def prstatus(pid: int) -> bytes:
        return bytes(32) + struct.pack("<i", pid) + bytes(300)

    @staticmethod
    def elf_core(notes: bytes) -> bytes:
        """A minimal x86-64 ET_CORE file with one PT_NOTE segment."""
        ehdr = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, bytes(7), 4, 62,
                           1, 0, 64, 0, 0, 64, 56, 1, 0, 0, 0)
        phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(notes), 0, 4)
        return ehdr + phdr + notes

    @classmethod
    def core_of(cls, data: bytes, pid: int = 101) -> bytes:
        return cls.elf_core(cls.note(b"CORE", 1, cls.prstatus(pid)) + cls.note(b"LINUX", 0x202, data))

    @staticmethod
    def sigframe(data: bytes, xfeatures: int) -> bytes:
        """``data`` as the kernel lays fpstate in a signal frame: _fpx_sw_bytes at 464,
        FP_XSTATE_MAGIC2 after the xsave area."""
        out = bytearray(data) + struct.pack("<I", 0x46505845)
        struct.pack_into("<IIQI", out, 464, 0x46505853, len(data) + 4, xfeatures, len(data))
        return bytes(out)


@pytest.fixture(scope="session")
def containers() -> type[Containers]:
    return Containers
