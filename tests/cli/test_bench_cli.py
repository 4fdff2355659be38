"""``phalanx bench``: lists and runs the checkout's benchmarks."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from phalanx.cli.bench import bench, find_benchmarks

ROOT = Path(__file__).resolve().parents[2]


def test_lists_the_benchmarks_from_a_subfolder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT / "docs")
    result = CliRunner().invoke(bench, [])
    assert result.exit_code == 0
    assert {"cluster", "resilience", "sharding"} <= set(result.output.split())


def test_runs_one_with_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exited:
        bench.main(["kv", "--help"], standalone_mode=False)
    assert exited.value.code == 0


def test_unknown_name_and_no_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(bench, ["nope"])
    assert result.exit_code == 2
    assert "expected one of" in result.output
    assert find_benchmarks(tmp_path) is None
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(bench, [])
    assert result.exit_code == 2
    assert "run from a Phalanx checkout" in result.output
