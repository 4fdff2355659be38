"""``phalanx chaos run`` end to end: real node processes, a workload through the real
client, faults, a history, a verdict and a report.

A run against the real cluster must come out valid; a run against nodes deliberately
weakened to serve linearizable reads from their local state (stale under a partition) must
come out invalid. The weakened nodes are started by a launcher defined here, which replaces
``RaftNode.read`` in the node process before running the ``phalanx`` command line: nothing
in the product can switch it on.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from phalanx.chaos.history import read_jsonl
from phalanx.chaos.nemesis import NEMESIS_PROCESS
from phalanx.chaos.runner import RunOptions, run_chaos
from phalanx.chaos.verdict import Verdict
from phalanx.cli.main import _register, cli

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals and process groups")

# Serves every read from the local state, as if linearizable=False had been asked.
STALE_READS_NODE = """
from phalanx.node.driver import RaftNode

_read = RaftNode.read


async def _local_read(self, op, *, linearizable=True, timeout_s=None):
    return await _read(self, op, linearizable=False, timeout_s=timeout_s)


RaftNode.read = _local_read
from phalanx.cli.main import main

main()
"""


def test_a_short_run_against_the_real_cluster_is_valid(tmp_path: Path) -> None:
    options = RunOptions(
        nodes=3,
        workload="register",
        nemesis=["partition", "kill"],
        time_limit_s=8.0,
        seed=11,
        concurrency=4,
        rate_hz=60.0,
        recovery_s=1.0,
        fault_s=(1.0, 2.0),
        quiet_s=(0.5, 1.5),
    )
    result = run_chaos(options, tmp_path)
    assert result.verdict is Verdict.VALID, result.checker.results
    assert result.counts["ok"] > 0
    assert result.nemesis_applied >= 1
    for name in ("history.jsonl", "nemesis.jsonl", "results.json", "index.html"):
        assert (tmp_path / name).is_file()
    ops = read_jsonl(tmp_path / "history.jsonl")
    assert {op.f for op in ops} <= {"read", "write", "cas"}
    faults = read_jsonl(tmp_path / "nemesis.jsonl")
    assert all(op.process == NEMESIS_PROCESS for op in faults)
    assert faults[-1].f == "heal"
    assert {op.f for op in faults} & {"start-partition", "start-kill"}
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["verdict"] == "valid"
    assert "phalanx chaos run" in results["command"]
    page = (tmp_path / "index.html").read_text()
    assert "<svg" in page
    assert "VALID" in page
    # The stored history checks the same way from the command line.
    _register()
    checked = CliRunner().invoke(
        cli, ["chaos", "check", "--model", "register", str(tmp_path / "history.jsonl")]
    )
    assert checked.exit_code == 0, checked.output


def test_stale_local_reads_are_caught_under_partitions(tmp_path: Path) -> None:
    options = RunOptions(
        nodes=3,
        workload="register",
        nemesis=["partition"],
        time_limit_s=8.0,
        seed=5,
        concurrency=6,
        rate_hz=120.0,
        recovery_s=1.0,
        fault_s=(1.5, 2.5),
        quiet_s=(0.5, 1.0),
        node_command=[sys.executable, "-c", STALE_READS_NODE],
    )
    result = run_chaos(options, tmp_path)
    assert result.verdict is Verdict.INVALID, result.checker.results
    assert (tmp_path / "timeline.html").is_file()
    assert "INVALID" in (tmp_path / "index.html").read_text()
