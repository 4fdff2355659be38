"""``phalanx bench NAME [ARGS]...``: run one of the repository's benchmarks.

The benchmarks live in ``benchmarks/bench_<NAME>.py`` of a Phalanx checkout (they compare
Phalanx with its peers, which are development dependencies, not the package's). The command
finds that folder from the current directory upwards and runs the script with this Python.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

#: How many parent folders are searched for ``benchmarks/``.
SEARCH_DEPTH_MAX = 8


def find_benchmarks(start: Path) -> Path | None:
    """The ``benchmarks`` folder of the checkout holding ``start``, if any."""
    here = start.resolve()
    for folder in [here, *here.parents][: SEARCH_DEPTH_MAX + 1]:
        candidate = folder / "benchmarks"
        if (candidate / "bench_resilience.py").is_file():
            return candidate
    return None


def available(folder: Path) -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in folder.glob("bench_*.py"))


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(name: str | None, args: tuple[str, ...]) -> None:
    """Run benchmarks/bench_NAME.py of this checkout with ARGS (try NAME --help); without
    NAME, list them. Results go to docs/benchmarks.md with --write docs/benchmarks.md."""
    folder = find_benchmarks(Path.cwd())
    if folder is None:
        raise click.UsageError("no benchmarks/ folder here or above: run from a Phalanx checkout")
    names = available(folder)
    if name is None:
        click.echo("\n".join(names))
        return
    if name not in names:
        raise click.BadParameter(f"{name!r}; expected one of {', '.join(names)}", param_hint="NAME")
    script = folder / f"bench_{name}.py"
    completed = subprocess.run([sys.executable, str(script), *args], check=False)  # noqa: S603
    sys.exit(completed.returncode)
