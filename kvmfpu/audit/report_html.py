"""The audit as one self-contained HTML page: per destination class, how many guests and
files break, grouped by reason, each group listing its files (no scripts, no external
resources; every name and reason escaped, since they come from the user's files)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from html import escape
from typing import Any, Final

from kvmfpu.audit.engine import Audit
from kvmfpu.audit.results import ERROR, ORDER, counts

#: Files listed per reason group (the JSONL has them all).
MAX_LISTED: Final = 200
_CSS: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse}td,th{padding:2px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}
.compatible{color:#1a7f37}.incompatible{color:#b42318}.error{color:#7a4d00}
.cond{color:#8a6d00}details{margin:.4em 0}summary{cursor:pointer}
code{font-size:12px}li{font-family:monospace;font-size:12px}
"""


def render(audit: Audit, rows: list[dict[str, Any]]) -> str:
    from kvmfpu import __version__

    by_dst: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_dst[r["destination"]].append(r)
    # The summary's own figures (guest entries weigh their count), not a second tally.
    weights = {c["destination"]: c["verdicts"] for c in counts(audit)}
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>kvmfpu audit</title>",
        f"<style>{_CSS}</style></head><body><h1>kvmfpu audit</h1>",
        f"<p>{len(audit.items)} guests and files, {len(audit.destinations)} destination "
        f"classes, {audit.distinct_tasks} distinct source runs; kvmfpu "
        f"{escape(__version__)}.</p>",
        _overview(audit, weights),
    ]
    for dst in audit.destinations:
        out.append(_section(dst.name, dst.count, dst.endpoint, dst.vmm, weights[dst.name], by_dst[dst.name]))
    out.append("</body></html>")
    return "\n".join(out)


def _anchor(name: str) -> str:
    """A stable fragment id for a class (names are user text)."""
    return hashlib.sha256(name.encode()).hexdigest()[:12]


def _overview(audit: Audit, weights: dict[str, dict[str, int]]) -> str:
    head = "".join(f"<th>{escape(v)}</th>" for v in ORDER)
    body = []
    for dst in audit.destinations:
        n = weights[dst.name]
        cells = "".join(f"<td>{n[v]}</td>" for v in ORDER)
        body.append(
            f"<tr><td><a href='#d-{_anchor(dst.name)}'>{escape(dst.name)}</a></td>"
            f"<td>{dst.count}</td>{cells}</tr>"
        )
    return f"<table><tr><th>destination class</th><th>hosts</th>{head}</tr>" + "".join(body) + "</table>"


def _section(
    name: str, hosts: int, endpoint: str, vmm: str, n: dict[str, int], rows: list[dict[str, Any]]
) -> str:
    broken = n["incompatible"] + n[ERROR]
    out = [
        f"<h2 id='d-{_anchor(name)}'>{escape(name)}</h2>",
        f"<p>{hosts} hosts: <code>{escape(endpoint)}</code>, {escape(vmm)}. "
        f"<span class='incompatible'>{broken} do not come back</span>, "
        f"<span class='cond'>{n['compatible with conditions']} with conditions</span>, "
        f"<span class='compatible'>{n['compatible']} come back whole</span>.</p>",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["verdict"] != "compatible":
            groups[(r["verdict"], r["reasons"][0] if r["reasons"] else "")].append(r)
    rank = {v: i for i, v in enumerate(reversed(ORDER))}
    for (verdict, reason), members in sorted(
        groups.items(), key=lambda kv: (rank[kv[0][0]], -sum(m["count"] for m in kv[1]))
    ):
        weight = sum(m["count"] for m in members)
        cls = "cond" if verdict == "compatible with conditions" else verdict
        items = []
        for m in members[:MAX_LISTED]:
            what = escape(m["name"]) + (f" ({m['count']} guests)" if m["count"] > 1 else "")
            repro = f"<br><code>{escape(m['reproduce'])}</code>" if m.get("reproduce") else ""
            items.append(f"<li>{what}{repro}</li>")
        more = len(members) - MAX_LISTED
        if more > 0:
            items.append(f"<li>... and {more} more (see the JSON Lines rows)</li>")
        out.append(
            f"<details><summary><span class='{escape(cls)}'>{escape(verdict)}</span>: "
            f"{weight} &mdash; {escape(reason)}</summary><ul>{''.join(items)}</ul>"
            "</details>"
        )
    return "\n".join(out)
