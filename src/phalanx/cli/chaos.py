"""``phalanx chaos``: check recorded histories.

``phalanx chaos check --model register|kv|lock|bank|set|monotonic FILE...`` reads each FILE
(Phalanx JSON lines, a Jepsen/Knossos log, or EDN operation maps; ``--format`` overrides the
guess), runs the checkers of the model and prints one verdict per file with the checkers'
summaries. With ``--html DIR``, every invalid history gets a timeline ``DIR/<file name>.html``:
of its smallest failing partition for a linearizability violation, else of the operations
that witness the first failing checker.

Exit status: 0 when every file is valid, 1 when any is invalid, otherwise 2 when any is
unknown (a check ran out of time or a limit, or the file could not be read).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import click

from phalanx.chaos.check import CHECKED_MODELS, check_history, write_timeline
from phalanx.chaos.edn import EdnError
from phalanx.chaos.history import HistoryError
from phalanx.chaos.loaders import FORMATS, Format, load_history
from phalanx.chaos.partition import TIMEOUT_S_DEFAULT, WORKERS_MAX_DEFAULT
from phalanx.chaos.verdict import Verdict, combine
from phalanx.cli.chaos_proxy import proxy

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
    """Chaos testing: runs of a real cluster under faults, a TCP fault proxy, and checkers of
    the histories they record (linearizability and invariants)."""


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
    help="Write an HTML timeline of each invalid history into this directory.",
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
    if len(verdicts) > 1:
        counts = ", ".join(f"{verdicts.count(v)} {v.value}" for v in Verdict if v in verdicts)
        click.echo(f"{len(verdicts)} files: {counts}")
    if Verdict.INVALID in verdicts:
        raise SystemExit(EXIT_INVALID)
    if Verdict.UNKNOWN in verdicts:
        raise SystemExit(EXIT_UNKNOWN)


# -- phalanx chaos run / campaign ------------------------------------------------------------

_RUN_WORKLOADS = ("register", "kv", "set", "bank", "lock", "fencing")
_NEMESES = (
    "partition",
    "kill",
    "pause",
    "restart",
    "toxic",
    "clock",
    "membership",
    "bandwidth",
    "reset",
    "slow-close",
    "timeout",
)
#: The nemesis sets a campaign cycles through.
_CAMPAIGN_NEMESES = (
    "partition",
    "kill",
    "pause",
    "partition,kill",
    "partition,pause,kill",
    "restart",
    "toxic",
    "reset,timeout,bandwidth,slow-close",
)
#: Characters of a fault's description in the terminal summary.
_FAULT_TEXT_CHARS_MAX = 80
#: Width of the tables printed when the output is not a terminal.
_PIPE_WIDTH = 120
#: Most runs one campaign may ask for.
CAMPAIGN_RUNS_MAX = 1000


def _nemesis_list(_ctx: click.Context, _param: click.Parameter, value: str) -> list[str]:
    kinds = [k.strip() for k in value.split(",") if k.strip() and k.strip() != "none"]
    unknown = [k for k in kinds if k not in _NEMESES]
    if unknown:
        raise click.BadParameter(f"unknown fault {unknown[0]!r}; choose from {', '.join(_NEMESES)}")
    return kinds


def _check_netns(netns: bool, nemesis_sets: list[list[str]]) -> None:
    """Refuse ``--netns`` up front when this machine cannot do it or a fault needs what
    the namespaces hide (the nodes' loopback admin endpoint, the peer proxies)."""
    if not netns:
        return
    from phalanx.chaos.netns import NetnsUnavailable, check_environment, refused_faults

    try:
        check_environment()
    except NetnsUnavailable as exc:
        raise click.UsageError(str(exc)) from None
    refused = refused_faults(k for kinds in nemesis_sets for k in kinds)
    if refused:
        raise click.UsageError(
            f"--netns cannot apply {', '.join(refused)}: they need the nodes' admin endpoint "
            "(loopback-only, inside each namespace) or the peer proxies; choose from "
            "partition, kill, pause, restart, membership"
        )


def _exit_code(verdict: Verdict) -> int:
    return {Verdict.VALID: EXIT_VALID, Verdict.INVALID: EXIT_INVALID}.get(verdict, EXIT_UNKNOWN)


def _run_common(function: Callable[..., None]) -> Callable[..., None]:
    options = [
        click.option(
            "--nodes",
            type=click.IntRange(1, 9),
            default=3,
            show_default=True,
            help="Members of the local cluster (3 or 5 make sense).",
        ),
        click.option(
            "--time-limit",
            "--time",
            "time_limit_s",
            type=click.FloatRange(min=1.0, max=3600.0),
            default=30.0,
            show_default=True,
            help="Seconds of workload under faults (then heal, recovery, final reads).",
        ),
        click.option(
            "--concurrency",
            type=click.IntRange(1, 64),
            default=5,
            show_default=True,
            help="Client tasks, each with its own clients.",
        ),
        click.option(
            "--rate",
            "rate_hz",
            type=click.FloatRange(min=0.1, max=10_000.0),
            default=100.0,
            show_default=True,
            help="Operations per second, all clients together (at most).",
        ),
        click.option(
            "--recovery",
            "recovery_s",
            type=click.FloatRange(min=0.0, max=600.0),
            default=3.0,
            show_default=True,
            help="Seconds of calm after the final heal, before the final reads.",
        ),
        click.option(
            "--tick-ms",
            type=click.IntRange(1, 1000),
            default=20,
            show_default=True,
            help="The nodes' Raft tick (elections after 10 to 20 ticks).",
        ),
        click.option(
            "--fsync/--no-fsync",
            default=True,
            show_default=True,
            help="Whether the nodes fdatasync their logs.",
        ),
        click.option(
            "--client-retries",
            is_flag=True,
            help="Let the client retry each call itself (default: one attempt per operation).",
        ),
        click.option(
            "--netns",
            is_flag=True,
            help="Root only: each node in its own network namespace, partitions as iptables "
            "DROP rules (no toxic, clock or proxy faults). See docs/chaos-netns.md.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@chaos.command("run")
@click.option(
    "--workload", type=click.Choice(_RUN_WORKLOADS), default="register", show_default=True
)
@click.option(
    "--nemesis",
    default="partition,kill",
    show_default=True,
    callback=_nemesis_list,
    help=f"Comma-separated faults: {', '.join(_NEMESES)} (or none).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds faults and clients.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory of the report (default: chaos-out/<workload>-<seed>).",
)
@_run_common
def run(
    workload: str,
    nemesis: list[str],
    seed: int,
    out: Path | None,
    **settings: Any,
) -> None:
    """Run a workload against a local cluster under faults; check it; write a report.

    Starts NODES `phalanx node` processes on loopback in OUT/cluster, runs the workload and
    the nemesis for TIME_LIMIT seconds, heals, waits for recovery, checks the history and
    writes OUT/history.jsonl, OUT/nemesis.jsonl, OUT/results.json and OUT/index.html. Exit
    status: 0 valid, 1 invalid, 2 unknown.
    """
    from phalanx.chaos.cluster import ClusterStartError
    from phalanx.chaos.runner import RunOptions, run_chaos

    _check_netns(settings["netns"], [nemesis])
    target = out if out is not None else Path("chaos-out") / f"{workload}-{seed}"
    options = RunOptions(workload=workload, nemesis=nemesis, seed=seed, **settings)
    click.echo(f"chaos run: {options.command(target)}")
    try:
        result = run_chaos(options, target)
    except ClusterStartError as exc:
        click.echo(f"UNKNOWN: the cluster did not start: {exc}")
        raise SystemExit(EXIT_UNKNOWN) from None
    _print_faults(target / "nemesis.jsonl")
    counts = result.counts
    click.echo(
        f"{_WORDS[result.verdict]}: {counts['operations']} operations "
        f"(ok {counts['ok']}, fail {counts['fail']}, info {counts['info']}), "
        f"{result.nemesis_applied} faults applied, run {result.duration_s:.1f} s, "
        f"check {result.check_s:.2f} s"
    )
    for checker in result.checker.results:
        click.echo(f"  {checker.checker}: {checker.summary}")
    if result.error:
        click.echo(f"  note: {result.error}")
    click.echo(f"  report: {target / 'index.html'}")
    raise SystemExit(_exit_code(result.verdict))


def _print_faults(path: Path) -> None:
    """One line per fault applied (from ``nemesis.jsonl``), as a table."""
    import msgspec
    from rich.console import Console
    from rich.table import Table

    from phalanx.chaos.history import read_jsonl

    table = Table(title="faults", title_justify="left")
    for column in ("at (s)", "fault", "outcome", "what happened"):
        table.add_column(column, overflow="fold")
    for op in read_jsonl(path):
        if op.f.startswith("start-") or op.f == "heal":
            happened = op.error if op.error is not None else op.output
            text = msgspec.json.encode(happened).decode()
            table.add_row(
                f"{op.invoke_us / 1e6:.1f}",
                str(op.input or op.f),
                op.outcome.value,
                text[:_FAULT_TEXT_CHARS_MAX],
            )
    Console().print(table)


@chaos.command("campaign")
@click.option("--runs", type=click.IntRange(1, CAMPAIGN_RUNS_MAX), default=5, show_default=True)
@click.option(
    "--workloads",
    default=",".join(_RUN_WORKLOADS),
    show_default=True,
    help="Comma-separated workloads, used in turn.",
)
@click.option(
    "--nemeses",
    default=";".join(_CAMPAIGN_NEMESES),
    show_default=True,
    help="Semicolon-separated nemesis sets (each comma-separated), used in turn.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first run.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("chaos-campaign"),
    show_default=True,
    help="Each run's report goes to OUT/run-<n>; the summary to OUT/summary.json.",
)
@_run_common
def campaign(
    runs: int,
    workloads: str,
    nemeses: str,
    seed: int,
    out: Path,
    **settings: Any,
) -> None:
    """Repeat `chaos run` with successive seeds, workloads and nemeses; print a summary.

    Exit status: 1 when any run is invalid, else 2 when any is unknown, else 0.
    """
    import msgspec
    from rich.console import Console
    from rich.table import Table

    from phalanx.chaos.cluster import ClusterStartError
    from phalanx.chaos.runner import RunOptions, run_chaos

    chosen = [w.strip() for w in workloads.split(",") if w.strip()]
    bad = [w for w in chosen if w not in _RUN_WORKLOADS]
    if bad or not chosen:
        raise click.BadParameter(
            f"choose from {', '.join(_RUN_WORKLOADS)}", param_hint="--workloads"
        )
    sets = [
        _nemesis_list(click.get_current_context(), click.Option(["--x"]), n)
        for n in nemeses.split(";")
    ]
    _check_netns(settings["netns"], sets)
    table = Table(title=f"chaos campaign: {runs} runs")
    for column in (
        "run",
        "seed",
        "workload",
        "nemesis",
        "verdict",
        "ops",
        "ok",
        "info",
        "faults",
        "s",
    ):
        table.add_column(column, overflow="fold")
    verdicts: list[Verdict] = []
    rows: list[dict[str, Any]] = []
    for n in range(runs):
        options = RunOptions(
            workload=chosen[n % len(chosen)],
            nemesis=sets[n % len(sets)],
            seed=seed + n,
            **settings,
        )
        target = out / f"run-{n}"
        try:
            result = run_chaos(options, target)
        except ClusterStartError as exc:
            click.echo(f"run {n}: the cluster did not start: {exc}")
            verdicts.append(Verdict.UNKNOWN)
            rows.append({"run": n, "seed": options.seed, "verdict": "unknown", "error": str(exc)})
            continue
        verdicts.append(result.verdict)
        c = result.counts
        click.echo(f"run {n}: {_WORDS[result.verdict]} ({options.command(target)})")
        table.add_row(
            str(n),
            str(options.seed),
            options.workload,
            ",".join(options.nemesis) or "none",
            _WORDS[result.verdict],
            str(c["operations"]),
            str(c["ok"]),
            str(c["info"]),
            str(result.nemesis_applied),
            f"{result.duration_s:.0f}",
        )
        rows.append(
            {
                "run": n,
                "seed": options.seed,
                "workload": options.workload,
                "nemesis": options.nemesis,
                "verdict": result.verdict.value,
                "counts": c,
                "faults_applied": result.nemesis_applied,
                "report": str(target / "index.html"),
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_bytes(msgspec.json.format(msgspec.json.encode(rows)))
    console = Console()
    if not console.is_terminal:
        console = Console(width=_PIPE_WIDTH)
    console.print(table)
    raise SystemExit(_exit_code(combine(verdicts)))


chaos.add_command(proxy)


@chaos.command("summary")
@click.argument(
    "directories",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per run instead.")
def summary(directories: tuple[Path, ...], as_json: bool) -> None:
    """Tabulate finished runs: a run's OUT, or a campaign's (its run-<n> directories).

    Prints one Markdown row per run and the totals per workload, from each run's
    results.json. Exit status: 1 when any run is invalid, else 2 when any is unknown
    (or no run was found), else 0.
    """
    import msgspec

    from phalanx.chaos.summary import load_runs, markdown

    try:
        rows = load_runs(directories)
    except ValueError as exc:
        click.echo(f"Error: {exc}", err=True)
        raise SystemExit(EXIT_UNKNOWN) from None
    if as_json:
        for row in rows:
            click.echo(msgspec.json.encode(row).decode())
    elif rows:
        click.echo(markdown(rows), nl=False)
    verdicts = {row.verdict for row in rows}
    if "invalid" in verdicts:
        raise SystemExit(EXIT_INVALID)
    if not rows or verdicts != {"valid"}:
        if not rows:
            click.echo("no finished run under the directories given", err=True)
        raise SystemExit(EXIT_UNKNOWN)
