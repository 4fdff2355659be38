"""``phalanx chaos run`` end to end: real node processes, a workload through the real
client, faults, a history, a verdict and a report.

A run against the real cluster must come out valid; a run against nodes deliberately
weakened to serve linearizable reads from their local state (stale under a partition) must
come out invalid. The weakened nodes are started by ``weakened_node.py``, a launcher that
replaces ``RaftNode.read`` in the node process before running the ``phalanx`` command line:
nothing in the product can switch it on. The other weakened modes are in
``test_weakened.py``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import xml.dom.minidom
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from phalanx.chaos.check import check_history
from phalanx.chaos.history import Operation, read_jsonl
from phalanx.chaos.nemesis import NEMESIS_PROCESS
from phalanx.chaos.report import fault_spans, render_report
from phalanx.chaos.runner import RunOptions, RunResult, run_chaos
from phalanx.chaos.verdict import Verdict
from phalanx.cli.main import _register, cli
from phalanx.errors import Outcome

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals and process groups")

# Nodes that serve every read from their local state (see weakened_node.py).
STALE_READS_NODE = [
    sys.executable,
    str(Path(__file__).with_name("weakened_node.py")),
    "stale-reads",
]


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
        node_command=STALE_READS_NODE,
    )
    result = run_chaos(options, tmp_path)
    assert result.verdict is Verdict.INVALID, result.checker.results
    assert (tmp_path / "timeline.html").is_file()
    page = (tmp_path / "index.html").read_text()
    assert "INVALID" in page
    assert "<iframe srcdoc=" in page  # the checker's timeline, embedded


# -- the report and the command line, without a cluster -------------------------------------


def _op(op_id: int, process: int, f: str, start_s: float, end_s: float, **fields: Any) -> Operation:
    outcome = fields.pop("outcome", Outcome.OK)
    return Operation(
        id=op_id,
        process=process,
        f=f,
        invoke_us=int(start_s * 1e6),
        complete_us=int(end_s * 1e6),
        outcome=outcome,
        **fields,
    )


def test_fault_spans_pair_starts_with_stops() -> None:
    faults = [
        _op(0, NEMESIS_PROCESS, "start-partition", 1.0, 1.1, input="partition one"),
        _op(1, NEMESIS_PROCESS, "stop-partition", 3.0, 3.1, input="partition one"),
        _op(2, NEMESIS_PROCESS, "start-kill", 4.0, 4.1, outcome=Outcome.FAILED, input="kill 2"),
        _op(3, NEMESIS_PROCESS, "stop-kill", 5.0, 5.1, input="kill 2"),
        _op(4, NEMESIS_PROCESS, "start-pause", 6.0, 6.1, input="pause 1"),
        _op(5, NEMESIS_PROCESS, "heal", 8.0, 8.2),
    ]
    spans = fault_spans(faults, end_s=10.0)
    assert [(s.kind, s.start_s, s.end_s) for s in spans] == [
        ("partition", 1.0, 3.1),  # a failed fault draws nothing
        ("pause", 6.0, 10.0),  # still open at the end
        ("heal", 8.0, 8.0),
    ]


def test_the_report_is_one_self_contained_page() -> None:
    ops = [
        _op(0, 0, "write", 0.5, 0.6, input=1, key="r0"),
        _op(1, 1, "read", 0.7, 0.9, output=1, key="r0"),
        _op(2, 0, "write", 1.5, 2.5, input=2, key="r0", outcome=Outcome.INDETERMINATE),
        _op(3, 2, "cas", 2.0, 2.1, input=[3, 4], key="r0", outcome=Outcome.FAILED),
    ]
    faults = [
        _op(0, NEMESIS_PROCESS, "start-partition", 1.0, 1.1, input="partition <leader>"),
        _op(1, NEMESIS_PROCESS, "stop-partition", 2.0, 2.1, input="partition <leader>"),
        _op(2, NEMESIS_PROCESS, "heal", 3.0, 3.1),
    ]
    checked = check_history(ops, "register")
    result = RunResult(
        verdict=checked.verdict,
        options=RunOptions(),
        command=RunOptions().command(Path("out")),
        checker=checked,
        counts={"operations": 4, "ok": 2, "fail": 1, "info": 1},
        faults=[],
        nemesis_applied=1,
        nemesis_failed=0,
        duration_s=4.0,
        check_s=0.01,
        out="out",
    )
    page = render_report(result, ops, faults, {})
    assert "VALID" in page
    assert "phalanx chaos run --nodes 3" in page
    assert "partition &lt;leader&gt;" in page  # escaped
    assert "<script" not in page
    namespaces = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    assert set(re.findall(r"https?://[^\"' <>]+", page)) <= namespaces
    svgs = re.findall(r"<svg .*?</svg>", page, re.DOTALL)
    assert len(svgs) >= 3
    for svg in svgs:
        xml.dom.minidom.parseString(svg)


def test_run_refuses_unknown_faults_and_workloads() -> None:
    _register()
    runner = CliRunner()
    bad_fault = runner.invoke(cli, ["chaos", "run", "--nemesis", "partition,flood"])
    assert bad_fault.exit_code == 2
    assert "unknown fault 'flood'" in bad_fault.output
    bad_workload = runner.invoke(cli, ["chaos", "run", "--workload", "queue"])
    assert bad_workload.exit_code == 2
