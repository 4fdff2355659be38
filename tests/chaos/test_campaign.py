"""Campaigns against the real configuration: every run must be valid.

The short campaign is part of ``make test``: three runs of 15 s, each a different workload
under different faults. The long one (every workload, longer runs) needs
``PHALANX_LONG_TESTS=1``. A documented, longer campaign is in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from phalanx.cli.main import _register, cli

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals and process groups")


def _campaign(out: Path, *args: str) -> list[dict[str, object]]:
    _register()
    result = CliRunner().invoke(cli, ["chaos", "campaign", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert isinstance(summary, list)
    return summary


def test_a_short_campaign_is_clean(tmp_path: Path) -> None:
    summary = _campaign(
        tmp_path,
        "--runs",
        "3",
        "--time",
        "15",
        "--recovery",
        "1",
        "--seed",
        "21",
        "--workloads",
        "register,set,bank",
        "--nemeses",
        "partition,kill;pause;toxic,partition",
    )
    assert [row["verdict"] for row in summary] == ["valid"] * 3
    assert [row["workload"] for row in summary] == ["register", "set", "bank"]
    assert [row["nemesis"] for row in summary] == [
        ["partition", "kill"],
        ["pause"],
        ["toxic", "partition"],
    ]
    for row in summary:
        counts = row["counts"]
        assert isinstance(counts, dict)
        assert counts["ok"] > 0
        assert isinstance(row["faults_applied"], int)
        assert row["faults_applied"] >= 1
        assert Path(str(row["report"])).is_file()


@pytest.mark.skipif(
    os.environ.get("PHALANX_LONG_TESTS") != "1", reason="long: set PHALANX_LONG_TESTS=1"
)
def test_a_longer_campaign_of_every_workload_is_clean(tmp_path: Path) -> None:
    summary = _campaign(tmp_path, "--runs", "6", "--time", "30", "--seed", "300")
    assert [row["verdict"] for row in summary] == ["valid"] * 6
    assert {row["workload"] for row in summary} == {
        "register",
        "kv",
        "set",
        "bank",
        "lock",
        "fencing",
    }
