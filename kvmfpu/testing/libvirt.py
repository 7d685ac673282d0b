"""Real libvirt save images for tests, made by a private libvirtd (root only).

``python -m kvmfpu.testing.libvirt OUT GUEST_ELF`` must run in a mount namespace of its own
(``unshare -m --propagation private``, with KVMFPU_PARENT_MNTNS naming the caller's
/proc/self/ns/mnt so it can tell): it mounts fresh /run, /var/lib/libvirt,
/var/cache/libvirt and /var/log/libvirt and a copy of /etc/libvirt with its own qemu.conf,
so the virtlogd and libvirtd it starts (``virtlogd -d``, ``libvirtd -d``) share nothing with
daemons already running on the machine. For each image format it restarts libvirtd with
``save_image_format`` set, boots a TCG domain (``<domain type='qemu'>``, ``<cpu
mode='maximum'>``) running the multiboot guest until it halts, and saves it: ``virsh save``
for every format, ``virsh managedsave`` for raw. The daemons are stopped by their pid files
at the end; the images and a manifest.json (what was made, and why anything was not) are
left in OUT.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FORMATS = ("raw", "xz", "gzip", "bzip2", "lzop", "zstd")
URI = "qemu:///system"


def domain_xml(name: str, kernel: Path) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel></os>
  <cpu mode='maximum' check='none'/>
  <devices>
    <emulator>{shutil.which("qemu-system-x86_64")}</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)


def virsh(*args: str, timeout: float = 120) -> str:
    out = _run("virsh", "-c", URI, *args, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)}: {out.stderr.strip()[-300:]}")
    return out.stdout


def _private_dirs(scratch: Path) -> None:
    for where in ("/run", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt"):
        os.makedirs(where, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "kvmfpu-libvirt", where], check=True)
    etc = scratch / "etc-libvirt"
    if etc.exists():
        shutil.rmtree(etc)
    shutil.copytree("/etc/libvirt", etc, symlinks=True)
    subprocess.run(["mount", "--bind", str(etc), "/etc/libvirt"], check=True)


def _qemu_conf(fmt: str) -> None:
    # Root and no security driver: the guest ELF and the images live in a private tmp dir.
    Path("/etc/libvirt/qemu.conf").write_text(
        f'save_image_format = "{fmt}"\nuser = "root"\ngroup = "root"\n'
        'dynamic_ownership = 0\nsecurity_driver = "none"\n'
    )


def _pid(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def _stop(pidfile: str) -> None:
    pid = _pid(pidfile)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def _destroy_all() -> None:
    """Stop every domain this libvirtd runs (only this run's: the daemon is private)."""
    out = _run("virsh", "-c", URI, "list", "--name", timeout=60)
    for name in out.stdout.split():
        _run("virsh", "-c", URI, "destroy", name, timeout=60)


def _start_libvirtd() -> None:
    subprocess.run(["libvirtd", "-d"], check=True, timeout=60)
    for _ in range(400):
        if _run("virsh", "-c", URI, "version", timeout=30).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("libvirtd did not answer")


def _boot(name: str, kernel: Path, scratch: Path) -> None:
    xml = scratch / f"{name}.xml"
    xml.write_text(domain_xml(name, kernel))
    virsh("create", str(xml))
    for _ in range(300):  # the guest sits in its HLT loop
        regs = virsh("qemu-monitor-command", name, "--hmp", "info registers")
        if "HLT=1" in regs:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{name}: the guest did not reach its HLT")


def make(out: Path, kernel: Path) -> dict[str, Any]:
    """Every image this libvirt makes, by name, with the failures (never raises)."""
    scratch = out / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    made: dict[str, Any] = {
        "images": {},
        "failures": {},
        "libvirtd": _run("libvirtd", "--version").stdout.strip(),
    }
    try:
        _private_dirs(scratch)
        subprocess.run(["virtlogd", "-d"], check=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        made["failures"]["setup"] = str(exc)
        return made
    try:
        for fmt in FORMATS:
            try:
                _qemu_conf(fmt)
                _start_libvirtd()
                name = f"kvmfpu-save-{fmt}"
                _boot(name, kernel, scratch)
                target = out / f"save-{fmt}.img"
                virsh("save", name, str(target), timeout=300)
                made["images"][f"save-{fmt}"] = str(target)
                if fmt == "raw":
                    name = "kvmfpu-managed"
                    xml = scratch / f"{name}.xml"
                    xml.write_text(domain_xml(name, kernel))
                    virsh("define", str(xml))
                    virsh("start", name)
                    for _ in range(300):
                        if "HLT=1" in virsh("qemu-monitor-command", name, "--hmp", "info registers"):
                            break
                        time.sleep(0.05)
                    virsh("managedsave", name, timeout=300)
                    saved = Path(f"/var/lib/libvirt/qemu/save/{name}.save")
                    shutil.copyfile(saved, out / "managedsave-raw.img")
                    made["images"]["managedsave-raw"] = str(out / "managedsave-raw.img")
                    virsh("managedsave-remove", name)
                    virsh("undefine", name)
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                made["failures"][fmt] = str(exc)[-400:]
            finally:
                _destroy_all()  # a domain whose save failed would outlive libvirtd
                _stop("/run/libvirtd.pid")
    finally:
        _stop("/run/virtlogd.pid")
    return made


def main() -> int:
    out, kernel = Path(sys.argv[1]), Path(sys.argv[2])
    # Mounting over /run outside a namespace of its own would hide the machine's daemons:
    # the caller names its namespace, and this one must differ from it.
    parent = os.environ.get("KVMFPU_PARENT_MNTNS")
    if not parent or os.readlink("/proc/self/ns/mnt") == parent:
        print(
            "run me under `unshare -m --propagation private` with KVMFPU_PARENT_MNTNS set to "
            "the caller's /proc/self/ns/mnt",
            file=sys.stderr,
        )
        return 2
    made = make(out, kernel)
    (out / "manifest.json").write_text(json.dumps(made, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
