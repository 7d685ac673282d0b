"""The matrix as one self-contained HTML page: a heat map per kernel pair (rows: source
host, columns: destination host), each cell's reasons in its tooltip, a legend. No
scripts, fonts or images from the network."""

from __future__ import annotations

from html import escape

from kvmfpu import __version__
from kvmfpu.migrate.matrix import Matrix

_STYLE = {
    "compatible": ("#2e7d32", "#ffffff", "\u2713", "compatible"),
    "compatible with conditions": ("#f9a825", "#000000", "!", "compatible with conditions"),
    "incompatible": ("#c62828", "#ffffff", "\u2717", "incompatible"),
}

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #111; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 28px 0 8px; }
p.meta { color: #444; margin: 0 0 12px; }
table.map { border-collapse: collapse; }
table.map th { font-weight: 600; padding: 2px 6px; white-space: nowrap; }
table.map th.col { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left;
                   height: 120px; vertical-align: bottom; }
table.map th.row { text-align: right; }
table.map td { width: 26px; height: 26px; text-align: center; border: 1px solid #fff;
               font-weight: 700; cursor: default; }
.legend span { display: inline-block; padding: 2px 10px; margin-right: 10px; border-radius: 3px; }
.corner { font-size: 12px; color: #444; text-align: left !important; }
"""


def render(m: Matrix) -> str:
    counts = m.counts()
    total = m.count
    rate = total / m.seconds if m.seconds else 0.0
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>kvmfpu matrix: {escape(m.guest.label)}</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>Migration matrix for guest <code>{escape(m.guest.label)}</code></h1>",
           f'<p class="meta">VMM: {escape(m.vmm)} &middot; {len(m.hosts)} hosts &times; '
           f"{len(m.hosts)} hosts &times; {len(m.pairs)} kernel pair(s) = {total} verdicts "
           f"in {m.seconds:.2f} s ({rate:,.0f}/s) &middot; kvmfpu {escape(__version__)}</p>",
           _legend(counts)]
    for pair in m.pairs:
        out.append(_table(m, pair))
    out.append("<p class=\"meta\">Rows: source host; columns: destination host. Hover a cell "
               "for its reasons. Each verdict comes from running the path on the models "
               "(guest CPUID, save, transport, KVM_SET_* in the VMM's order, register and "
               "guest-restore checks).</p></body></html>")
    return "\n".join(out)


def _legend(counts: dict[str, int]) -> str:
    parts = ['<p class="legend">']
    for verdict, (bg, fg, glyph, label) in _STYLE.items():
        parts.append(f'<span style="background:{bg};color:{fg}">{glyph} {escape(label)} '
                     f"({counts.get(verdict, 0)})</span>")
    parts.append("</p>")
    return "".join(parts)


def _table(m: Matrix, pair: tuple[str, str]) -> str:
    ks, kd = pair
    title = f"source kernel {ks} \u2192 destination kernel {kd}" if ks != kd else f"kernel {ks}"
    rows = [f"<h2>{escape(title)}</h2>", '<table class="map">',
            '<tr><th class="corner">source \u2193 / destination \u2192</th>']
    rows += [f'<th class="col">{escape(h)}</th>' for h in m.hosts]
    rows.append("</tr>")
    for s in m.hosts:
        rows.append(f'<tr><th class="row">{escape(s)}</th>')
        for d in m.hosts:
            c = m.cell(pair, s, d)
            bg, fg, glyph, label = _STYLE[c.verdict]
            tip = "\n".join([f"{s}@{ks} \u2192 {d}@{kd}: {label}", *c.findings]
                            if c.findings else [f"{s}@{ks} \u2192 {d}@{kd}: {label}", c.reason])
            rows.append(f'<td style="background:{bg};color:{fg}" title="{escape(tip)}">'
                        f"{glyph}</td>")
        rows.append("</tr>")
    rows.append("</table>")
    return "".join(rows)
