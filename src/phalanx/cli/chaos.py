"""``phalanx chaos``: check recorded histories.

``phalanx chaos check --model register|kv|lock|bank|set|monotonic FILE...`` reads each FILE
(Phalanx JSON lines, a Jepsen/Knossos log, or EDN operation maps; ``--format`` overrides the
guess), runs the checkers of the model and prints one verdict per file with the checkers'
summaries. With ``--html DIR``, every history that is not linearizable gets a timeline
``DIR/<file name>.html`` of its smallest failing partition.

Exit status: 0 when every file is valid, 1 when any is invalid, otherwise 2 when any is
unknown (a check ran out of time or a limit, or the file could not be read).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, cast

import click

from phalanx.chaos.check import CHECKED_MODELS, check_history, write_timeline
from phalanx.chaos.edn import EdnError
from phalanx.chaos.history import HistoryError
from phalanx.chaos.loaders import FORMATS, Format, load_history
from phalanx.chaos.partition import TIMEOUT_S_DEFAULT, WORKERS_MAX_DEFAULT
from phalanx.chaos.verdict import Verdict

__all__ = ["EXIT_INVALID", "EXIT_UNKNOWN", "EXIT_VALID", "chaos"]

EXIT_VALID = 0
EXIT_INVALID = 1
EXIT_UNKNOWN = 2

_LINEARIZABLE_WORDS = {
    Verdict.VALID: "linearizable",
    Verdict.INVALID: "NOT linearizable",
    Verdict.UNKNOWN: "UNKNOWN",
}
_WORDS = {Verdict.VALID: "valid", Verdict.INVALID: "INVALID", Verdict.UNKNOWN: "UNKNOWN"}


@click.group("chaos")
def chaos() -> None:
    """Chaos testing: check histories of operations for linearizability and invariants."""


@chaos.command("check")
@click.option(
    "--model",
    type=click.Choice(CHECKED_MODELS),
    required=True,
    help="What the history exercised: which checkers judge it.",
)
@click.argument(
    "files",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--html",
    "html_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write an HTML timeline of each violation into this directory.",
)
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=0.0),
    default=TIMEOUT_S_DEFAULT,
    show_default=True,
    help="Time budget per file; an undecided check is reported unknown.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", *FORMATS]),
    default="auto",
    show_default=True,
    help="The history format.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=WORKERS_MAX_DEFAULT,
    show_default=True,
    help="Worker processes for partitions of large histories.",
)
@click.option(
    "--bank-total",
    type=int,
    default=None,
    help="bank: the expected total (default: the first read's).",
)
def check(
    model: str,
    files: tuple[Path, ...],
    html_dir: Path | None,
    timeout_s: float,
    fmt: str,
    workers: int,
    bank_total: int | None,
) -> None:
    """Check stored histories; print a verdict per file."""
    verdicts: list[Verdict] = []
    linear = model in {"register", "kv", "lock"}
    for path in files:
        started_s = time.perf_counter()
        try:
            ops = load_history(path, cast("Format | Literal['auto']", fmt))
            result = check_history(
                ops, model, timeout_s=timeout_s, workers_max=workers, bank_total=bank_total
            )
        except (HistoryError, EdnError, UnicodeDecodeError) as exc:
            click.echo(f"{path}: UNKNOWN (cannot read: {exc})")
            verdicts.append(Verdict.UNKNOWN)
            continue
        verdicts.append(result.verdict)
        words = _LINEARIZABLE_WORDS if linear and len(result.results) == 1 else _WORDS
        elapsed_s = time.perf_counter() - started_s
        click.echo(f"{path}: {words[result.verdict]} ({len(ops)} operations, {elapsed_s:.2f} s)")
        for checker in result.results:
            click.echo(f"  {checker.checker}: {checker.summary}")
        if html_dir is not None and result.verdict is Verdict.INVALID:
            html_dir.mkdir(parents=True, exist_ok=True)
            target = html_dir / f"{path.name}.html"
            if write_timeline(ops, result, target):
                click.echo(f"  timeline: {target}")
    if Verdict.INVALID in verdicts:
        raise SystemExit(EXIT_INVALID)
    if Verdict.UNKNOWN in verdicts:
        raise SystemExit(EXIT_UNKNOWN)
