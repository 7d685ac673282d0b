"""An audit's answers: JSON Lines rows (one per file or guest entry and destination class),
the distinct verdicts they point to, the terminal summary, and reading an earlier run's
output back (to resume it).

The JSONL file holds, one JSON object per line, sorted so every engine writes the same
bytes: a header (``kvmfpu-audit/1``: the classes and what was asked), the distinct verdicts
(``kvmfpu-audit-verdict/1``: findings, what was checked and what was not), then the rows
(``kvmfpu-audit-row/1``: verdict, reasons and the command that reproduces it). Their schemas
are kvmfpu/schemas/kvmfpu-audit-*.json.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from kvmfpu.audit.engine import Audit, Item
from kvmfpu.audit.inventory import HostClass
from kvmfpu.audit.work import Outcome
from kvmfpu.blob.errors import InputError
from kvmfpu.migrate.report import RANK

ERROR: Final = "error"
#: Verdicts best first; "error" (the file or guest could not be checked) last.
ORDER: Final = (*RANK, ERROR)
HEADER: Final = "kvmfpu-audit/1"
ROW: Final = "kvmfpu-audit-row/1"
VERDICT: Final = "kvmfpu-audit-verdict/1"
#: One line of an earlier run's output (a row or a verdict is small; a longer line is not ours).
MAX_LINE: Final = 1 << 20


def reproduce(item: Item, dst: HostClass) -> str | None:
    """The ``kvmfpu migrate`` command that gives this row's verdict (for a file with
    several vCPUs, the first vCPU's: ``migrate --blob`` reads one)."""
    if item.guest is None:
        return None
    cmd = [
        "kvmfpu",
        "migrate",
        "--src",
        item.source.endpoint,
        "--dst",
        dst.endpoint,
        "--guest",
        item.guest,
        "--vmm",
        item.source.vmm,
    ]
    if dst.vmm != item.source.vmm:
        cmd += ["--dst-vmm", dst.vmm]
    if item.kind == "file":
        cmd += ["--blob", item.name]
    return shlex.join(cmd)


def _answer(audit: Audit, item: Item, dst: HostClass) -> tuple[str, list[str], list[str], list[str]]:
    """(verdict, reasons, lost features, verdict ids) of one item on one destination: the
    worst vCPU's verdict, the reasons behind it."""
    got = [audit.outcomes[f"{k}/{dst.name}"] for k in item.tasks] if not item.error else []
    if item.error or not got:
        return ERROR, [item.error or "not checked"], [], []
    verdict = max((o.verdict for o in got), key=RANK.__getitem__)
    reasons = list(dict.fromkeys(r for o in got if o.verdict == verdict for r in o.reasons))
    lost = sorted({f for o in got for f in o.lost_features})
    return verdict, reasons[:5], lost, [o.id for o in got]


def rows(audit: Audit) -> list[dict[str, Any]]:
    out = []
    for item in audit.items:
        for dst in audit.destinations:
            verdict, reasons, lost, ids = _answer(audit, item, dst)
            out.append(
                {
                    "schema": ROW,
                    "item": item.id,
                    "kind": item.kind,
                    "name": item.name,
                    "source": item.source.name,
                    "destination": dst.name,
                    "destination_hosts": dst.count,
                    "count": item.count,
                    "guest": item.guest,
                    "vcpus": len(item.signatures),
                    "verdict": verdict,
                    "reasons": reasons,
                    "lost_features": lost,
                    "signatures": list(item.signatures),
                    "verdicts": ids,
                    "notes": list(item.notes),
                    "reproduce": reproduce(item, dst) if not item.error else None,
                }
            )
    return out


def verdicts(audit: Audit) -> list[dict[str, Any]]:
    """The distinct verdicts the rows point to."""
    used = {
        v
        for item in audit.items
        for k in item.tasks
        for d in audit.destinations
        if (v := f"{k}/{d.name}") in audit.outcomes
    }
    return [verdict_line(audit.outcomes[v]) for v in sorted(used)]


def header(audit: Audit, asked: dict[str, Any]) -> dict[str, Any]:
    """The header's body (the CLI puts it in the JSON envelope, kvmfpu.cli.document)."""
    return {
        "classes": [c.to_json() for c in audit.classes],
        "destinations": [c.name for c in audit.destinations],
        **asked,
    }


def jsonl(
    head: dict[str, Any], verdict_lines: Iterable[dict[str, Any]], row_lines: Iterable[dict[str, Any]]
) -> str:
    """The whole file, deterministic: verdicts by id, rows by (item, destination)."""
    vs = sorted({v["id"]: v for v in verdict_lines}.values(), key=lambda v: v["id"])
    rs = sorted(
        {(r["item"], r["destination"]): r for r in row_lines}.values(),
        key=lambda r: (r["item"], r["destination"]),
    )
    dump = json.dumps
    return "".join(dump(x, sort_keys=True) + "\n" for x in (head, *vs, *rs))


@dataclass
class Earlier:
    """What an interrupted (or finished) run wrote."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[dict[str, Any]] = field(default_factory=list)

    def outcomes(self) -> dict[str, Outcome]:
        """The verdicts, as the engine takes them back (``known``)."""
        out = {}
        for v in self.verdicts:
            task, _, dst = v["id"].partition("/")
            try:
                o = Outcome(
                    task,
                    dst,
                    str(v["verdict"]),
                    tuple(v["reasons"]),
                    tuple(v["lost_features"]),
                    tuple(v["findings"]),
                    tuple(v["checked"]),
                    tuple(v["not_checked"]),
                )
            except (KeyError, TypeError):
                raise InputError(
                    f"verdict {v['id'][:60]!r} of the earlier run is incomplete (cannot resume)"
                ) from None
            if o.id == v["id"] and o.verdict in RANK:
                out[o.id] = o
        return out


def verdict_line(o: Outcome) -> dict[str, Any]:
    return {
        "schema": VERDICT,
        "id": o.id,
        "destination": o.destination,
        "verdict": o.verdict,
        "reasons": list(o.reasons),
        "lost_features": list(o.lost_features),
        "findings": list(o.findings),
        "checked": list(o.checked),
        "not_checked": list(o.not_checked),
    }


def read_earlier(text: str, name: str) -> Earlier:
    """The rows and verdicts of an earlier run's JSONL; a torn last line (the run was
    killed mid-write) is dropped, anything else that is not ours is an error."""
    out = Earlier()
    lines = text.split("\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            if len(line) > MAX_LINE:
                raise ValueError("line too long")
            obj = json.loads(line)
        except (ValueError, RecursionError):
            if i == len(lines) and not text.endswith("\n"):
                break  # the line being written when the run stopped
            raise InputError(f"{name}: line {i} is not an audit row (cannot resume)") from None
        kind = obj.get("schema") if isinstance(obj, dict) else None
        if kind == ROW and isinstance(obj.get("item"), str) and isinstance(obj.get("destination"), str):
            out.rows.append(obj)
        elif kind == VERDICT and isinstance(obj.get("id"), str):
            out.verdicts.append(obj)
        elif kind != HEADER:
            raise InputError(f"{name}: line {i} is not from kvmfpu audit (cannot resume)")
    return out


def summary(audit: Audit, top: int = 3) -> str:
    """Per destination class: how many guests and files come back, how many do not, and the
    commonest reasons (guest entries weigh their count)."""
    width = max([len(d.name) for d in audit.destinations] + [17])
    lines = [
        f"{'destination class':<{width}}  {'hosts':>6}  {'ok':>7}  {'cond':>7}  {'fail':>7}  {'error':>6}"
    ]
    for c in counts(audit):
        v = c["verdicts"]
        lines.append(
            f"{c['destination']:<{width}}  {c['hosts']:>6}  {v['compatible']:>7}  "
            f"{v['compatible with conditions']:>7}  {v['incompatible']:>7}  "
            f"{v[ERROR]:>6}"
        )
        for r in c["reasons"][:top]:
            text = r["reason"] if len(r["reason"]) <= 150 else r["reason"][:147] + "..."
            lines.append(f"{'':<{width}}    {r['count']} x {text}")
    return "\n".join(lines)


def counts(audit: Audit) -> list[dict[str, Any]]:
    """The summary as data: per destination class, guests and files by verdict (guest
    entries weigh their count) and the reasons for what does not come back. Computed from
    the items, not the rows (a million files x fifty classes is fifty million rows), and
    items with the same source runs are answered once."""
    groups: Counter[tuple[tuple[str, ...], str | None]] = Counter()
    sample: dict[tuple[tuple[str, ...], str | None], Item] = {}
    for item in audit.items:
        key = (item.tasks, item.error)
        groups[key] += item.count
        sample.setdefault(key, item)
    out = []
    for dst in audit.destinations:
        n: Counter[str] = Counter()
        why: Counter[str] = Counter()
        for key, weight in groups.items():
            verdict, reasons, _, _ = _answer(audit, sample[key], dst)
            n[verdict] += weight
            if verdict in ("incompatible", ERROR):
                why[reasons[0] if reasons else "?"] += weight
        out.append(
            {
                "destination": dst.name,
                "hosts": dst.count,
                "verdicts": {v: n[v] for v in ORDER},
                "reasons": [
                    {"reason": k, "count": c} for k, c in sorted(why.items(), key=lambda kv: (-kv[1], kv[0]))
                ],
            }
        )
    return out
