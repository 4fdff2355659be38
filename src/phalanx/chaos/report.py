"""The report of a chaos run: one self-contained HTML page (inline CSS and SVG, no scripts,
nothing fetched: it opens offline).

Sections, top to bottom:

- the verdict, each checker's summary, the counts, and the command that reproduces the run;
- the plots of :mod:`phalanx.chaos.plots`, after Jepsen's, on one time axis: the fault
  windows, one lane per fault; every operation's latency (log scale) by invocation time,
  shaped by ``f`` and coloured by outcome, and the latency quantiles per second; completed
  operations per second by outcome; fault windows shaded by kind throughout;
- the checker's timeline of a violation (:func:`phalanx.chaos.check.write_timeline`),
  embedded, when the history is not valid;
- the nemesis operations, and the tail of every node's log.

The plots need matplotlib (the ``chaos`` extra); without it the page is written all the
same, with a one-line note in their place. At most :data:`POINTS_MAX` operations are drawn
in the latency plot (evenly sampled), and :data:`FAULT_ROWS_MAX` fault windows.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from phalanx.chaos.history import Operation
from phalanx.chaos.plots import (
    FAULT_ROWS_MAX,
    MISSING_NOTE,
    POINTS_MAX,
    Plots,
    Span,
    draw_plots,
    fault_spans,
)

if TYPE_CHECKING:
    from phalanx.chaos.runner import RunResult

__all__ = [
    "FAULT_ROWS_MAX",
    "POINTS_MAX",
    "Span",
    "fault_spans",
    "render_report",
    "write_report",
]

#: Bytes of each node's log shown at the end of the report.
LOG_TAIL_BYTES: Final = 6_000

_STYLE: Final = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:980px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
.valid{color:#2a9d4b}.invalid{color:#d62828}.unknown{color:#b07800}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 7px;
text-align:left;vertical-align:top}code,pre{font-size:12px}pre{background:#f6f6f6;
padding:8px;overflow:auto;max-height:320px}.plot svg{width:100%;height:auto;display:block}
.note{color:#b07800}
iframe{width:100%;height:640px;border:1px solid #ddd}
"""


def _plots(plots: Plots | None) -> str:
    if plots is None:
        return f"<p class='note'>{html.escape(MISSING_NOTE, quote=False)}</p>"
    return (
        f"<h2>Faults</h2><div class='plot'>{plots.faults}</div>"
        f"<h2>Latency</h2><div class='plot'>{plots.latency}</div>"
        f"<div class='plot'>{plots.quantiles}</div>"
        f"<h2>Throughput</h2><div class='plot'>{plots.throughput}</div>"
    )


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
        f"{_plots(draw_plots(ops, spans, end_s))}"
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
