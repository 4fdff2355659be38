"""The demo's cluster act: real processes, the leader SIGKILLed, every acknowledged write read
back; and no node process outlives the act, even when it is interrupted."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from phalanx.cli.local_cluster import LocalCluster, LocalMember, is_alive
from phalanx.demo import cluster as act

WRITES = 40


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=120), out


def test_the_act_proves_every_acknowledged_write_survives(tmp_path: Path) -> None:
    screen, out = console()
    result = act.run_cluster_act(screen, writes_per_phase=WRITES, root=tmp_path)
    assert result.proven, out.getvalue()
    assert not result.missing
    assert not result.missing_on_restarted
    assert result.new_leader != result.old_leader
    # Writes whose outcome is unknown may have been applied or not; all others were acked.
    assert len(result.acknowledged) + len(result.unknown) + len(result.failed) == 2 * WRITES
    assert len(result.acknowledged) >= WRITES
    text = " ".join(out.getvalue().split())
    assert "Proof holds" in text
    assert f"node {result.old_leader} (killed) -> node {result.new_leader}" in text
    assert not any(is_alive(pid) for pid in result.pids)
    assert list(tmp_path.iterdir()) == []  # the temporary cluster directory is gone


def test_an_interrupted_act_leaves_no_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []
    real_start = LocalCluster.start

    def start(self: LocalCluster, member: LocalMember) -> int:
        pid = real_start(self, member)
        started.append(pid)
        return pid

    async def interrupted(self: object, member: LocalMember) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalCluster, "start", start)
    monkeypatch.setattr(act._Act, "wait_caught_up", interrupted)
    screen, _ = console()
    with pytest.raises(KeyboardInterrupt):
        act.run_cluster_act(screen, writes_per_phase=10, root=tmp_path)
    assert len(started) == 4  # three nodes, then the killed leader again
    assert not any(is_alive(pid) for pid in started)
    assert list(tmp_path.iterdir()) == []
