"""The matrix's views: folded kernel-pair tables, cell panels (error first, escaped), the
text tables and the JSON body."""

from __future__ import annotations

import json
import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from kvmfpu import cpus
from kvmfpu.migrate.matrix import Matrix, compute
from kvmfpu.migrate.matrix_views import to_json, to_text
from kvmfpu.migrate.report_html import render

HOSTS = ["skylake-sp", "zen3", "zen1", "sapphirerapids"]
#: zen3 -> zen1 under 5.16 fails (KVM_SET_XSAVE: -EINVAL from fpu_copy_uabi_to_guest_fpstate,
#: ea4d6938d4c0: XSTATE_BV has PKRU outside zen1's supported XCR0) and works from 5.17 on
#: (tests/migrate/test_matrix.py, tests/cli/test_migrate.py); 6.1 and 6.6 behave alike here.
KERNELS = ["5.16", "6.6", "5.16:6.6", "6.1"]


@pytest.fixture(scope="module")
def matrix() -> Matrix:
    return compute("EPYC", HOSTS, KERNELS)


def _table(m: Matrix, pair: tuple[str, str]) -> list[str]:
    return [m.cell(pair, s, d).verdict for s in m.hosts for d in m.hosts]


def test_folds_group_exactly_the_identical_tables(matrix: Matrix) -> None:
    groups = matrix.folds()
    assert sorted(p for g in groups for p in g) == sorted(matrix.pairs)  # a partition
    for g in groups:
        assert all(_table(matrix, p) == _table(matrix, g[0]) for p in g)
    firsts = [g[0] for g in groups]
    for i, a in enumerate(firsts):
        for b in firsts[i + 1 :]:
            assert _table(matrix, a) != _table(matrix, b)
    assert [("6.6", "6.6"), ("6.1", "6.1")] in groups
    assert matrix.cell(("5.16", "5.16"), "zen3", "zen1").verdict == "incompatible"
    assert matrix.cell(("6.6", "6.6"), "zen3", "zen1").verdict == "compatible"


def test_the_text_view_shows_each_group_once_with_a_note(matrix: Matrix) -> None:
    text = to_text(matrix)
    groups = matrix.folds()
    titles = [line for line in text.splitlines() if line.startswith(("kernel ", "source kernel"))]
    assert len(titles) == len(groups)
    assert "kernel 6.6\n  (the same verdicts in every cell under: 6.1)" in text
    assert "kernel 6.1\n" not in text
    # zen3's row under 6.6 (rows and columns in host order: Intel by generation, then AMD).
    assert matrix.hosts == ["skylake-sp", "sapphirerapids", "zen1", "zen3"]
    six = text[text.index("kernel 6.6") :]
    row = next(line for line in six.splitlines() if line.startswith("4 zen3"))
    assert row.split()[2:] == [
        {"compatible": "o", "incompatible": "X"}[matrix.cell(("6.6", "6.6"), "zen3", d).verdict]
        for d in matrix.hosts
    ]


def _panel(page: str, head: str) -> str:
    at = page.index(f'aria-label="{head}"')
    return page[at : page.index("</details>", at)]


def test_panel_has_error_first_then_findings_scope_advice_reproduce(matrix: Matrix) -> None:
    page = render(matrix)
    # skylake-sp -> zen1 under 5.16: the same EINVAL, and harmless notes (features QEMU drops).
    panel = _panel(page, "skylake-sp@5.16 \u2192 zen1@5.16: incompatible")
    order = [
        panel.index(x)
        for x in (
            "<h3>Why not</h3>",
            "<h3>Other findings (harmless)</h3>",
            "<h3>Checked</h3>",
            "<h3>Not checked</h3>",
            "<h3>Advice</h3>",
            "<h3>Reproduce with</h3>",
        )
    ]
    assert order == sorted(order)
    why = panel[order[0] : order[1]]
    assert "<dt>errno</dt><dd>EINVAL</dd>" in why
    assert "<dt>kernel function</dt><dd>fpu_copy_uabi_to_guest_fpstate</dd>" in why
    assert "<dt>condition</dt><dd>XSTATE_BV sets 0x200 (pkru)" in why
    # The advice this matrix already holds: the same hosts work under 6.6 (and 6.1).
    assert "do better under kernels 6.6: compatible; 6.1: compatible" in panel
    cmd = unescape(re.search(r"<pre><code>(.*?)</code></pre>", panel).group(1))  # type: ignore[union-attr]
    assert cmd == (
        "kvmfpu migrate --src skylake-sp@5.16 --dst zen1@5.16 --guest EPYC-v1 --vmm qemu@11.0 --no-advice"
    )
    # A compatible cell: no error section, its reason, no advice.
    ok = _panel(page, "zen1@6.6 \u2192 zen3@6.6: compatible")
    assert "Why not" not in ok and "<h3>Advice</h3>" not in ok
    assert "arrives intact" in ok and "<h3>Reproduce with</h3>" in ok


def test_panels_are_details_elements_not_only_tooltips(matrix: Matrix) -> None:
    page = render(matrix)
    cells = re.findall(r"<td class=\"(?:ok|cond|fail)\">(.*?)</td>", page, re.S)
    assert len(cells) == len(matrix.hosts) ** 2 * len(matrix.folds())
    for c in cells:
        assert c.startswith("<details><summary ") and c.endswith("</details>")
        assert '<div class="panel">' in c


def _evil_host(tmp_path: Path) -> str:
    doc = json.loads((Path(cpus.__file__).parent / "data" / "zen1.json").read_text())
    doc["name"] = "<script>x</script>\"'&amp;"
    path = tmp_path / "evil <u>.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_everything_from_the_user_is_escaped(tmp_path: Path) -> None:
    evil = _evil_host(tmp_path)
    m = compute("EPYC", [evil, "zen3"], ["5.16"])
    page = render(m)
    for raw in ("<script", "<u>", "\"'&amp;"):
        assert raw not in page
    assert "&lt;script&gt;x&lt;/script&gt;&quot;&#x27;&amp;amp;" in page
    # The reproduce command carries the file's path, shell-quoted, HTML-escaped.
    assert "&#x27;" in page and "evil &lt;u&gt;.json@5.16" in page
    # The text view: a newline in a host name cannot start a line of its own (host files
    # refuse such names; a model built in Python can still carry one).
    zen1 = cpus.load("zen1")
    odd = cpus.HostModel(zen1.table, name="two\nlines")
    text = to_text(compute("EPYC", [odd, "zen3"], ["6.6"]))
    assert "two\\nlines" in text and "\nlines" not in text


def test_json_body_keeps_every_cell_and_names_the_folds(matrix: Matrix) -> None:
    doc = to_json(matrix)
    assert doc["verdicts"] == len(doc["cells"]) == len(HOSTS) ** 2 * len(KERNELS)
    assert {
        "pairs": [{"source": "6.6", "destination": "6.6"}, {"source": "6.1", "destination": "6.1"}]
    } in doc["tables"]
    cell = next(
        c
        for c in doc["cells"]
        if (c["source"], c["destination"], c["source_kernel"]) == ("zen3", "zen1", "5.16")
    )
    assert cell["verdict"] == "incompatible"
    assert cell["findings"][0]["level"] == "error"
    assert cell["findings"][0]["errno"] == "EINVAL"
    assert cell["findings"][0]["function"] == "fpu_copy_uabi_to_guest_fpstate"
    assert cell["checked"] and cell["not_checked"]
    levels = [f["level"] for c in doc["cells"] for f in c["findings"]]
    assert "info" in levels
    for c in doc["cells"]:
        ranks = [("error", "condition", "info").index(f["level"]) for f in c["findings"]]
        assert ranks == sorted(ranks)  # errors first


def test_a_folded_cell_whose_reason_differs_says_so() -> None:
    """EPYC-Genoa from zen1 to nehalem is incompatible under 5.15 and 6.0 alike, but the 6.0
    guest had more features to lose (the model's checks, as compute() gives them): the page
    folds the two tables and the panel names 6.0's own reason; where only the kernel
    release in the text differs, nothing is repeated."""
    m = compute("EPYC-Genoa", ["zen1", "nehalem"], ["5.15", "6.0"])
    assert m.folds() == [[("5.15", "5.15"), ("6.0", "6.0")]]
    a, b = m.cell(("5.15", "5.15"), "zen1", "nehalem"), m.cell(("6.0", "6.0"), "zen1", "nehalem")
    assert a.verdict == b.verdict == "incompatible" and a.reason != b.reason
    page = render(m)
    assert page.count('<table class="map">') == 1 and "under: 6.0." in page
    panel = _panel(page, "zen1@5.15 \u2192 nehalem@5.15: incompatible")
    title = "<h3>Under the other kernel pairs of this table: the same verdict, another reason</h3>"
    assert title in panel
    assert panel[panel.index(title) :].split("</ul>")[0].count("<li>6.0: the guest loses ") == 1
    for head in ("zen1@5.15 \u2192 zen1@5.15: compatible", "nehalem@5.15 \u2192 nehalem@5.15: compatible"):
        assert title not in _panel(page, head)


def test_a_reason_differing_only_by_the_kernel_release_is_not_repeated() -> None:
    """Skylake-Server-v5 from kabylake to zen1 under 6.6 and 6.12: the same lost features,
    each reason naming its own destination kernel (the Zen XSAVES erratum, b0563468eeac)."""
    m = compute("Skylake-Server-v5", ["kabylake", "zen1"], ["6.6", "6.12"])
    assert m.folds() == [[("6.6", "6.6"), ("6.12", "6.12")]]
    a, b = m.cell(("6.6", "6.6"), "kabylake", "zen1"), m.cell(("6.12", "6.12"), "kabylake", "zen1")
    assert "destination kernel 6.6 " in a.reason and "destination kernel 6.12 " in b.reason
    assert a.reason.replace("6.6", "6.12") == b.reason
    panel = _panel(render(m), "kabylake@6.6 \u2192 zen1@6.6: incompatible")
    assert "another reason" not in panel


class _Tree(HTMLParser):
    """Checks the tags balance and records what opens each <details>."""

    VOID = frozenset({"meta", "br", "img", "hr", "input", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.first_in_details: list[str] = []
        self._want_first = False
        self.inside_summary: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._want_first:
            self.first_in_details.append(tag)
            self._want_first = False
        if "summary" in self.stack:
            self.inside_summary.append(tag)
        if tag in self.VOID:
            return
        self.stack.append(tag)
        self._want_first = tag == "details"

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()


def test_panels_open_without_script_by_the_summary(matrix: Matrix) -> None:
    """HTML's <details>: its first child <summary> is the control a click or the keyboard
    (Tab, Enter) toggles, with no script (WHATWG HTML, "The details element"); nothing
    interactive sits inside the summary to take the focus from it."""
    tree = _Tree()
    tree.feed(render(matrix))
    tree.close()
    assert tree.stack == []
    assert tree.first_in_details and set(tree.first_in_details) == {"summary"}
    assert not {"a", "button", "input", "details"} & set(tree.inside_summary)
    assert "tabindex" not in render(matrix)
