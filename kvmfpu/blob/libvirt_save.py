"""libvirt save images (``virsh save``, ``managedsave``, external memory snapshots): libvirt's
header, the domain XML and its save cookie, then the QEMU migration stream, compressed with
the program ``save_image_format`` names, or laid out as mapped-ram ("sparse").

Layout (libvirt src/qemu/qemu_saveimage.h virQEMUSaveHeader, qemu_saveimage.c
virQEMUSaveDataWrite and qemuSaveImageReadHeader): 16 bytes of magic, ``LibvirtQemudSave``
(``LibvirtQemudPart`` while QEMU is still writing: libvirt refuses those as incomplete, and so
does kvmfpu); then u32 version (1 or 2; a larger one is the header of the other byte order,
swapped), data_len, was_running, format (qemu_saveimage_format.h: 0 raw, 1 gzip, 2 bzip2,
3 xz, 4 lzop, 5 zstd, 6 sparse), cookieOffset, and 14 unused u32s, in the writing host's byte
order; then data_len bytes: the domain XML, NUL-terminated, the cookie (an XML document)
from cookieOffset when it is not 0, and zeros (libvirt leaves 64 KiB for edited XML); then
the QEMU stream.

"sparse" (format 6, added to libvirt in 2025 by "Extend the list of formats to include
sparse", libvirt's qemu.conf.in save_image_format: QEMU's mapped-ram, each RAM block's pages
at a fixed file offset) is read from its documented layout (QEMU docs/devel/migration/
mapped-ram.rst, QEMU 9.0+), with the QEMU stream taken to start right after libvirt's data
as for the other formats and its offsets as the file's. libvirt 9.0 and QEMU 7.2 here cannot
write one, so it is tested with the real 7.2 sample rewritten to that layout
(kvmfpu.testing.streams), not with a libvirt-written file.
"""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
from typing import Any, Final

from kvmfpu.blob.errors import InputError
from kvmfpu.blob.stream import Source, sub

MAGIC: Final = b"LibvirtQemudSave"
PARTIAL: Final = b"LibvirtQemudPart"
HEADER_SIZE: Final = 16 + 4 * 5 + 4 * 14
#: QEMU_SAVE_VERSION in libvirt 9.0 and since.
VERSION: Final = 2
FORMATS: Final = ("raw", "gzip", "bzip2", "xz", "lzop", "zstd", "sparse")


def is_save_image(head: bytes) -> bool:
    return head[:16] in (MAGIC, PARTIAL)


def header(src: Source, max_size: int) -> dict[str, Any]:
    """libvirt's header and data (XML, cookie); ``src`` is left at the QEMU stream."""
    raw = src.read(HEADER_SIZE, "libvirt save header")
    if raw[:16] == PARTIAL:
        raise InputError(
            "libvirt save image is incomplete (magic LibvirtQemudPart: QEMU had "
            "not finished writing it; libvirt refuses it too)"
        )
    if raw[:16] != MAGIC:
        raise InputError("not a libvirt save image (no LibvirtQemudSave magic)")
    order = "<"
    version, data_len, was_running, fmt, cookie = struct.unpack_from("<5I", raw, 16)
    if version > VERSION:  # qemuSaveImageReadHeader: the other byte order
        order = ">"
        version, data_len, was_running, fmt, cookie = struct.unpack_from(">5I", raw, 16)
    if not 1 <= version <= VERSION:
        raise InputError(f"libvirt save image version {version} (kvmfpu reads 1 and 2, as libvirt 9.0 does)")
    if not 0 < data_len <= max_size:
        raise InputError(
            f"libvirt save image: {data_len} bytes of domain XML and cookie "
            f"(1 to the {max_size}-byte limit, --max-size)"
        )
    if fmt >= len(FORMATS):
        raise InputError(
            f"libvirt save image: unknown image format {fmt} (libvirt's "
            f"are 0-{len(FORMATS) - 1}: {', '.join(FORMATS)})"
        )
    if cookie > data_len:
        raise InputError(f"libvirt save image: cookie offset {cookie} past its {data_len}-byte data")
    data = src.read(data_len, "libvirt save image's domain XML")
    xml_part = data[:cookie] if cookie else data
    domain_xml = _text(xml_part, "domain XML")
    cookie_xml = _text(data[cookie:], "save cookie") if cookie else None
    return {
        "version": version,
        "byte_order": "little" if order == "<" else "big",
        "data_len": data_len,
        "was_running": bool(was_running),
        "format": FORMATS[fmt],
        "domain_xml": domain_xml,
        "cookie": cookie_xml,
        "stream_offset": HEADER_SIZE + data_len,
    }


def _text(data: bytes, what: str) -> str:
    end = data.find(b"\0")
    text = data[: end if end >= 0 else len(data)]
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"libvirt save image: its {what} is not UTF-8") from None


def cpu_of(domain_xml: str) -> dict[str, str | None] | None:
    """The domain's ``<cpu>`` mode, model (and its fallback) and vendor: what the guest CPU is
    described as, for decode's report (the guest description for validate/migrate is made
    from the whole element by kvmfpu.qemu.libvirt_cpu)."""
    if re.search(r"<!(DOCTYPE|ENTITY)", domain_xml):
        raise InputError(
            "libvirt save image: its domain XML declares a DOCTYPE or entities (libvirt writes neither)"
        )
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as exc:
        raise InputError(f"libvirt save image: unreadable domain XML: {exc}") from None
    cpu = root.find("cpu")
    if cpu is None:
        return None
    model = cpu.find("model")
    vendor = cpu.find("vendor")
    return {
        "mode": cpu.get("mode"),
        "model": None if model is None else (model.text or None),
        "fallback": None if model is None else model.get("fallback"),
        "vendor": None if vendor is None else vendor.text,
    }


def domain_facts(domain_xml: str) -> dict[str, Any]:
    """The domain's name, type (kvm, qemu) and ``<cpu>``."""
    cpu = cpu_of(domain_xml)
    root = ET.fromstring(domain_xml)
    name = root.find("name")
    return {"name": None if name is None else name.text, "type": root.get("type"), "cpu": cpu}


def read(src: Source, max_size: int) -> list[Any]:
    """The vCPUs in a save image: the QEMU stream read after libvirt's header, expanded
    with the image's compression."""
    from kvmfpu.blob import compression, qemu

    info = header(src, max_size)
    facts = domain_facts(info["domain_xml"])
    stream = sub(src, f"{src.name} (QEMU stream)")
    fmt = info["format"]
    try:
        if fmt in ("raw", "sparse"):
            if stream.peek(4) != b"QEVM":
                raise InputError(
                    f"libvirt save image ({fmt}): no QEMU stream at byte {info['stream_offset']}"
                )
            caps = qemu.captures(stream, max_size)
        else:
            found = compression.sniff(stream.peek(compression.PEEK))
            if found != fmt:
                raise InputError(
                    f"the header says {fmt}, but the stream at byte "
                    f"{info['stream_offset']} is {found or 'not'} compressed"
                )
            inner = compression.expand(fmt, stream)
            try:
                caps = qemu.captures(inner, max_size)
            finally:
                inner.close()
    except InputError as exc:
        raise InputError(f"libvirt save image ({fmt}): {exc}") from None
    summary = {k: info[k] for k in ("version", "byte_order", "format", "was_running", "stream_offset")}
    summary.update(
        domain=facts["name"], domain_type=facts["type"], cpu=facts["cpu"], cookie=info["cookie"] is not None
    )
    for cap in caps:
        cap.domain_xml = info["domain_xml"]
        cap.container["libvirt_save"] = summary
        cpu = facts["cpu"]
        model = f" model {cpu['model']}" if cpu is not None and cpu["model"] else ""
        what = "no <cpu> element" if cpu is None else f"<cpu mode={cpu['mode']!r}{model}>"
        cap.notes.insert(
            0,
            f"libvirt save image (version {info['version']}, {fmt}) of domain "
            f"{facts['name']!r} (type {facts['type']}), {what}",
        )
    return caps
