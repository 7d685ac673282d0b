"""The matrix as a JSON document body (kvmfpu-matrix/1: every cell, no folding) and as text
for a terminal (one table per group of kernel pairs with the same verdicts)."""

from __future__ import annotations

from typing import Any

from kvmfpu.migrate.host_order import generation_key
from kvmfpu.migrate.matrix import Cell, Matrix, pair_label
from kvmfpu.qemu.models import GuestModel

SCHEMA = "kvmfpu-matrix/1"

#: One ASCII character per verdict (the text view; any terminal shows them).
GLYPHS = {"compatible": "o", "compatible with conditions": "!", "incompatible": "X"}


def _pair(pair: tuple[str, str]) -> dict[str, str]:
    return {"source": pair[0], "destination": pair[1]}


def cell_json(m: Matrix, c: Cell) -> dict[str, Any]:
    return {
        "source": c.src,
        "source_kernel": c.src_kernel,
        "destination": c.dst,
        "destination_kernel": c.dst_kernel,
        "verdict": c.verdict,
        "reason": c.reason,
        "findings": [f.to_json() for f in c.details],
        "checked": list(c.scope.checked),
        "not_checked": list(c.scope.not_checked),
        "advice": [a.to_json() for a in c.advice],
        "reproduce": m.reproduce(c),
    }


def to_json(m: Matrix) -> dict[str, Any]:
    """The document's body (cli.document adds the envelope)."""
    hosts = []
    for name in m.hosts:
        h = m.models[name]
        family, model, stepping = h.signature
        hosts.append(
            {
                "name": name,
                "given": m.given.get(name, name),
                "vendor": h.vendor,
                "family": family,
                "model": model,
                "stepping": stepping,
                "placed": generation_key(h) is not None,
            }
        )
    return {
        "guest": _guest_json(m),
        "vmm": m.vmm,
        "hosts": hosts,
        "kernel_pairs": [_pair(p) for p in m.pairs],
        "tables": [{"pairs": [_pair(p) for p in group]} for group in m.folds()],
        "counts": m.counts(),
        "verdicts": m.count,
        "seconds": round(m.seconds, 6),
        "advice_computed": m.advised,
        "cells": [cell_json(m, c) for c in m.cells.values()],
    }


def _guest_json(m: Matrix) -> dict[str, Any]:
    out: dict[str, Any] = {"spec": m.guest.spec, "label": m.guest.label}
    if m.guest_arg is not None:
        out["given"] = m.guest_arg
    out["per_source"] = bool(m.per_source)
    if m.per_source:
        out["on_source"] = [
            {"source": s, "source_kernel": k, **_on_source(g)} for (s, k), g in m.per_source.items()
        ]
    return out


def _on_source(g: GuestModel | str) -> dict[str, str]:
    return {"spec": g.spec, "label": g.label} if isinstance(g, GuestModel) else {"error": g}


def guest_lines(m: Matrix) -> list[str]:
    """What the guest CPU is on each source, when it is not one CPU everywhere."""
    if m.per_source:
        head = (
            "guest CPU per source: libvirt computes host-model (and settles optional features) on "
            "the host the guest starts on, and migration carries that CPU to the destination "
            "(libvirt formatdomain: host-model); each row runs the CPU its source gives:"
        )
        return [head] + [f"  {s}@{k}: {m.source_guest(s, k)}" for s, k in m.per_source]
    if m.guest.passthrough:
        return [
            f"guest CPU per source: {m.guest.label} is each source host's own CPU (QEMU's -cpu host "
            "on the source), carried to the destination"
        ]
    return []


def _printable(text: str) -> str:
    """Control characters in host names (user files) shown as escapes: no forged lines."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def to_text(m: Matrix) -> str:
    """The tables for a terminal: rows are sources, columns the destinations by number."""
    n = len(m.hosts)
    width = len(str(n))
    names = [_printable(h) for h in m.hosts]
    label = max(len(x) for x in names) if names else 0
    legend = ", ".join(f"{g} {v}" for v, g in GLYPHS.items())
    out = [
        f"guest {_printable(m.guest_label)}, VMM {m.vmm}: {n} x {n} hosts x {len(m.pairs)} "
        f"kernel pair(s) = {m.count} verdicts",
        *(_printable(line) for line in guest_lines(m)),
        f"{legend}; rows: source host, columns: destination host (numbered as the rows)",
        "each cell is one `kvmfpu migrate` check; --html and --json give what each checked and "
        "did not, its findings and the command that reproduces it",
    ]
    for group in m.folds():
        first = group[0]
        out.append("")
        title = (
            f"kernel {first[0]}"
            if first[0] == first[1]
            else f"source kernel {first[0]} -> destination kernel {first[1]}"
        )
        out.append(title)
        if len(group) > 1:
            others = ", ".join(pair_label(p).replace("\u2192", "->") for p in group[1:])
            out.append(f"  (the same verdicts in every cell under: {others})")
        out.append(" " * (width + 2 + label) + " ".join(f"{i:>{width}}" for i in range(1, n + 1)))
        for i, s in enumerate(m.hosts):
            row = " ".join(f"{GLYPHS[m.cell(first, s, d).verdict]:>{width}}" for d in m.hosts)
            out.append(f"{i + 1:>{width}} {names[i]:<{label}} {row}")
    return "\n".join(out) + "\n"
