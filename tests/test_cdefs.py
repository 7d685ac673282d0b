"""cdefs/kvm_xstate.h against the system's <linux/kvm.h>: every struct size, every field
offset (nested fields included) and every constant, compiled through cffi.

Skips without a C compiler or the kernel headers (Debian: linux-libc-dev).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmfpu import uapi

HEADER = Path("/usr/include/linux/kvm.h")


def fields(ffi: Any, ctype: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every field path of a struct, descending into nested structs (not arrays)."""
    for name, f in ctype.fields:
        path = (*prefix, name)
        yield path
        if f.type.kind == "struct":
            yield from fields(ffi, f.type, path)


def structs() -> list[str]:
    return re.findall(r"^struct (\w+) \{", uapi.cdefs_text(), re.M)


def constants() -> list[str]:
    return [n for n in re.findall(r"^#define (\w+)", uapi.cdefs_text(), re.M)]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cffi = pytest.importorskip("cffi")
    if not HEADER.exists():
        pytest.skip(f"{HEADER} is missing (kernel headers not installed)")
    if not (shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")):
        pytest.skip("no C compiler")
    ffi = uapi.ffi()
    sizes = [f"sizeof(struct {s})" for s in structs()]
    offsets = [f"offsetof(struct {s}, {'.'.join(p)})"
               for s in structs() for p in fields(ffi, ffi.typeof(f"struct {s}"))]
    consts = [f"(unsigned long long)({c})" for c in constants()]
    builder = cffi.FFI()
    builder.cdef(f"extern size_t kvmfpu_sizes[{len(sizes)}];"
                 f"extern size_t kvmfpu_offsets[{len(offsets)}];"
                 f"extern unsigned long long kvmfpu_consts[{len(consts)}];")
    builder.set_source("_kvmfpu_cdefs_check", "#include <stddef.h>\n#include <linux/kvm.h>\n"
                       f"size_t kvmfpu_sizes[] = {{{', '.join(sizes)}}};\n"
                       f"size_t kvmfpu_offsets[] = {{{', '.join(offsets)}}};\n"
                       f"unsigned long long kvmfpu_consts[] = {{{', '.join(consts)}}};\n")
    out = tmp_path_factory.mktemp("cdefs")
    try:
        lib_path = builder.compile(tmpdir=str(out), verbose=False)
    except Exception as exc:   # no compiler toolchain usable here
        pytest.skip(f"cannot compile against {HEADER}: {exc}")
    import importlib.util
    spec = importlib.util.spec_from_file_location("_kvmfpu_cdefs_check", lib_path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lib


def test_struct_sizes(system: Any) -> None:
    ffi = uapi.ffi()
    for i, s in enumerate(structs()):
        assert ffi.sizeof(f"struct {s}") == system.kvmfpu_sizes[i], s


def test_field_offsets(system: Any) -> None:
    ffi = uapi.ffi()
    i = 0
    for s in structs():
        for path in fields(ffi, ffi.typeof(f"struct {s}")):
            assert ffi.offsetof(f"struct {s}", *path) == system.kvmfpu_offsets[i], (s, path)
            i += 1
    assert i > 60


def test_constants(system: Any) -> None:
    for i, name in enumerate(constants()):
        assert uapi.const(name) == system.kvmfpu_consts[i], name


def test_request_numbers_follow_the_ioc_encoding() -> None:
    """Independent of the header: each number is _IOC(dir, KVMIO, nr, sizeof(struct))."""
    r = uapi.requests()
    assert r["KVM_GET_XSAVE"] == uapi.ioc(2, 0xA4, uapi.sizeof("kvm_xsave"))
    assert r["KVM_SET_XCRS"] == uapi.ioc(1, 0xA7, uapi.sizeof("kvm_xcrs"))
    assert r["KVM_GET_SUPPORTED_CPUID"] == uapi.ioc(3, 0x05, uapi.sizeof("kvm_cpuid2"))
    assert r["KVM_GET_SREGS"] == uapi.ioc(2, 0x83, uapi.sizeof("kvm_sregs"))
    assert r["KVM_SET_VCPU_EVENTS"] == uapi.ioc(1, 0xA0, uapi.sizeof("kvm_vcpu_events"))
    assert r["KVM_RUN"] == uapi.ioc(0, 0x80, 0)
    assert uapi.const("KVM_CAP_XSAVE2") == uapi.KVM_CAP_XSAVE2
