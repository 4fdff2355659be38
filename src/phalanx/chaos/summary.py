"""Summaries of finished chaos runs: one row per run, totals per workload, as Markdown.

``phalanx chaos summary DIR...`` reads the ``results.json`` of every run under the given
directories (a run's own directory, or a campaign's, whose runs are ``run-<n>``) and prints
the table that a reliability page quotes; :func:`load_runs` and :func:`markdown` are the
library form. Nothing here reruns or rechecks anything: the numbers are the runs' own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import msgspec

__all__ = ["RUNS_MAX", "RunRow", "load_runs", "markdown", "totals"]

#: Most runs one summary reads (a campaign holds at most 1,000).
RUNS_MAX: Final = 10_000


class RunRow(msgspec.Struct, frozen=True, kw_only=True):
    """What one run's ``results.json`` says, flattened for a table."""

    directory: str
    seed: int
    nodes: int
    workload: str
    nemesis: str
    operations: int
    ok: int
    fail: int
    info: int
    faults_applied: int
    faults_failed: int
    verdict: str
    duration_s: float
    check_s: float
    netns: bool = False
    error: str | None = None


def _run_dirs(root: Path) -> list[Path]:
    if (root / "results.json").is_file():
        return [root]

    def number(path: Path) -> int:
        suffix = path.name.removeprefix("run-")
        return int(suffix) if suffix.isdigit() else -1

    return sorted((p for p in root.glob("run-*") if p.is_dir()), key=number)


def _row(directory: Path, results: dict[str, Any]) -> RunRow:
    options = results["options"]
    counts = results["counts"]
    return RunRow(
        directory=str(directory),
        seed=int(options["seed"]),
        nodes=int(options["nodes"]),
        workload=str(options["workload"]),
        nemesis=",".join(options["nemesis"]) or "none",
        operations=int(counts.get("operations", 0)),
        ok=int(counts.get("ok", 0)),
        fail=int(counts.get("fail", 0)),
        info=int(counts.get("info", 0)),
        faults_applied=int(results.get("nemesis_applied", 0)),
        faults_failed=int(results.get("nemesis_failed", 0)),
        verdict=str(results["verdict"]),
        duration_s=float(results.get("duration_s", 0.0)),
        check_s=float(results.get("check_s", 0.0)),
        netns=bool(options.get("netns", False)),
        error=results.get("error"),
    )


def _unfinished(directory: Path) -> RunRow:
    return RunRow(
        directory=str(directory),
        seed=0,
        nodes=0,
        workload="?",
        nemesis="?",
        operations=0,
        ok=0,
        fail=0,
        info=0,
        faults_applied=0,
        faults_failed=0,
        verdict="unknown",
        duration_s=0.0,
        check_s=0.0,
        error="no results.json: the run did not finish (its cluster did not start, or it "
        "was stopped)",
    )


def load_runs(roots: Iterable[Path]) -> list[RunRow]:
    """Every run under ``roots``, in order (a run directory without ``results.json`` is an
    ``unknown`` row: it did not finish); ``ValueError`` naming the file that is missing a
    field or is not JSON, or when more than :data:`RUNS_MAX` runs are found."""
    rows: list[RunRow] = []
    for root in roots:
        for directory in _run_dirs(Path(root)):
            path = directory / "results.json"
            if len(rows) >= RUNS_MAX:
                raise ValueError(f"more than RUNS_MAX={RUNS_MAX} runs")
            if not path.is_file():
                rows.append(_unfinished(directory))
                continue
            try:
                results = msgspec.json.decode(path.read_bytes())
                rows.append(_row(directory, results))
            except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}: not a chaos run's results ({exc})") from exc
    return rows


def totals(rows: Sequence[RunRow]) -> dict[str, dict[str, Any]]:
    """Sums per workload and over all runs (key ``"all"``), with a count of each verdict."""
    sums: dict[str, dict[str, Any]] = {}
    for key in [*sorted({r.workload for r in rows}), "all"]:
        chosen = [r for r in rows if key in {"all", r.workload}]
        verdicts: dict[str, int] = {}
        for row in chosen:
            verdicts[row.verdict] = verdicts.get(row.verdict, 0) + 1
        sums[key] = {
            "runs": len(chosen),
            "operations": sum(r.operations for r in chosen),
            "ok": sum(r.ok for r in chosen),
            "fail": sum(r.fail for r in chosen),
            "info": sum(r.info for r in chosen),
            "faults": sum(r.faults_applied for r in chosen),
            "verdicts": dict(sorted(verdicts.items())),
        }
    return sums


#: Characters of a run's error note in its table row.
_NOTE_CHARS_MAX: Final = 80


def _cell(text: str) -> str:
    """``text`` fit for one Markdown table cell: one line, no pipes, bounded."""
    flat = " ".join(text.split()).replace("|", "/")
    return flat if len(flat) <= _NOTE_CHARS_MAX else flat[: _NOTE_CHARS_MAX - 1] + "…"


def _n(value: int) -> str:
    return f"{value:,}"


def markdown(rows: Sequence[RunRow]) -> str:
    """The per-run table, then the totals per workload, as GitHub Markdown."""
    header = "| run | seed | nodes | workload | nemesis | operations | ok | fail | info | faults |"
    lines = [f"{header} verdict |", "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        verdict = row.verdict if row.verdict == "valid" else f"**{row.verdict}**"
        if row.error:
            verdict += f" ({_cell(row.error)})"
        faults = _n(row.faults_applied)
        if row.faults_failed:
            faults += f" (+{row.faults_failed} not applied)"
        lines.append(
            f"| {Path(row.directory).name} | {row.seed} | {row.nodes} | {row.workload} "
            f"| {row.nemesis}{' (netns)' if row.netns else ''} | {_n(row.operations)} "
            f"| {_n(row.ok)} | {_n(row.fail)} | {_n(row.info)} | {faults} | {verdict} |"
        )
    lines += [
        "",
        "| workload | runs | operations | ok | fail | info | faults applied | verdicts |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, sums in totals(rows).items():
        name = f"**{key}**" if key == "all" else key
        verdicts = ", ".join(f"{count} {v}" for v, count in sums["verdicts"].items())
        lines.append(
            f"| {name} | {sums['runs']} | {_n(sums['operations'])} | {_n(sums['ok'])} "
            f"| {_n(sums['fail'])} | {_n(sums['info'])} | {_n(sums['faults'])} | {verdicts} |"
        )
    return "\n".join(lines) + "\n"
