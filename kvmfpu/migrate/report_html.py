"""The matrix as one self-contained HTML page: a heat map per group of kernel pairs with the
same verdicts (rows: source host, columns: destination host, by vendor and generation), a
legend, and for each cell an expandable panel (<details>: opens by click or keyboard, no
script) with the error first, the other findings, what was and was not checked, the advice
and the `kvmfpu migrate` command that gives the verdict. No scripts, fonts or images from
the network; every text from the check or the user (host names, reasons) is escaped."""

from __future__ import annotations

from html import escape

from kvmfpu import __version__
from kvmfpu.migrate.host_order import generation_key
from kvmfpu.migrate.matrix import Cell, Matrix, Pair, pair_label
from kvmfpu.migrate.matrix_views import guest_lines
from kvmfpu.migrate.report import Finding

#: verdict: (CSS class, glyph)
_STYLE = {
    "compatible": ("ok", "\u2713"),
    "compatible with conditions": ("cond", "!"),
    "incompatible": ("fail", "\u2717"),
}

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #111; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 28px 0 8px; }
p.meta { color: #444; margin: 0 0 12px; }
p.fold { margin: 0 0 8px; color: #333; }
table.map { border-collapse: collapse; }
table.map th { font-weight: 600; padding: 2px 6px; white-space: nowrap; }
table.map th.col { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left;
                   vertical-align: bottom; }
table.map th.row { text-align: right; }
table.map td { width: 26px; height: 26px; padding: 0; text-align: center;
               border: 1px solid #fff; font-weight: 700; position: relative; }
.ok { background: #2e7d32; color: #ffffff; }
.cond { background: #f9a825; color: #000000; }
.fail { background: #c62828; color: #ffffff; }
td > details > summary { display: block; list-style: none; width: 26px; height: 26px;
                         line-height: 26px; cursor: pointer; }
td > details > summary::-webkit-details-marker { display: none; }
td > details > summary:focus-visible { outline: 3px solid #1565c0; outline-offset: -3px; }
td > details[open] > summary { outline: 3px solid #111; outline-offset: -3px; }
.panel { position: absolute; z-index: 10; top: 27px; left: 0; width: 560px; max-height: 460px;
         overflow: auto; padding: 8px 12px; text-align: left; font-weight: 400;
         background: #fffbea; color: #111; border: 1px solid #777;
         box-shadow: 0 4px 14px rgba(0, 0, 0, 0.25); }
.panel h3 { font-size: 13px; margin: 10px 0 2px; }
.panel ul { margin: 2px 0; padding-left: 18px; }
.panel dl { margin: 2px 0 4px; display: grid; grid-template-columns: max-content 1fr;
            column-gap: 8px; }
.panel dt { color: #555; }
.panel dd { margin: 0; }
.panel pre { white-space: pre-wrap; word-break: break-all; background: #f1f1f1;
             padding: 4px 6px; margin: 2px 0; }
.legend span { display: inline-block; padding: 2px 10px; margin-right: 10px; border-radius: 3px; }
.corner { font-size: 12px; color: #444; text-align: left !important; }
table.hosts td, table.hosts th { padding: 1px 8px; text-align: left; }
"""


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def render(m: Matrix) -> str:
    counts = m.counts()
    total = m.count
    rate = total / m.seconds if m.seconds else 0.0
    n = len(m.hosts)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>kvmfpu matrix: {_e(m.guest_label)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Migration matrix for guest <code>{_e(m.guest_label)}</code></h1>",
        f'<p class="meta">VMM: {_e(m.vmm)} &middot; {n} hosts &times; {n} hosts &times; '
        f"{len(m.pairs)} kernel pair(s) = {total} verdicts in {m.seconds:.2f} s "
        f"({rate:,.0f}/s) &middot; kvmfpu {_e(__version__)}</p>",
        _legend(counts),
        '<p class="meta">Rows: source host; columns: destination host. Open a cell (click '
        "it, or Tab to it and press Enter) for its details and the command that reproduces "
        "it. Each verdict comes from running the path on the models (guest CPUID, save, "
        "transport, KVM_SET_* in the VMM's order, register and guest-restore checks).</p>",
    ]
    out.append(_per_source(m))
    for group in m.folds():
        out.append(_table(m, group))
    out.append(_hosts(m))
    out.append("</body></html>")
    return "\n".join(out)


def _legend(counts: dict[str, int]) -> str:
    parts = ['<p class="legend">']
    for verdict, (cls, glyph) in _STYLE.items():
        parts.append(f'<span class="{cls}">{glyph} {_e(verdict)} ({counts.get(verdict, 0)})</span>')
    parts.append("</p>")
    return "".join(parts)


def _title(pair: Pair) -> str:
    ks, kd = pair
    return f"source kernel {ks} \u2192 destination kernel {kd}" if ks != kd else f"kernel {ks}"


def _table(m: Matrix, group: list[Pair]) -> str:
    pair = group[0]
    rows = [f"<h2>{_e(_title(pair))}</h2>"]
    if len(group) > 1:
        others = ", ".join(_e(pair_label(p)) for p in group[1:])
        rows.append(
            f'<p class="fold">The same verdict in every cell under: {others}. The '
            f"panels show {_e(pair_label(pair))}'s checks (and where another pair's "
            "reason differs); the CSV and JSON list every pair's cells.</p>"
        )
    rows += ['<table class="map">', '<tr><th class="corner">source \u2193 / destination \u2192</th>']
    rows += [f'<th class="col" scope="col">{_e(h)}</th>' for h in m.hosts]
    rows.append("</tr>")
    for s in m.hosts:
        rows.append(f'<tr><th class="row" scope="row">{_e(s)}</th>')
        for d in m.hosts:
            rows.append(_td(m, m.cell(pair, s, d), group))
        rows.append("</tr>")
    rows.append("</table>")
    return "".join(rows)


def _td(m: Matrix, c: Cell, group: list[Pair]) -> str:
    cls, glyph = _STYLE[c.verdict]
    head = f"{c.src}@{c.src_kernel} \u2192 {c.dst}@{c.dst_kernel}: {c.verdict}"
    tip = "\n".join([head, *c.findings] if c.findings else [head, c.reason])
    return (
        f'<td class="{cls}"><details><summary title="{_e(tip)}" aria-label="{_e(head)}">'
        f'{glyph}</summary><div class="panel">{_panel(m, c, group, head)}</div>'
        "</details></td>"
    )


def _finding(f: Finding) -> str:
    facts = [
        ("errno", f.errno),
        ("kernel function", f.function),
        ("condition", f.condition),
        ("commit", f.commit),
    ]
    dl = "".join(f"<dt>{name}</dt><dd>{_e(v)}</dd>" for name, v in facts if v)
    return f"<li>[{_e(f.stage)}] {_e(f.text)}" + (f"<dl>{dl}</dl>" if dl else "") + "</li>"


def _list(title: str, items: list[str]) -> str:
    if not items:
        return ""
    return f"<h3>{_e(title)}</h3><ul>" + "".join(items) + "</ul>"


def _panel(m: Matrix, c: Cell, group: list[Pair], head: str) -> str:
    parts = [f"<p><b>{_e(head)}</b></p>"]
    for level, title in (
        ("error", "Why not"),
        ("condition", "Conditions"),
        ("info", "Other findings (harmless)"),
    ):
        parts.append(_list(title, [_finding(f) for f in c.details if f.level == level]))
    if not any(f.level != "info" for f in c.details):
        parts.append(f"<p>{_e(c.reason)}</p>")
    parts.append(_list("Checked", [f"<li>{_e(x)}</li>" for x in c.scope.checked]))
    parts.append(_list("Not checked", [f"<li>{_e(x)}</li>" for x in c.scope.not_checked]))
    parts.append(_list("Advice", _advice(m, c)))
    differ = []
    for pair in group[1:]:
        other = m.cell(pair, c.src, c.dst)
        if not _same_reason(c, other):
            differ.append(f"<li>{_e(pair_label(pair))}: {_e(other.reason)}</li>")
    parts.append(
        _list("Under the other kernel pairs of this table: the same verdict, another reason", differ)
    )
    parts.append(f"<h3>Reproduce with</h3><pre><code>{_e(m.reproduce(c))}</code></pre>")
    return "".join(parts)


def _same_reason(a: Cell, b: Cell) -> bool:
    """The same reason but for the kernel releases it names."""
    text = b.reason
    for theirs, ours in zip(b.pair, a.pair, strict=True):
        if theirs != ours:
            text = text.replace(theirs, ours)
    return text == a.reason


def _advice(m: Matrix, c: Cell) -> list[str]:
    if c.verdict == "compatible":
        return []
    items = [f"<li>{_e(a.kind)}: {_e(a.change)} \u2192 {_e(a.verdict)} ({_e(a.why)})</li>" for a in c.advice]
    better = m.better_elsewhere(c)
    if better:
        shown = "; ".join(f"{_e(pair_label(p))}: {_e(v)}" for p, v in better)
        items.append(f"<li>In this matrix the same hosts do better under kernels {shown}.</li>")
    if not m.advised:
        items.append(
            "<li>The command below without <code>--no-advice</code> re-runs the check "
            "with one thing changed (guest model, kernel, QEMU option, VMM) and lists "
            "what would work; <code>kvmfpu matrix --advice</code> does it for every "
            "cell.</li>"
        )
    return items


def _per_source(m: Matrix) -> str:
    """The guest CPU each source gives, when it is not one CPU everywhere."""
    lines = guest_lines(m)
    if not lines:
        return ""
    items = "".join(f"<li><code>{_e(x.strip())}</code></li>" for x in lines[1:])
    return f'<p class="meta">{_e(lines[0])}</p>' + (f"<ul>{items}</ul>" if items else "")


def _hosts(m: Matrix) -> str:
    rows = [
        "<h2>Hosts, by vendor and generation</h2>",
        '<table class="hosts">',
        "<tr><th>host</th><th>vendor</th><th>family</th><th>model</th><th>stepping</th>"
        "<th>given as</th></tr>",
    ]
    for name in m.hosts:
        h = m.models[name]
        fam, mod, step = h.signature
        vendor = h.vendor if generation_key(h) is not None else f"{h.vendor} (not placed: listed last)"
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{_e(vendor)}</td><td>{fam:#x}</td>"
            f"<td>{mod:#x}</td><td>{step}</td><td>{_e(m.given.get(name, name))}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)
