"""``phalanx sim``: one seed replays exactly, many seeds summarize, a violation exits 1."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from phalanx.cli.sim import sim
from phalanx.sim.planted import BUGS
from phalanx.sim.run import simulate


def test_one_seed_replays_the_same_run(tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    args = ["--seed", "3", "--faults", "crash,partition", "--duration-s", "4", "--schedule"]
    result = CliRunner().invoke(sim, [*args, "--history", str(history)])
    assert result.exit_code == 0, result.output
    expected = simulate(3, faults="crash,partition", duration_s=4.0)
    assert f"trace hash      {expected.trace_hash}" in result.output
    assert "heal-all" in result.output
    lines = history.read_text().splitlines()
    assert len(lines) == len(expected.history)
    assert {json.loads(line)["f"] for line in lines} <= {"put", "read"}


def test_many_seeds_print_a_summary() -> None:
    result = CliRunner().invoke(sim, ["--seeds", "3", "--duration-s", "3", "--nodes", "3"])
    assert result.exit_code == 0, result.output
    assert "3 seeds (0..2) passed" in result.output
    assert "virtual s per wall s" in result.output
    assert "elections" in result.output


def test_a_violation_exits_1_with_the_report() -> None:
    with BUGS["vote-without-log-check"].planted():
        result = CliRunner().invoke(
            sim, ["--seeds", "60", "--faults", "crash,partition", "--duration-s", "6"]
        )
    assert result.exit_code == 1
    assert "SIMULATION FAILED" in result.output
    assert "replay: phalanx sim --seed" in result.output
    assert "fault schedule:" in result.output


def test_bad_faults_are_rejected() -> None:
    result = CliRunner().invoke(sim, ["--seed", "1", "--faults", "quake"])
    assert result.exit_code == 2
    assert "unknown fault category" in result.output
