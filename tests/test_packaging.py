"""Every package directory ships, and the package data is where the code looks."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(conf["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "kvmfpu").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"
    assert "kvmfpu.cdefs" in listed and (ROOT / "kvmfpu" / "py.typed").exists()


def test_uapi_reads_the_cdefs() -> None:
    from kvmfpu import uapi
    assert uapi.sizeof("kvm_xsave") == 4096 and uapi.sizeof("kvm_xcrs") == 392
    assert uapi.requests()["KVM_GET_XSAVE"] == 0x9000AEA4
