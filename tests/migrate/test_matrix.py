"""The matrix: every cell is a check; the page is self-contained and renders."""

from __future__ import annotations

import csv
import io
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kvmfpu.migrate.check import check
from kvmfpu.migrate.matrix import compute, kernel_pairs, to_csv
from kvmfpu.migrate.report_html import render

HOSTS = ["skylake-sp", "zen3", "zen1", "sapphirerapids"]


@pytest.fixture(scope="module")
def matrix():  # type: ignore[no-untyped-def]
    return compute("EPYC", HOSTS, ["5.16", "6.6", "5.16:6.6"])


def test_cells_agree_with_single_checks(matrix) -> None:  # type: ignore[no-untyped-def]
    assert matrix.count == 4 * 4 * 3
    for (ks, kd, s, d), cell in matrix.cells.items():
        r = check(f"{s}@{ks}", f"{d}@{kd}", "EPYC", advise=False)
        assert (cell.verdict, cell.reason) == (r.verdict, r.reason), (s, d, ks, kd)
    assert matrix.cell(("5.16", "5.16"), "zen3", "zen1").verdict == "incompatible"
    assert matrix.cell(("6.6", "6.6"), "zen3", "zen1").verdict == "compatible"


def test_kernel_pairs() -> None:
    assert kernel_pairs(["6.6", "5.15:6.1"]) == [("6.6", "6.6"), ("5.15", "6.1")]
    with pytest.raises(ValueError):
        kernel_pairs(["6.6:nope"])


def test_csv(matrix) -> None:  # type: ignore[no-untyped-def]
    rows = list(csv.DictReader(io.StringIO(to_csv(matrix))))
    assert len(rows) == matrix.count
    row = next(
        r for r in rows if (r["source"], r["destination"], r["source_kernel"]) == ("zen3", "zen1", "5.16")
    )
    assert row["verdict"] == "incompatible" and "pkru" in row["reason"]


def test_html_is_self_contained(matrix) -> None:  # type: ignore[no-untyped-def]
    page = render(matrix)
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    for needle in ("http://", "https://", "<script", "<link", "@import", "url(", "<img", "src="):
        assert needle not in page
    # One heat map per group of kernel pairs with the same verdicts, and the hosts' table.
    groups = matrix.folds()
    assert page.count('<table class="map">') == len(groups)
    assert page.count("<details>") == len(HOSTS) ** 2 * len(groups)
    shown = {g[0] for g in groups}
    assert "<h2>kernel 5.16</h2>" in page  # the first group's title
    for pair in matrix.pairs:
        if pair not in shown and pair[0] != pair[1]:
            assert f"<h2>source kernel {pair[0]} \u2192 destination kernel {pair[1]}</h2>" not in page
    assert 'title="zen3@5.16 \u2192 zen1@5.16: incompatible' in page
    assert "compatible with conditions" in page  # the legend


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def _pixels(data: bytes, width: int, height: int) -> set[bytes]:
    """The colours in a PNG screenshot (every third pixel of every row)."""
    import zlib

    pos, chunks = 8, []
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            chunks.append(data[pos + 8 : pos + 8 + n])
        pos += 12 + n
    depth, ctype = data[24], data[25]
    assert depth == 8 and ctype in (2, 6)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(b"".join(chunks))
    stride = width * bpp + 1
    seen = set()
    prev = bytearray(width * bpp)
    for y in range(height):
        f, line = raw[y * stride], bytearray(raw[y * stride + 1 : (y + 1) * stride])
        for i in range(len(line)):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        for x in range(0, width * bpp, bpp * 3):
            seen.add(bytes(line[x : x + 3]))
        prev = line
    return seen


def _screenshot(page: str, tmp_path: Path) -> set[bytes]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian packages chromium, chromium-driver)")
    html = tmp_path / "matrix.html"
    html.write_text(page, encoding="utf-8")
    shot = tmp_path / "matrix.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--screenshot={shot}",
            "--window-size=900,700",
            html.as_uri(),
        ],
        check=True,
        timeout=120,
        capture_output=True,
    )
    data = shot.read_bytes()
    assert _png_size(data) == (900, 700)
    return _pixels(data, 900, 700)


#: The panel's background (report_html._CSS ``.panel``): on screen only when a panel is open.
PANEL = bytes.fromhex("fffbea")


def test_renders_in_headless_chromium(matrix, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """What chromium draws: the heat map's colours, and no panel until one is opened."""
    seen = _screenshot(render(matrix), tmp_path)
    for colour in ("2e7d32", "c62828"):
        assert bytes.fromhex(colour) in seen, colour
    assert PANEL not in seen  # <details> starts closed


def test_an_open_panel_is_drawn_over_the_map(matrix, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The panel of the first incompatible cell, opened (as a click or Enter on its summary
    does): its box is drawn, and the map stays visible around it."""
    page = render(matrix)
    at = page.index('<td class="fail"><details>')
    page = page[:at] + page[at:].replace("<details>", "<details open>", 1)
    seen = _screenshot(page, tmp_path)
    assert PANEL in seen
    for colour in ("2e7d32", "c62828"):
        assert bytes.fromhex(colour) in seen, colour
