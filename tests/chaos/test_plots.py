"""The report's plots (:mod:`phalanx.chaos.plots`): what they show, their limits, and the
numbers behind the quantile and throughput lines."""

from __future__ import annotations

import re
import xml.dom.minidom
from typing import Any

import pytest

from phalanx.chaos import plots
from phalanx.chaos.history import Operation
from phalanx.chaos.nemesis import NEMESIS_PROCESS
from phalanx.chaos.plots import (
    BUCKETS_MAX,
    FAULT_LANES_MAX,
    OUTCOME_COLOURS,
    Span,
    bucket_s_for,
    draw_plots,
    fault_spans,
    latency_quantiles,
    throughput,
)
from phalanx.errors import Outcome

pytest.importorskip("matplotlib")

INFO_COLOUR = OUTCOME_COLOURS[Outcome.INDETERMINATE]
FAIL_COLOUR = OUTCOME_COLOURS[Outcome.FAILED]


def _op(op_id: int, f: str, start_s: float, end_s: float | None, **fields: Any) -> Operation:
    return Operation(
        id=op_id,
        process=fields.pop("process", op_id % 4),
        f=f,
        invoke_us=round(start_s * 1e6),
        complete_us=None if end_s is None else round(end_s * 1e6),
        outcome=fields.pop("outcome", Outcome.OK),
        **fields,
    )


def _history(n: int = 120, end_s: float = 12.0) -> list[Operation]:
    fs = ("read", "write", "cas")
    return [_op(k, fs[k % 3], k * end_s / n, k * end_s / n + 0.001 * (1 + k % 7)) for k in range(n)]


SPANS = [
    Span("partition", "partition leader", 2.0, 4.0),
    Span("kill", "kill 2", 6.0, 7.5),
    Span("heal", "final heal", 11.0, 11.0),
]


def _texts(svg: str) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", svg)


def _markers(svg: str, colour: str) -> int:
    """Markers of ``colour`` drawn, its legend entry's included."""
    return len(re.findall(rf'<use [^>]*style="fill: {colour}\b', svg))


def test_each_plot_is_one_inline_svg_element() -> None:
    drawn = draw_plots(_history(), SPANS, 12.0)
    assert drawn is not None
    ids: list[str] = []
    for svg in (drawn.faults, drawn.latency, drawn.quantiles, drawn.throughput):
        assert svg.startswith("<svg ")  # no XML prolog or DOCTYPE to trip an HTML parser
        assert svg.rstrip().endswith("</svg>")
        xml.dom.minidom.parseString(svg)
        own = re.findall(r'\bid="([^"]+)"', svg)
        # Every reference points at an id of the same plot.
        assert set(re.findall(r'(?:href="#|url\(#)([^")]+)', svg)) <= set(own)
        ids += own
    assert len(ids) == len(set(ids))  # the four can share a page


def test_fault_kinds_and_outcomes_are_in_the_legends() -> None:
    drawn = draw_plots(_history(), SPANS, 12.0)
    assert drawn is not None
    for svg in (drawn.latency, drawn.quantiles, drawn.throughput):
        assert {"partition", "kill", "heal"} <= set(_texts(svg))
    assert {"ok", "fail", "info", "read", "write", "cas"} <= set(_texts(drawn.latency))
    assert {"p50", "p95", "p99", "max"} <= set(_texts(drawn.quantiles))
    # One lane per fault, named by what it did.
    assert {"partition leader", "kill 2"} <= set(_texts(drawn.faults))


def test_an_info_or_failed_operation_changes_the_drawing() -> None:
    ops = _history()
    before = draw_plots(ops, SPANS, 12.0)
    assert before is not None
    ops[40] = _op(40, ops[40].f, 4.0, 4.5, outcome=Outcome.INDETERMINATE)
    ops[41] = _op(41, ops[41].f, 4.1, 4.102, outcome=Outcome.FAILED)
    after = draw_plots(ops, SPANS, 12.0)
    assert after is not None
    assert after.latency != before.latency
    assert _markers(after.latency, INFO_COLOUR) == _markers(before.latency, INFO_COLOUR) + 1
    assert _markers(after.latency, FAIL_COLOUR) == _markers(before.latency, FAIL_COLOUR) + 1
    assert after.throughput != before.throughput
    assert after.quantiles != before.quantiles  # the info op's 500 ms is its bucket's max


def test_the_same_history_draws_the_same_bytes() -> None:
    first = draw_plots(_history(), SPANS, 12.0)
    second = draw_plots(_history(), SPANS, 12.0)
    assert first == second


def test_the_latency_plot_samples_down_to_points_max(monkeypatch: pytest.MonkeyPatch) -> None:
    ops = _history(n=400)
    full = draw_plots(ops, SPANS, 12.0)
    monkeypatch.setattr(plots, "POINTS_MAX", 100)
    sampled = draw_plots(ops, SPANS, 12.0)
    assert full is not None
    assert sampled is not None
    assert "100 of 400 operations, evenly sampled" in _texts(sampled.latency)
    markers = len(re.findall(r"<use ", full.latency)) - len(re.findall(r"<use ", sampled.latency))
    assert markers == 300
    # The quantiles and throughput still count every operation.
    assert sampled.quantiles == full.quantiles
    assert sampled.throughput == full.throughput


def test_too_many_fault_labels_fold_into_one_lane_per_kind() -> None:
    many = [
        Span("partition" if k % 2 else "clock", f"fault {k}", k * 0.3, k * 0.3 + 0.2)
        for k in range(FAULT_LANES_MAX + 1)
    ]
    drawn = draw_plots(_history(), many, 12.0)
    assert drawn is not None
    texts = set(_texts(drawn.faults))
    assert {"partition", "clock"} <= texts
    assert not any(text.startswith("fault ") for text in texts)


def test_labels_are_drawn_as_text_not_markup_or_math() -> None:
    spans = [Span("toxic", "latency <200ms> & $5 $x$", 1.0, 2.0)]
    drawn = draw_plots(_history(), spans, 12.0)
    assert drawn is not None
    xml.dom.minidom.parseString(drawn.faults)
    assert "latency &lt;200ms&gt; &amp; $5 $x$" in drawn.faults


def test_operations_that_never_returned_have_no_latency() -> None:
    ops = _history(n=30)
    drawn = draw_plots([*ops, _op(30, "write", 5.0, None, outcome=Outcome.INDETERMINATE)], [], 12.0)
    assert drawn is not None
    assert drawn == draw_plots(ops, [], 12.0)
    assert "no faults" in _texts(drawn.faults)


def test_without_matplotlib_nothing_is_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    assert draw_plots(_history(), SPANS, 12.0) is None


# -- the numbers behind the lines -------------------------------------------------------------


def test_quantiles_are_nearest_rank_per_bucket_of_invocations() -> None:
    # Bucket 0: latencies 1..100 ms; bucket 1 empty; bucket 2: one 7 ms operation.
    ops = [_op(k, "read", 0.001 * k, 0.001 * k + 0.001 * (k + 1)) for k in range(100)]
    ops.append(_op(100, "read", 2.5, 2.507))
    series = latency_quantiles(ops, end_s=3.0, bucket_s=1)
    assert series["p50"] == [pytest.approx(50.0), None, pytest.approx(7.0)]
    assert series["p95"][0] == pytest.approx(95.0)
    assert series["p99"][0] == pytest.approx(99.0)
    assert series["max"] == [pytest.approx(100.0), None, pytest.approx(7.0)]


def test_throughput_counts_completions_per_second_by_outcome() -> None:
    ops = [
        _op(0, "read", 0.1, 0.2),
        _op(1, "read", 0.3, 1.4),
        _op(2, "write", 1.5, 1.6, outcome=Outcome.FAILED),
        _op(3, "write", 1.7, 3.9, outcome=Outcome.INDETERMINATE),
        _op(4, "write", 1.8, None, outcome=Outcome.INDETERMINATE),
    ]
    assert throughput(ops, end_s=4.0, bucket_s=2) == {
        Outcome.OK: [1.0, 0.0],
        Outcome.FAILED: [0.5, 0.0],
        Outcome.INDETERMINATE: [0.0, 0.5],
    }


def test_buckets_grow_so_a_long_run_has_at_most_buckets_max() -> None:
    assert bucket_s_for(60.0) == 1
    assert bucket_s_for(float(BUCKETS_MAX)) == 1
    long_s = BUCKETS_MAX * 7.5
    assert bucket_s_for(long_s) == 8
    assert len(latency_quantiles([], long_s, bucket_s_for(long_s))["p50"]) <= BUCKETS_MAX


def test_fault_spans_close_open_windows_at_the_end() -> None:
    faults = [
        _op(0, "start-kill", 1.0, 1.1, process=NEMESIS_PROCESS, input="kill 2"),
        _op(1, "start-clock", 2.0, 2.1, process=NEMESIS_PROCESS, input="clock 1 +3s"),
        _op(2, "stop-clock", 4.0, 4.2, process=NEMESIS_PROCESS, input="clock 1 +3s"),
    ]
    spans = fault_spans(faults, end_s=9.0)
    assert [(s.kind, s.label, s.start_s, s.end_s) for s in spans] == [
        ("kill", "kill 2", 1.0, 9.0),
        ("clock", "clock 1 +3s", 2.0, 4.2),
    ]
