"""The HTML timeline of a violation: self-contained, one lane per process, culprit marked."""

import re
from xml.etree import ElementTree

import pytest

from chaos.helpers import INFO, Ops
from phalanx.chaos import report_html
from phalanx.chaos.bank import check_bank
from phalanx.chaos.linearizability import search
from phalanx.chaos.models import RegisterModel
from phalanx.chaos.report_html import render_timeline, render_violations


def _violation() -> tuple[Ops, str]:
    h = Ops()
    h.add(0, "write", 0, 1, input=1)
    h.add(1, "write", 2, 3, input=2)
    h.add(3, "write", 2, 30, input=5, outcome=INFO)
    h.add(2, "read", 4, 5, output=1)  # stale
    page = render_timeline(h.ops, search(h.ops, RegisterModel()), RegisterModel(), title="t<1>")
    return h, page


def test_timeline_is_self_contained() -> None:
    _, page = _violation()
    assert page.startswith("<!DOCTYPE html>")
    assert "t&lt;1&gt;" in page  # text is escaped
    assert not re.search(r"<script|<link|src=|@import|url\(http", page)
    assert re.findall(r"https?://[^\"]+", page) == ["http://www.w3.org/2000/svg"]


def test_timeline_svg_is_well_formed() -> None:
    _, page = _violation()
    svg = re.search(r"<svg.*</svg>", page, re.DOTALL)
    assert svg is not None
    root = ElementTree.fromstring(svg.group(0))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_timeline_has_a_lane_per_process_and_marks_the_culprit() -> None:
    _, page = _violation()
    for process in range(4):
        assert f">process {process}</text>" in page
    stuck_colour = report_html._COLOURS["stuck"]
    assert page.count(f'fill="{stuck_colour}"') == 1
    assert "op 3: read -&gt; 1" in page
    assert "cannot be placed" in page
    assert 'fill="url(#info)"' in page  # the unknown write is striped
    assert "longest linearizable prefix: 2 completed operations" in page


def test_timeline_draws_at_most_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Ops()
    for i in range(40):
        h.add(i % 3, "write", 2 * i, 2 * i + 1, input=i)
    h.add(5, "read", 100, 101, output=-1)
    result = search(h.ops, RegisterModel())
    monkeypatch.setattr(report_html, "TIMELINE_OPS_MAX", 10)
    page = render_timeline(h.ops, result, RegisterModel())
    assert "Showing 10 of 41 operations" in page
    assert "read -&gt; -1" in page


def test_violations_page_marks_the_witnesses() -> None:
    h = Ops()
    h.add(0, "read", 0, 1, output={"a": 5, "b": 5})
    h.add(1, "read", 2, 3, output={"a": 5, "b": 6})
    result = check_bank(h.ops)
    page = render_violations(h.ops, result, title="bank <run>")
    assert "bank &lt;run&gt;" in page
    assert page.count(f'fill="{report_html._VIOLATION_COLOURS["witness"]}"') == 1
    assert "wrong_total_reads: 1" in page
    assert not re.search(r"<script|<link|src=", page)
