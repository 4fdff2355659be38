"""Proof of teeth: runs against deliberately weakened clusters must come out invalid.

Each weakened mode lives here, in test code, never behind a product flag:

- nodes that acknowledge a write once the leader has appended it, before a majority has it
  (``weakened_node.py early-ack``), lose acknowledged writes when the leader is killed or
  cut off: the set checker reports them lost;
- a lock whose protected resource ignores fencing tokens lets a holder whose lease expired
  under it (clock faults) overwrite a newer holder's work: the lock checker reports the
  resource's writes going back in token order, while the same run against a resource that
  checks tokens is valid.

Stale local reads (``weakened_node.py stale-reads``) are caught in ``test_runner.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from phalanx.chaos import runner
from phalanx.chaos.nemesis import FaultWindow, plan
from phalanx.chaos.runner import RunOptions, RunResult, run_chaos
from phalanx.chaos.verdict import Verdict
from phalanx.chaos.workloads import FencingWorkload
from phalanx.client import AsyncClient

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals and process groups")

LAUNCHER = Path(__file__).with_name("weakened_node.py")


def weakened(mode: str) -> list[str]:
    return [sys.executable, str(LAUNCHER), mode]


def _details(result: RunResult, checker: str) -> dict[str, object]:
    for checked in result.checker.results:
        if checked.checker == checker:
            return dict(checked.details)
    raise AssertionError(f"no {checker} result in {result.checker.results}")


def test_writes_acknowledged_before_commit_are_lost_when_the_leader_goes(tmp_path: Path) -> None:
    options = RunOptions(
        nodes=3,
        workload="set",
        nemesis=["partition", "kill"],
        time_limit_s=9.0,
        seed=15,
        concurrency=6,
        rate_hz=150.0,
        recovery_s=1.0,
        fault_s=(1.5, 2.5),
        quiet_s=(0.5, 1.0),
        node_command=weakened("early-ack"),
    )
    result = run_chaos(options, tmp_path)
    assert result.verdict is Verdict.INVALID, result.checker.results
    details = _details(result, "set")
    assert isinstance(details["lost"], int)
    assert details["lost"] > 0
    assert (tmp_path / "timeline.html").is_file()


class UnfencedWorkload(FencingWorkload):
    """The fencing workload against a resource that stores whatever token it is given."""

    async def write_resource(self, client: AsyncClient, token: int) -> None:
        await client.put(self.resource, str(token).zfill(16).encode())


#: Every member's clock this far ahead during each clock window: more than the workload's
#: 5 s lease, so whoever leads expires every lease at the window's start.
CLOCK_JUMP_MS = 9_000


@pytest.fixture
def clock_jumps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clock windows that move every member's clock forward by ``CLOCK_JUMP_MS`` (no strobe,
    no backward offsets), so that the leader, whichever it is, expires the holder's lease."""

    def jumps(seed: int, kinds: Sequence[str], **options: Any) -> list[FaultWindow]:
        windows = plan(seed, kinds, **options)
        return [
            msgspec.structs.replace(
                w, offsets=dict.fromkeys(w.offsets, CLOCK_JUMP_MS), strobe_period_ms=0
            )
            if w.kind == "clock"
            else w
            for w in windows
        ]

    monkeypatch.setattr(runner, "plan", jumps)


def _fencing_options() -> RunOptions:
    return RunOptions(
        nodes=3,
        workload="fencing",
        nemesis=["clock"],
        time_limit_s=10.0,
        seed=7,
        concurrency=4,
        rate_hz=40.0,
        recovery_s=1.0,
        fault_s=(1.0, 2.0),
        quiet_s=(0.5, 1.0),
    )


@pytest.mark.usefixtures("clock_jumps")
def test_a_resource_that_ignores_fencing_tokens_is_caught(tmp_path: Path) -> None:
    options = _fencing_options()
    result = run_chaos(options, tmp_path, workload=UnfencedWorkload())
    assert result.verdict is Verdict.INVALID, result.checker.results
    details = _details(result, "lock")
    assert isinstance(details["stale_writes"], int)
    assert details["stale_writes"] > 0


@pytest.mark.usefixtures("clock_jumps")
def test_the_same_faults_against_a_fenced_resource_are_valid(tmp_path: Path) -> None:
    result = run_chaos(_fencing_options(), tmp_path)
    assert result.verdict is Verdict.VALID, result.checker.results
    details = _details(result, "lock")
    assert details["stale_writes"] == 0
    assert isinstance(details["holds"], int)
    assert details["holds"] > 0
