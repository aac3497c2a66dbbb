"""The inspection report (``index.html``): one card per photo, most cracked first, every figure
from the photos' summaries, nothing from the network; loaded in a real headless Chromium."""

from __future__ import annotations

import csv
import dataclasses
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from crackdet.maps.crack_outputs import CSV_COLUMNS, FOLDER_CRACKS
from crackdet.maps.html_report import REPORT, write_report
from crackdet.maps.mapping import MappedPhotos
from crackdet.maps.outputs import PhotoFiles, PhotoSummary
from tests.helpers import require
from tests.helpers.browser import browser, check_page, missing_browser


def summary(
    photo: str, stem: str, area: float, ood: float | None, cracks: tuple = ()
) -> PhotoSummary:
    """A photo's summary; ``cracks``: (count, length, max width, severity, rank, unit) where its
    cracks were traced."""
    traced = dict(
        zip(
            (
                "crack_count",
                "crack_length",
                "crack_max_width",
                "crack_severity",
                "crack_severity_rank",
                "crack_unit",
            ),
            cracks,
            strict=False,
        )
    )
    return PhotoSummary(
        photo=photo,
        width=640,
        height=480,
        model="crack-classifier v3 (@champion)",
        threshold=0.368,
        overlap=0.5,
        scales=[1.0],
        engine="openvino",
        crack_area_fraction=area,
        tiles_flagged=3,
        tiles_total=12,
        ood_fraction=ood,
        outputs=stem,
        **traced,
    )


@pytest.fixture
def mapped(tmp_path: Path) -> MappedPhotos:
    """Three photos' outputs as map_photos writes them, one name needing escapes."""
    summaries = [
        summary("quiet.jpg", "quiet", 0.01, 0.0, (0, 0.0, 0.0, "", -1, "mm")),
        summary("wall #2 <east>.jpg", "wall #2 <east>", 0.42, 0.25),  # not traced
        # The widest crack is graded worst, whatever the crack area or the total length.
        summary("deck.png", "deck", 0.1, None, (2, 812.5, 1.6, "wide", 2, "mm")),
        summary("slab.jpg", "slab", 0.6, 0.0, (5, 2400.0, 0.9, "moderate", 1, "mm")),
        summary("pier.jpg", "pier", 0.3, 0.0, (4, 1000.0, 1.1, "moderate", 1, "mm")),
    ]
    for s in summaries:
        files = PhotoFiles(tmp_path, s.outputs)
        for path, size in ((files.overlay, (640, 480)), (files.thumbnail, (480, 360))):
            Image.new("RGB", size, (200, 60, 60)).save(
                path, format=path.suffix[1:].upper().replace("JPG", "JPEG")
            )
        for path in (files.mask, files.heatmap):
            Image.new("L", (640, 480)).save(path, format="PNG")
        files.heatmap_npy.write_bytes(b"")
        files.record.write_text("{}")
        if s.traced:
            Image.new("RGB", (640, 480)).save(files.cracks.traced, format="PNG")
            Image.new("L", (640, 480)).save(files.cracks.mask, format="PNG")
            files.cracks.geojson.write_text('{"type": "FeatureCollection", "features": []}')
            rows = "".join(f"{k},1.0,0.1,0.2,mm,,1,0,0,9,9,10,1,2\n" for k in range(s.crack_count))
            files.cracks.table.write_text(f"{','.join(CSV_COLUMNS)}\n{rows}")
    return MappedPhotos(
        summaries, ["broken.jpg: not an image; remove it"], [1.0, 1.0], ["deck.png"]
    )


def test_cards_worst_first_with_the_summary_figures(tmp_path: Path, mapped) -> None:
    path = write_report(tmp_path, mapped, "Crack maps: site A")
    assert path == tmp_path / REPORT
    html = path.read_text()
    photos = re.findall(r"<h2>(.*?)</h2>", html)
    # Severity rank, then the widest crack; photos not traced (no pixel decoder) last.
    assert photos == ["deck.png", "pier.jpg", "slab.jpg", "quiet.jpg", "wall #2 &lt;east&gt;.jpg"]
    deck = html[html.index("<h2>deck.png") :].split("</li>")[0]
    assert "2 cracks" in deck and "812.5 mm" in deck and "1.60 mm" in deck and "wide" in deck
    assert 'href="deck_traced.jpg"' in deck and 'href="deck_cracks.geojson"' in deck
    assert 'href="deck_overlay.jpg"' in deck  # the window map stays available
    assert "not traced" in html and "0 cracks" in html
    assert "crack area" not in html and "42.0 %" not in html  # the window-blob share is gone
    assert "25.0 %" in html  # unfamiliar share
    assert "not measured" in html  # no OOD model: said, not shown as 0 %
    assert "0.368" in html and "crack-classifier v3 (@champion)" in html
    assert "3 of 12" in html
    assert 'href="cracks.csv"' in html
    assert "1 kept from an earlier run" in html and "1 could not be read" in html
    assert "broken.jpg: not an image" in html
    # Links and images are relative file names, escaped for the URL: nothing from the network.
    assert 'href="wall%20%232%20%3Ceast%3E_overlay.jpg"' in html
    assert 'src="wall%20%232%20%3Ceast%3E_thumb.jpg"' in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "<script" not in html


def test_folder_csv_lists_every_traced_crack_with_its_photo(tmp_path: Path, mapped) -> None:
    write_report(tmp_path, mapped, "t")
    with (tmp_path / FOLDER_CRACKS).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    # deck 2, pier 4, slab 5, quiet 0; the untraced photo has none; in the report's order.
    photos = [row["photo"] for row in rows]
    assert photos == ["deck.png"] * 2 + ["pier.jpg"] * 4 + ["slab.jpg"] * 5
    assert list(rows[0]) == ["photo", *CSV_COLUMNS]


def test_report_is_the_same_bytes_for_the_same_maps(tmp_path: Path, mapped) -> None:
    first = write_report(tmp_path, mapped, "t").read_bytes()
    assert write_report(tmp_path, mapped, "t").read_bytes() == first  # no timestamps


GOLDEN = Path(__file__).parent / "golden"


def parsed(html: str) -> list[tuple]:
    """The document as a parser reads it: tags, attributes and text with entities resolved."""

    class Events(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.events: list[tuple] = []

        def handle_starttag(self, tag: str, attrs: list) -> None:
            self.events.append(("start", tag, attrs))

        def handle_endtag(self, tag: str) -> None:
            self.events.append(("end", tag))

        def handle_data(self, data: str) -> None:
            self.events.append(("text", data))

        def handle_decl(self, decl: str) -> None:
            self.events.append(("decl", decl))

    parser = Events()
    parser.feed(html)
    parser.close()
    return parser.events


def test_template_writes_the_bytes_the_hand_written_report_wrote(tmp_path: Path, mapped) -> None:
    # tests/golden/*.html: the report as reviewed (first written by the f-string report this
    # template replaced; cracks replaced the crack area since). A change to it is deliberate.
    html = write_report(tmp_path, mapped, "Crack maps: site A").read_text()
    assert html == (GOLDEN / "report_three_photos.html").read_text()


def test_template_escapes_every_value_as_the_hand_written_report_did(tmp_path: Path) -> None:
    hostile = dataclasses.replace(
        summary("a \"q\" & 'b' </h2><script>x()</script>.jpg", "a q b", 0.5, None),
        model="",
        scales=[1.0, 0.5],
    )
    other = dataclasses.replace(summary("b.jpg", "b", 0.5, 1 / 3), model='<b>m</b> "v1"')
    mapped = MappedPhotos(
        [hostile, other],
        ["<img src=x onerror=alert(1)>: not an image", "x & y.jpg: 'unreadable'"],
    )
    html = write_report(tmp_path, mapped, "Maps of \"<site>\" & 'co'").read_text()
    old = (GOLDEN / "report_escapes.html").read_text()
    # Jinja spells quotes &#34; and &#39; where html.escape wrote &quot; and &#x27;: the same
    # document, character for character, once parsed.
    assert parsed(html) == parsed(old)
    assert html.replace("&#34;", "&quot;").replace("&#39;", "&#x27;") == old
    assert "<script" not in html and "<img src=x" not in html and "<b>m" not in html


def test_report_loads_in_chromium_without_errors(tmp_path: Path, mapped) -> None:
    require(missing_browser())
    write_report(tmp_path, mapped, "Crack maps")
    with browser() as chrome:
        check = check_page(chrome, (tmp_path / REPORT).as_uri())
    assert check.problems == []
    assert check.images == 5
    assert all(url.startswith("file://") for url in check.requests), check.requests
