"""The plots of a chaos run's report, after Jepsen's: inline SVG drawn with matplotlib.

Four plots share one time axis (seconds since the run's start) and the same margins, so
they line up when stacked on the page:

- **faults**: one lane per fault (its label, e.g. ``partition leader`` or ``kill 2``; one
  lane per kind instead when there are more than :data:`FAULT_LANES_MAX` labels), a bar per
  window coloured by kind, the final heal a dashed green line;
- **latency**: every client operation a point at its invocation time and its latency (ms,
  log scale), one marker shape per operation (``f``), green ``ok``, red ``fail``, orange
  ``info`` (an ``info`` operation sits at the latency at which its client gave up; one that
  never returned has no latency and is not drawn), fault windows shaded by kind;
- **latency quantiles**: p50, p95, p99 and the maximum latency of the operations invoked in
  each bucket of :func:`bucket_s_for` seconds (one second up to :data:`BUCKETS_MAX` buckets);
- **throughput**: operations completed per second in each bucket, a line per outcome.

matplotlib is the optional ``chaos`` extra (``pip install 'phalanx[chaos]'``). It is
imported only inside :func:`draw_plots`, which returns None without it: the command line
and the rest of :mod:`phalanx.chaos` start without paying for it, and a report is still
written, with :data:`MISSING_NOTE` in place of the plots.

The output is deterministic, the same history giving the same bytes (under one matplotlib
version): figures are made with
the object API (nothing touches pyplot's global state, so there is no figure to close),
from matplotlib's default style whatever the local ``matplotlibrc`` says, with text left as
SVG text (``svg.fonttype`` ``none``), a fixed ``svg.hashsalt`` and no metadata (no date).
Each SVG's ids carry the plot's name, so several can share one HTML page.

Limits: at most :data:`POINTS_MAX` operations in the latency plot (evenly sampled),
:data:`FAULT_ROWS_MAX` fault windows, :data:`FAULT_LANES_MAX` lanes and
:data:`BUCKETS_MAX` time buckets.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from phalanx.chaos.history import Operation
from phalanx.errors import Outcome

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "BUCKETS_MAX",
    "FAULT_COLOURS",
    "FAULT_LANES_MAX",
    "FAULT_ROWS_MAX",
    "MISSING_NOTE",
    "OUTCOME_COLOURS",
    "POINTS_MAX",
    "QUANTILES",
    "Plots",
    "Span",
    "bucket_s_for",
    "draw_plots",
    "fault_spans",
    "latency_quantiles",
    "throughput",
]

#: Most operations drawn in the latency plot.
POINTS_MAX: Final = 20_000
#: Most fault windows drawn in the fault timeline.
FAULT_ROWS_MAX: Final = 300
#: Most lanes in the fault timeline (past it, one lane per kind of fault).
FAULT_LANES_MAX: Final = 24
#: Most time buckets in the quantile and throughput plots (buckets grow past it).
BUCKETS_MAX: Final = 600
#: The quantiles drawn per bucket, by name; 1.0 is the maximum.
QUANTILES: Final = {"p50": 0.5, "p95": 0.95, "p99": 0.99, "max": 1.0}
#: What the report says in place of the plots when matplotlib is not installed.
MISSING_NOTE: Final = (
    "Plots are not drawn: matplotlib is not installed. pip install 'phalanx[chaos]' draws them."
)

#: Outcome colours: ok green, fail red, info (unknown) orange.
OUTCOME_COLOURS: Final = {
    Outcome.OK: "#2a9d4b",
    Outcome.FAILED: "#d62828",
    Outcome.INDETERMINATE: "#f0a000",
}
#: Fault window colours, by kind.
FAULT_COLOURS: Final = {
    "partition": "#f4a3a3",
    "kill": "#c9a3f4",
    "pause": "#a3c4f4",
    "restart": "#f4d6a3",
    "toxic": "#a3f4d0",
    "clock": "#e8e07a",
    "membership": "#c8c8c8",
    "bandwidth": "#f4a3dc",
    "reset": "#a3e4f4",
    "slow-close": "#d4f4a3",
    "timeout": "#f4c3a3",
}
# Kinds of fault not named above take these, in order of first appearance.
_SPARE_COLOURS: Final = ("#b8d8b8", "#d8b8b8", "#b8b8d8", "#d8d8b8", "#b8d8d8", "#d8b8d8")
_HEAL_COLOUR: Final = "#2a9d4b"
_MARKERS: Final = ("o", "^", "s", "D", "v", "P", "X", "*", "<", ">")
_QUANTILE_STYLES: Final = {
    "p50": ("#3b6fb6", "-"),
    "p95": ("#8e5bb5", "-"),
    "p99": ("#d0661a", "-"),
    "max": ("#555555", ":"),
}
# Figure geometry, inches: every plot gets the same width and side margins, so their time
# axes line up; the left margin grows with the longest fault label.
_WIDTH_IN: Final = 9.6
_LEFT_IN_MIN: Final = 0.75
_LEFT_IN_MAX: Final = 2.4
_RIGHT_IN: Final = 1.45
_TOP_IN: Final = 0.25
_BOTTOM_IN: Final = 0.48
_LANE_IN: Final = 0.22
_PLOT_IN: Final = 2.2
_LABEL_CHARS_MAX: Final = 34
# Without a date or a creator the SVG holds no metadata block at all.
_NO_METADATA: Final[dict[str, str | None]] = {
    "Creator": None,
    "Date": None,
    "Format": None,
    "Type": None,
}
_ID_REFERENCE: Final = re.compile(r'(\bid="|href="#|url\(#)')


class Span:
    """One fault window as it happened: seconds from the run's start."""

    __slots__ = ("end_s", "kind", "label", "start_s")

    def __init__(self, kind: str, label: str, start_s: float, end_s: float) -> None:
        self.kind = kind
        self.label = label
        self.start_s = start_s
        self.end_s = end_s


def fault_spans(fault_ops: Sequence[Operation], end_s: float) -> list[Span]:
    """Pair each ``start-<kind>`` with the next ``stop-<kind>`` (a window still open at the
    end runs to ``end_s``); the final ``heal`` is a zero-length span. A fault that did not
    apply (its start is not ``ok``) draws nothing."""
    spans: list[Span] = []
    open_: dict[str, Operation] = {}
    for op in sorted(fault_ops, key=lambda o: o.invoke_us):
        if op.f.startswith("start-"):
            open_[op.f[6:]] = op
        elif op.f.startswith("stop-"):
            start = open_.pop(op.f[5:], None)
            if start is not None and start.outcome is Outcome.OK:
                stop_us = op.complete_us or op.invoke_us
                spans.append(
                    Span(start.f[6:], str(start.input), start.invoke_us / 1e6, stop_us / 1e6)
                )
        elif op.f == "heal":
            at_s = op.invoke_us / 1e6
            spans.append(Span("heal", "final heal", at_s, at_s))
    for kind, start in open_.items():
        if start.outcome is Outcome.OK:
            spans.append(Span(kind, str(start.input), start.invoke_us / 1e6, end_s))
    return sorted(spans, key=lambda s: s.start_s)


@dataclass(frozen=True, slots=True)
class Plots:
    """The report's plots, each one ``<svg>`` element ready to inline in HTML."""

    faults: str
    latency: str
    quantiles: str
    throughput: str


def bucket_s_for(end_s: float) -> int:
    """The width of a time bucket: one second, or more so a run has at most
    :data:`BUCKETS_MAX` of them."""
    return max(1, math.ceil(end_s / BUCKETS_MAX))


def _latency_ms(op: Operation) -> float:
    # A zero latency cannot sit on a log axis; 10 us is below anything a network gives.
    return max(0.01, ((op.complete_us or op.invoke_us) - op.invoke_us) / 1000)


def _bucket_count(end_s: float, bucket_s: int) -> int:
    return max(1, math.ceil(end_s / bucket_s))


def latency_quantiles(
    ops: Sequence[Operation], end_s: float, bucket_s: int
) -> dict[str, list[float | None]]:
    """For each of :data:`QUANTILES`, the latency (ms, nearest rank) of the operations
    invoked in each bucket of ``bucket_s`` seconds; None for a bucket with none. Operations
    that never returned have no latency and are left out."""
    buckets: list[list[float]] = [[] for _ in range(_bucket_count(end_s, bucket_s))]
    for op in ops:
        if op.complete_us is not None:
            k = min(len(buckets) - 1, int(op.invoke_us / 1e6 / bucket_s))
            buckets[k].append(_latency_ms(op))
    series: dict[str, list[float | None]] = {name: [] for name in QUANTILES}
    for bucket in buckets:
        bucket.sort()
        for name, q in QUANTILES.items():
            rank = max(1, math.ceil(q * len(bucket)))
            series[name].append(bucket[rank - 1] if bucket else None)
    return series


def throughput(ops: Sequence[Operation], end_s: float, bucket_s: int) -> dict[Outcome, list[float]]:
    """Operations completed per second in each bucket of ``bucket_s`` seconds, by outcome."""
    bins = _bucket_count(end_s, bucket_s)
    counts = {outcome: [0] * bins for outcome in OUTCOME_COLOURS}
    for op in ops:
        if op.complete_us is not None:
            counts[op.outcome][min(bins - 1, int(op.complete_us / 1e6 / bucket_s))] += 1
    return {outcome: [n / bucket_s for n in series] for outcome, series in counts.items()}


def draw_plots(ops: Sequence[Operation], spans: Sequence[Span], end_s: float) -> Plots | None:
    """The four plots of a run lasting ``end_s`` seconds, or None when matplotlib is not
    installed."""
    try:
        import matplotlib
        from matplotlib import style
    except ImportError:
        return None
    colours = _fault_colours(spans)
    lanes = _lanes(spans)
    label_chars = max([0, *(len(label) for label in lanes)])
    left_in = min(_LEFT_IN_MAX, max(_LEFT_IN_MIN, 0.15 + 0.058 * label_chars))
    bucket_s = bucket_s_for(end_s)
    with (
        style.context("default"),
        matplotlib.rc_context(
            {
                "svg.fonttype": "none",
                "svg.hashsalt": "phalanx-chaos-report",
                "font.size": 8.0,
                "text.parse_math": False,
                "axes.grid": True,
                "grid.color": "#e6e6e6",
                "grid.linewidth": 0.6,
                "axes.spines.top": False,
                "axes.spines.right": False,
                "axes.xmargin": 0.0,
                "legend.frameon": False,
                "legend.fontsize": 7.5,
            }
        ),
    ):
        return Plots(
            faults=_faults_svg(spans, lanes, colours, end_s, left_in),
            latency=_latency_svg(ops, spans, colours, end_s, left_in),
            quantiles=_quantiles_svg(ops, spans, colours, end_s, bucket_s, left_in),
            throughput=_throughput_svg(ops, spans, colours, end_s, bucket_s, left_in),
        )


def _fault_colours(spans: Sequence[Span]) -> dict[str, str]:
    colours: dict[str, str] = {}
    spare = 0
    for span in spans:
        if span.kind == "heal" or span.kind in colours:
            continue
        if span.kind in FAULT_COLOURS:
            colours[span.kind] = FAULT_COLOURS[span.kind]
        else:
            colours[span.kind] = _SPARE_COLOURS[spare % len(_SPARE_COLOURS)]
            spare += 1
    return colours


def _short(label: str) -> str:
    if len(label) <= _LABEL_CHARS_MAX:
        return label
    return label[: _LABEL_CHARS_MAX - 1] + "\u2026"


def _lanes(spans: Sequence[Span]) -> dict[str, list[Span]]:
    """The fault windows drawn, by lane (label, or kind when labels are too many), in order
    of each lane's first window."""
    rows = [s for s in spans if s.kind != "heal"][:FAULT_ROWS_MAX]
    by_label: dict[str, list[Span]] = {}
    for span in rows:
        by_label.setdefault(_short(span.label), []).append(span)
    if len(by_label) <= FAULT_LANES_MAX:
        return by_label
    by_kind: dict[str, list[Span]] = {}
    for span in rows:
        by_kind.setdefault(span.kind, []).append(span)
    return by_kind


def _figure(plot_in: float, left_in: float) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    height_in = _TOP_IN + plot_in + _BOTTOM_IN
    fig = Figure(figsize=(_WIDTH_IN, height_in))
    ax = fig.add_axes(
        (
            left_in / _WIDTH_IN,
            _BOTTOM_IN / height_in,
            (_WIDTH_IN - left_in - _RIGHT_IN) / _WIDTH_IN,
            plot_in / height_in,
        )
    )
    return fig, ax


def _time_axis(ax: Axes, end_s: float) -> None:
    ax.set_xlim(0.0, end_s)
    ax.set_xlabel("seconds since the start of the run")


def _latency_axis(ax: Axes, label: str) -> None:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    # Plain numbers (0.1, 1, 10, 100 ms) rather than powers of ten, which need mathtext.
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylabel(label)


def _shade(ax: Axes, spans: Sequence[Span], colours: Mapping[str, str]) -> None:
    for span in spans[:FAULT_ROWS_MAX]:
        if span.kind == "heal":
            ax.axvline(span.start_s, color=_HEAL_COLOUR, linestyle="--", linewidth=0.9)
        else:
            ax.axvspan(span.start_s, span.end_s, color=colours[span.kind], alpha=0.35, linewidth=0)


def _fault_handles(spans: Sequence[Span], colours: Mapping[str, str]) -> list[Artist]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Artist] = [Patch(facecolor=c, label=kind) for kind, c in colours.items()]
    if any(span.kind == "heal" for span in spans):
        handles.append(Line2D([], [], color=_HEAL_COLOUR, linestyle="--", label="heal"))
    return handles


def _legend(ax: Axes, handles: Sequence[Artist]) -> None:
    if handles:
        ax.legend(handles=list(handles), loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _svg(fig: Figure, name: str) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata=_NO_METADATA)
    text = buf.getvalue()
    # Inline in HTML: no XML prolog or DOCTYPE, and ids that cannot clash with another plot's.
    text = text[text.index("<svg") :]
    return _ID_REFERENCE.sub(lambda m: f"{m.group(1)}{name}-", text).rstrip() + "\n"


def _faults_svg(
    spans: Sequence[Span],
    lanes: Mapping[str, Sequence[Span]],
    colours: Mapping[str, str],
    end_s: float,
    left_in: float,
) -> str:
    fig, ax = _figure(_LANE_IN * max(1, len(lanes)), left_in)
    for row, windows in enumerate(lanes.values()):
        ax.broken_barh(
            [(s.start_s, max(s.end_s - s.start_s, end_s / 500)) for s in windows],
            (row - 0.38, 0.76),
            facecolors=[colours[s.kind] for s in windows],
            edgecolors="#777777",
            linewidth=0.4,
        )
    for span in spans:
        if span.kind == "heal":
            ax.axvline(span.start_s, color=_HEAL_COLOUR, linestyle="--", linewidth=0.9)
    ax.set_yticks(range(len(lanes)), list(lanes))
    ax.set_ylim(max(1, len(lanes)) - 0.5, -0.5)
    ax.grid(visible=False, axis="y")
    ax.tick_params(axis="y", length=0)
    if not lanes:
        ax.text(0.5, 0.5, "no faults", transform=ax.transAxes, ha="center", va="center")
    _time_axis(ax, end_s)
    _legend(ax, _fault_handles(spans, colours))
    return _svg(fig, "faults")


def _latency_svg(
    ops: Sequence[Operation],
    spans: Sequence[Span],
    colours: Mapping[str, str],
    end_s: float,
    left_in: float,
) -> str:
    from matplotlib.lines import Line2D

    fig, ax = _figure(_PLOT_IN, left_in)
    _shade(ax, spans, colours)
    done = [op for op in ops if op.complete_us is not None]
    sample = done[:: max(1, math.ceil(len(done) / POINTS_MAX))]
    markers = {f: _MARKERS[k % len(_MARKERS)] for k, f in enumerate(sorted({o.f for o in sample}))}
    # ok first, so the rarer fail and info points are drawn over it.
    for outcome, colour in OUTCOME_COLOURS.items():
        for f, marker in markers.items():
            points = [op for op in sample if op.outcome is outcome and op.f == f]
            if points:
                ax.plot(
                    [op.invoke_us / 1e6 for op in points],
                    [_latency_ms(op) for op in points],
                    linestyle="none",
                    marker=marker,
                    markersize=2.6,
                    markeredgewidth=0,
                    color=colour,
                )
    _latency_axis(ax, "latency (ms)")
    _time_axis(ax, end_s)
    handles: list[Artist] = [
        Line2D([], [], linestyle="none", marker="o", color=c, label=o.value)
        for o, c in OUTCOME_COLOURS.items()
    ]
    handles += [
        Line2D([], [], linestyle="none", marker=m, color="#555555", label=f)
        for f, m in markers.items()
    ]
    _legend(ax, [*handles, *_fault_handles(spans, colours)])
    if len(sample) < len(done):
        ax.set_title(f"{len(sample)} of {len(done)} operations, evenly sampled", loc="left")
    return _svg(fig, "latency")


def _quantiles_svg(
    ops: Sequence[Operation],
    spans: Sequence[Span],
    colours: Mapping[str, str],
    end_s: float,
    bucket_s: int,
    left_in: float,
) -> str:
    fig, ax = _figure(_PLOT_IN, left_in)
    _shade(ax, spans, colours)
    edges = [k * bucket_s for k in range(_bucket_count(end_s, bucket_s) + 1)]
    for name, series in latency_quantiles(ops, end_s, bucket_s).items():
        colour, linestyle = _QUANTILE_STYLES[name]
        ax.stairs(
            [math.nan if v is None else v for v in series],
            edges,
            color=colour,
            linestyle=linestyle,
            linewidth=1.1,
            baseline=None,
            label=name,
        )
    _latency_axis(ax, f"latency quantiles (ms), {bucket_s} s")
    _time_axis(ax, end_s)
    handles, _ = ax.get_legend_handles_labels()
    _legend(ax, [*handles, *_fault_handles(spans, colours)])
    return _svg(fig, "quantiles")


def _throughput_svg(
    ops: Sequence[Operation],
    spans: Sequence[Span],
    colours: Mapping[str, str],
    end_s: float,
    bucket_s: int,
    left_in: float,
) -> str:
    fig, ax = _figure(_PLOT_IN, left_in)
    _shade(ax, spans, colours)
    edges = [k * bucket_s for k in range(_bucket_count(end_s, bucket_s) + 1)]
    for outcome, rates in throughput(ops, end_s, bucket_s).items():
        ax.stairs(rates, edges, color=OUTCOME_COLOURS[outcome], linewidth=1.2, label=outcome.value)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("completed operations / s")
    _time_axis(ax, end_s)
    handles, _ = ax.get_legend_handles_labels()
    _legend(ax, [*handles, *_fault_handles(spans, colours)])
    return _svg(fig, "throughput")
