"""The report of a chaos run: one self-contained HTML page (inline CSS and SVG, no scripts).

Sections, top to bottom:

- the verdict, each checker's summary, the counts, and the command that reproduces the run;
- **faults**: one bar per fault window on the run's time axis, labelled with what it did;
- **latency**: every client operation as a dot at its invocation time and its latency
  (log scale), green ``ok``, orange ``fail``, red ``info`` (those sit at the time they gave
  up), with the fault windows shaded;
- **throughput**: completed operations per second by outcome, fault windows shaded;
- the checker's timeline of a violation (:func:`phalanx.chaos.check.write_timeline`),
  embedded, when the history is not valid;
- the nemesis operations, and the tail of every node's log.

At most :data:`POINTS_MAX` operations are drawn in the latency plot (evenly sampled), and
:data:`FAULT_ROWS_MAX` windows in the fault timeline.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from phalanx.chaos.history import Operation
from phalanx.errors import Outcome

if TYPE_CHECKING:
    from phalanx.chaos.runner import RunResult

__all__ = ["FAULT_ROWS_MAX", "POINTS_MAX", "fault_spans", "render_report", "write_report"]

#: Most operations drawn in the latency plot.
POINTS_MAX: Final = 20_000
#: Most fault windows drawn in the fault timeline.
FAULT_ROWS_MAX: Final = 300
#: Bytes of each node's log shown at the end of the report.
LOG_TAIL_BYTES: Final = 6_000

_WIDTH: Final = 900
_PLOT_HEIGHT: Final = 220
_LEFT: Final = 60
_RIGHT: Final = 20
_TOP: Final = 10
_BOTTOM: Final = 30
_LABEL_ROOM: Final = 160
_COLOURS: Final = {
    Outcome.OK: "#2a9d4b",
    Outcome.FAILED: "#e69b00",
    Outcome.INDETERMINATE: "#d62828",
}
_FAULT_COLOURS: Final = {
    "partition": "#f4a3a3",
    "kill": "#c9a3f4",
    "pause": "#a3c4f4",
    "restart": "#f4d6a3",
    "toxic": "#a3f4d0",
    "clock": "#f4f0a3",
    "membership": "#d0d0d0",
}
_STYLE: Final = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:980px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
.valid{color:#2a9d4b}.invalid{color:#d62828}.unknown{color:#b07800}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 7px;
text-align:left;vertical-align:top}code,pre{font-size:12px}pre{background:#f6f6f6;
padding:8px;overflow:auto;max-height:320px}svg{background:#fff;border:1px solid #eee}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
iframe{width:100%;height:640px;border:1px solid #ddd}
"""


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
    end runs to ``end_s``); the final ``heal`` is a zero-length span."""
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


def _x(t_s: float, end_s: float) -> float:
    return _LEFT + (_WIDTH - _LEFT - _RIGHT) * (t_s / end_s if end_s > 0 else 0.0)


def _shade(spans: Sequence[Span], end_s: float, height: int) -> list[str]:
    parts = []
    for span in spans:
        if span.kind == "heal":
            x = _x(span.start_s, end_s)
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{height - _BOTTOM}" '
                'stroke="#2a9d4b" stroke-dasharray="4 3"/>'
            )
            continue
        x0, x1 = _x(span.start_s, end_s), _x(span.end_s, end_s)
        colour = _FAULT_COLOURS.get(span.kind, "#ddd")
        parts.append(
            f'<rect x="{x0:.1f}" y="{_TOP}" width="{max(1.0, x1 - x0):.1f}" '
            f'height="{height - _TOP - _BOTTOM}" fill="{colour}" opacity="0.35">'
            f"<title>{html.escape(span.label)}</title></rect>"
        )
    return parts


def _time_axis(end_s: float, height: int) -> list[str]:
    axis = (
        f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{height - _BOTTOM}" '
        f'y2="{height - _BOTTOM}" stroke="#888"/>'
    )
    parts = [axis]
    step_s = max(1, math.ceil(end_s / 10))
    t = 0
    while t <= end_s:
        x = _x(t, end_s)
        parts.append(
            f'<text x="{x:.1f}" y="{height - _BOTTOM + 14}" font-size="10" '
            f'text-anchor="middle">{t}s</text>'
        )
        t += step_s
    return parts


def _svg(height: int, parts: Sequence[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}">' + "".join(parts) + "</svg>"
    )


def fault_svg(spans: Sequence[Span], end_s: float) -> str:
    rows = [s for s in spans if s.kind != "heal"][:FAULT_ROWS_MAX]
    row_h = 18
    height = _TOP + _BOTTOM + row_h * max(1, len(rows))
    parts = _shade([s for s in spans if s.kind == "heal"], end_s, height)
    for k, span in enumerate(rows):
        x0, x1 = _x(span.start_s, end_s), _x(span.end_s, end_s)
        y = _TOP + k * row_h
        colour = _FAULT_COLOURS.get(span.kind, "#ddd")
        label = html.escape(span.label)
        parts.append(
            f'<rect x="{x0:.1f}" y="{y + 2}" width="{max(1.0, x1 - x0):.1f}" '
            f'height="{row_h - 4}" fill="{colour}"><title>{label} '
            f"({span.start_s:.1f}-{span.end_s:.1f} s)</title></rect>"
            + (
                f'<text x="{x1 + 4:.1f}" y="{y + row_h - 5}" font-size="11">{label}</text>'
                if x1 < _WIDTH - _LABEL_ROOM
                else f'<text x="{x0 - 4:.1f}" y="{y + row_h - 5}" font-size="11" '
                f'text-anchor="end">{label}</text>'
            )
        )
    return _svg(height, [*parts, *_time_axis(end_s, height)])


def latency_svg(ops: Sequence[Operation], spans: Sequence[Span], end_s: float) -> str:
    height = _PLOT_HEIGHT + _TOP + _BOTTOM
    done = [op for op in ops if op.complete_us is not None]
    step = max(1, math.ceil(len(done) / POINTS_MAX))
    sample = done[::step]
    lat_ms = [max(0.1, ((op.complete_us or 0) - op.invoke_us) / 1000) for op in sample]
    top_ms = max([10.0, *lat_ms])
    log_top = math.log10(top_ms * 1.2)
    log_low = -1.0

    def y(ms: float) -> float:
        frac = (math.log10(ms) - log_low) / (log_top - log_low)
        return _TOP + _PLOT_HEIGHT * (1 - frac)

    parts = _shade(spans, end_s, height)
    for ms in (0.1, 1, 10, 100, 1000, 10000):
        if ms > top_ms * 1.2:
            break
        parts.append(
            f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y(ms):.1f}" y2="{y(ms):.1f}" '
            f'stroke="#eee"/><text x="{_LEFT - 4}" y="{y(ms) + 3:.1f}" font-size="10" '
            f'text-anchor="end">{ms:g} ms</text>'
        )
    for op, ms in zip(sample, lat_ms, strict=True):
        parts.append(
            f'<circle cx="{_x(op.invoke_us / 1e6, end_s):.1f}" cy="{y(ms):.1f}" r="1.6" '
            f'fill="{_COLOURS[op.outcome]}" opacity="0.7"/>'
        )
    return _svg(height, [*parts, *_time_axis(end_s, height)])


def throughput_svg(ops: Sequence[Operation], spans: Sequence[Span], end_s: float) -> str:
    height = _PLOT_HEIGHT + _TOP + _BOTTOM
    bins = max(1, math.ceil(end_s))
    counts = {o: [0] * bins for o in _COLOURS}
    for op in ops:
        if op.complete_us is None:
            continue
        k = min(bins - 1, int(op.complete_us / 1e6))
        counts[op.outcome][k] += 1
    top = max([1, *(max(c) for c in counts.values())])
    parts = _shade(spans, end_s, height)
    for tick in (0, top // 2, top):
        yy = _TOP + _PLOT_HEIGHT * (1 - tick / top)
        parts.append(
            f'<text x="{_LEFT - 4}" y="{yy + 3:.1f}" font-size="10" text-anchor="end">'
            f"{tick}/s</text>"
        )
    for outcome, series in counts.items():
        points = " ".join(
            f"{_x(k + 0.5, end_s):.1f},{_TOP + _PLOT_HEIGHT * (1 - n / top):.1f}"
            for k, n in enumerate(series)
        )
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{_COLOURS[outcome]}" '
            'stroke-width="1.5"/>'
        )
    return _svg(height, [*parts, *_time_axis(end_s, height)])


def _legend() -> str:
    outcomes = "".join(
        f'<span style="color:{c}">&#9679; {o.value}</span>' for o, c in _COLOURS.items()
    )
    faults = "".join(
        f'<span><svg width="10" height="10"><rect width="10" height="10" fill="{c}"/></svg> '
        f"{k}</span>"
        for k, c in _FAULT_COLOURS.items()
    )
    return f'<p class="legend">{outcomes}</p><p class="legend">{faults}</p>'


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read: {exc})"


def render_report(
    result: RunResult,
    ops: Sequence[Operation],
    fault_ops: Sequence[Operation],
    logs: Mapping[int, Path],
    timeline: Path | None = None,
) -> str:
    """The page; ``timeline`` is the checker's HTML timeline of a violation, embedded."""
    ends = [op.complete_us or op.invoke_us for op in (*ops, *fault_ops)]
    end_s = max([1.0, *(e / 1e6 for e in ends)])
    spans = fault_spans(fault_ops, end_s)
    verdict = result.verdict.value
    esc = html.escape
    checkers = "".join(
        f"<tr><td><code>{esc(r.checker)}</code></td><td class='{r.verdict.value}'>"
        f"{esc(r.verdict.value)}</td><td>{esc(r.summary)}</td></tr>"
        for r in result.checker.results
    )
    counts = ", ".join(f"{esc(k)} {v}" for k, v in result.counts.items())
    o = result.options
    setup = (
        f"{o.nodes} nodes, workload <code>{esc(o.workload)}</code>, nemesis "
        f"<code>{esc(','.join(o.nemesis) or 'none')}</code>, {o.time_limit_s:g} s, seed {o.seed}, "
        f"{o.concurrency} clients at {o.rate_hz:g} op/s, tick {o.tick_ms} ms"
    )
    nemesis_rows = "".join(
        f"<tr><td>{op.invoke_us / 1e6:.2f}</td><td><code>{esc(op.f)}</code></td>"
        f"<td>{esc(str(op.input))}</td><td>{esc(op.outcome.value)}</td>"
        f"<td><code>{esc(str(op.output if op.error is None else op.error))[:300]}</code></td></tr>"
        for op in fault_ops
    )
    page = _read(timeline) if timeline is not None else None
    violation = (
        f"<h2>Violation</h2><p>The checker's timeline (also in <code>{esc(timeline.name)}"
        f'</code>):</p><iframe srcdoc="{esc(page)}"></iframe>'
        if page is not None and timeline is not None
        else ""
    )
    log_parts = "".join(
        f"<details><summary>node {i}: <code>{esc(str(p))}</code></summary>"
        f"<pre>{esc(_tail(p))}</pre></details>"
        for i, p in sorted(logs.items())
    )
    error = f"<p><b>Note:</b> {esc(result.error)}</p>" if result.error else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>chaos run: {esc(verdict)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Chaos run: <span class='{verdict}'>{esc(verdict.upper())}</span></h1>"
        f"<p>{setup}</p><p>Operations: {counts}. Faults applied {result.nemesis_applied}, "
        f"not applicable {result.nemesis_failed}. Run {result.duration_s:.1f} s, "
        f"check {result.check_s:.2f} s.</p>{error}"
        f"<table><tr><th>checker</th><th>verdict</th><th>summary</th></tr>{checkers}</table>"
        f"<p>Reproduce: <code>{esc(result.command)}</code></p>"
        f"<h2>Faults</h2>{fault_svg(spans, end_s)}"
        f"<h2>Latency</h2>{latency_svg(ops, spans, end_s)}"
        f"<h2>Throughput</h2>{throughput_svg(ops, spans, end_s)}{_legend()}"
        f"{violation}"
        "<h2>Nemesis operations</h2><table><tr><th>at (s)</th><th>f</th><th>fault</th>"
        f"<th>outcome</th><th>what happened</th></tr>{nemesis_rows}</table>"
        f"<h2>Node logs (tails)</h2>{log_parts}"
        "</body></html>"
    )


def write_report(
    path: Path,
    result: RunResult,
    ops: Sequence[Operation],
    fault_ops: Sequence[Operation],
    logs: Mapping[int, Path],
    timeline: Path | None = None,
) -> None:
    path.write_text(render_report(result, ops, fault_ops, logs, timeline), encoding="utf-8")
