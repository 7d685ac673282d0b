"""The HTML report says what the summary says: per destination class, the same weighted
counts as results.counts (guest entries weigh their count), and every name escaped."""

from __future__ import annotations

import re
from pathlib import Path

from kvmfpu.audit import engine, results
from kvmfpu.audit.inventory import load_fleet, load_population
from kvmfpu.audit.report_html import _anchor, render


def test_overview_is_the_summary(fleet_dir: Path) -> None:
    classes = load_fleet(fleet_dir / "fleet.toml")
    a = engine.run(classes, load_population(fleet_dir / "population.toml", classes))
    html = render(a, results.rows(a))
    for c in results.counts(a):
        row = re.search(rf"<tr><td><a href='#d-{_anchor(c['destination'])}'>.*?</tr>", html)
        assert row is not None, c["destination"]
        cells = [int(x) for x in re.findall(r"<td>(\d+)</td>", row.group(0))]
        assert cells == [c["hosts"], *(c["verdicts"][v] for v in results.ORDER)]
        # 30 "web" guests + 5 "db" guests + 4 files on every destination (the fleet's text)
        assert sum(cells[1:]) == 30 + 5 + 4
    assert "<script" not in html and "notes.txt" in html  # the unreadable file is listed
