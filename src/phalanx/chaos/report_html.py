"""The HTML timeline of a linearizability violation: one self-contained file, no network.

One lane per process; each operation is a bar from its invocation to its completion (an
``info`` operation runs to the right edge, striped: it may take effect at any time). Time
is drawn by rank (every distinct timestamp one step), so short and long gaps take the same
room and concurrent operations are easy to see. Colours:

- green, numbered: operations in the longest partial linearization the search found, with
  their position in it;
- red: the operation that could not be placed (its completion came before any order of the
  operations around it could explain its result);
- orange: operations invoked before that point that were not placed either;
- grey: everything later.

Below the timeline, the partial linearization is listed with the model state after each
operation, then the stuck operation. Hovering a bar shows the operation. At most
:data:`TIMELINE_OPS_MAX` operations are drawn (those around the violation first).

:func:`render_violations` draws the same timeline for the other checkers (bank, set, lock,
monotonic reads): the operations that witness the violation in red, the rest in grey, with
the checker's summary and counts above.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Hashable, Sequence
from typing import Final

from phalanx.chaos.history import Operation
from phalanx.chaos.linearizability import PartitionResult
from phalanx.chaos.models import INVALID, Model
from phalanx.chaos.verdict import CheckResult
from phalanx.errors import Outcome

__all__ = ["TIMELINE_OPS_MAX", "render_timeline", "render_violations"]

#: The most operations one timeline draws.
TIMELINE_OPS_MAX: Final = 1500

_LANE_PX: Final = 26
_STEP_PX: Final = 14
_LEFT_PX: Final = 70
_COLOURS: Final = {
    "placed": "#5cb85c",
    "stuck": "#d9302c",
    "unplaced": "#f0a030",
    "later": "#b8b8b8",
}
_VIOLATION_COLOURS: Final = {"witness": "#d9302c", "other": "#b8b8b8"}
_STYLE: Final = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
.legend span { display: inline-block; padding: 2px 8px; margin-right: 6px; border-radius: 3px; }
.scroll { overflow-x: auto; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border-bottom: 1px solid #eee; padding: 2px 10px; text-align: left; }
tr.stuck td { background: #fbe3e2; font-weight: bold; }
code { font-size: 0.95em; }
"""


def _window(ops: Sequence[Operation], focus: Operation | None) -> list[Operation]:
    ordered = sorted(ops, key=lambda op: (op.invoke_us, op.id))
    if len(ordered) <= TIMELINE_OPS_MAX:
        return ordered
    if focus is None:
        return ordered[:TIMELINE_OPS_MAX]
    # Keep the operations just before the violation, where its explanation lies.
    position = ordered.index(focus)
    start = max(0, min(position - TIMELINE_OPS_MAX * 3 // 4, len(ordered) - TIMELINE_OPS_MAX))
    return ordered[start : start + TIMELINE_OPS_MAX]


def _states(ops: Sequence[Operation], order: list[int], model: Model) -> list[str]:
    by_id = {op.id: op for op in ops}
    state: Hashable = model.init()
    shown = []
    for op_id in order:
        step = model.prepare(by_id[op_id])
        if step is not None:
            after = step(state)
            state = state if after is INVALID else after
        shown.append(repr(state))
    return shown


def _svg(
    shown: Sequence[Operation],
    colour_of: Callable[[Operation], str],
    label_of: Callable[[Operation], str],
    outlined: Callable[[Operation], bool],
) -> str:
    times = sorted(
        {op.invoke_us for op in shown}
        | {op.complete_us for op in shown if op.complete_us is not None}
    )
    rank = {t: i for i, t in enumerate(times)}
    lane = {p: i for i, p in enumerate(sorted({op.process for op in shown}))}
    right_px = _LEFT_PX + (len(times) + 2) * _STEP_PX
    height_px = (len(lane) + 1) * _LANE_PX
    parts = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{right_px + 20}" '
            f'height="{height_px}" font-size="11">'
        ),
        (
            '<defs><pattern id="info" width="6" height="6" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="3" height="6" fill="#fff" '
            'fill-opacity="0.55"/></pattern></defs>'
        ),
    ]
    for p, i in lane.items():
        y = i * _LANE_PX + _LANE_PX // 2
        parts.append(f'<text x="4" y="{y + 4}">process {p}</text>')
        parts.append(f'<line x1="{_LEFT_PX}" y1="{y}" x2="{right_px}" y2="{y}" stroke="#eee"/>')
    for op in shown:
        x1 = _LEFT_PX + rank[op.invoke_us] * _STEP_PX
        if op.complete_us is None or op.outcome is Outcome.INDETERMINATE:
            x2 = right_px
        else:
            x2 = _LEFT_PX + rank[op.complete_us] * _STEP_PX + _STEP_PX // 2
        y = lane[op.process] * _LANE_PX + 4
        label = label_of(op)
        tip = html.escape(
            f"op {op.id}: {label} [{op.invoke_us}, {op.complete_us}] {op.outcome.value}"
        )
        width = max(x2 - x1, 4)
        stroke = ' stroke="#000" stroke-width="2"' if outlined(op) else ""
        parts.append(
            f'<g><title>{tip}</title><rect x="{x1}" y="{y}" width="{width}" '
            f'height="{_LANE_PX - 8}" rx="3" fill="{colour_of(op)}"{stroke}/>'
        )
        if op.outcome is Outcome.INDETERMINATE:
            parts.append(
                f'<rect x="{x1}" y="{y}" width="{width}" height="{_LANE_PX - 8}" '
                'fill="url(#info)"/>'
            )
        parts.append(f'<text x="{x1 + 3}" y="{y + 13}">{html.escape(label[:60])}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _page(title: str, summary: str, colours: dict[str, str], svg: str, tail: list[str]) -> str:
    legend = "".join(
        f'<span style="background:{colour}">{name}</span>' for name, colour in colours.items()
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            summary,
            f'<p class="legend">{legend} (striped: outcome unknown)</p>',
            f'<div class="scroll">{svg}</div>',
            *tail,
            "</body></html>",
        ]
    )


def _shown_note(shown: Sequence[Operation], ops: Sequence[Operation]) -> str:
    if len(shown) < len(ops):
        return f"<p>Showing {len(shown)} of {len(ops)} operations.</p>"
    return ""


def render_timeline(
    ops: Sequence[Operation],
    result: PartitionResult,
    model: Model,
    *,
    title: str = "Linearizability violation",
) -> str:
    """The HTML page for one partition's search result (``ops``: that partition)."""
    by_id = {op.id: op for op in ops}
    stuck = by_id.get(result.stuck_op) if result.stuck_op is not None else None
    placed = {op_id: n for n, op_id in enumerate(result.linearization, start=1)}
    horizon_us = stuck.complete_us if stuck is not None and stuck.complete_us is not None else 0
    shown = _window(ops, stuck)

    def kind(op: Operation) -> str:
        if stuck is not None and op.id == stuck.id:
            return "stuck"
        if op.id in placed:
            return "placed"
        if stuck is not None and op.invoke_us <= horizon_us:
            return "unplaced"
        return "later"

    def label(op: Operation) -> str:
        number = f"{placed[op.id]}: " if op.id in placed else ""
        return number + model.describe(op)

    svg = _svg(
        shown,
        lambda op: _COLOURS[kind(op)],
        label,
        lambda op: stuck is not None and op.id == stuck.id,
    )
    states = _states(ops, result.linearization, model)
    rows = [
        f"<tr><td>{n}</td><td>{op_id}</td><td>{by_id[op_id].process}</td>"
        f"<td><code>{html.escape(model.describe(by_id[op_id]))}</code></td>"
        f"<td><code>{html.escape(state[:200])}</code></td></tr>"
        for n, (op_id, state) in enumerate(zip(result.linearization, states, strict=True), 1)
    ]
    if stuck is not None:
        rows.append(
            f'<tr class="stuck"><td>-</td><td>{stuck.id}</td><td>{stuck.process}</td>'
            f"<td><code>{html.escape(model.describe(stuck))}</code></td>"
            "<td>cannot be placed</td></tr>"
        )
    key = "" if result.key is None else f" &middot; key <code>{html.escape(result.key)}</code>"
    summary = (
        f"<p>Verdict: <b>{result.verdict.value}</b>{key} &middot; model "
        f"<code>{html.escape(model.name)}</code> &middot; {result.ops} operations in "
        f"this partition &middot; longest linearizable prefix: {result.prefix_ops} "
        f"completed operations &middot; {len(result.linearization)} placed before "
        f"getting stuck.</p>{_shown_note(shown, ops)}"
    )
    tail = [
        "<h2>Longest partial linearization</h2>",
        (
            "<table><tr><th>#</th><th>op</th><th>process</th><th>operation</th>"
            "<th>state after</th></tr>"
        ),
        *rows,
        "</table>",
    ]
    return _page(title, summary, _COLOURS, svg, tail)


def _describe(op: Operation) -> str:
    text = op.f if op.key is None else f"{op.f} {op.key}"
    if op.input is not None:
        text += f" {op.input!r}"
    if op.outcome is Outcome.OK:
        return text + ("" if op.output is None else f" -> {op.output!r}")
    return text + (" -> ?" if op.outcome is Outcome.INDETERMINATE else " -> fail")


def render_violations(
    ops: Sequence[Operation], result: CheckResult, *, title: str = "Violation"
) -> str:
    """The HTML page of a bank, set, lock or monotonic-reads violation."""
    bad = set(result.ops_bad)
    by_id = {op.id: op for op in ops}
    first = min((by_id[i] for i in bad if i in by_id), key=lambda op: op.invoke_us, default=None)
    shown = _window(ops, first)
    svg = _svg(
        shown,
        lambda op: _VIOLATION_COLOURS["witness" if op.id in bad else "other"],
        _describe,
        lambda op: op.id in bad,
    )
    counts = ", ".join(
        f"{html.escape(str(k))}: {html.escape(str(v))}" for k, v in result.details.items()
    )
    summary = (
        f"<p>Verdict: <b>{result.verdict.value}</b> &middot; checker "
        f"<code>{html.escape(result.checker)}</code> &middot; "
        f"{html.escape(result.summary)}</p><p>{counts}</p>{_shown_note(shown, ops)}"
    )
    rows = [
        f"<tr><td>{op.id}</td><td>{op.process}</td><td><code>{html.escape(_describe(op))}"
        "</code></td></tr>"
        for op in sorted((by_id[i] for i in bad if i in by_id), key=lambda op: op.invoke_us)
    ]
    tail = [
        "<h2>Operations that witness the violation</h2>",
        "<table><tr><th>op</th><th>process</th><th>operation</th></tr>",
        *rows,
        "</table>",
    ]
    return _page(title, summary, _VIOLATION_COLOURS, svg, tail)
