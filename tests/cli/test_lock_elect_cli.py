"""``phalanx lock`` and ``phalanx elect`` against a real in-process cluster, and where the
commands find their endpoints."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest

from phalanx.cli.endpoints import ENDPOINTS_ENV, resolve_endpoints


def test_endpoints_come_from_the_option_then_the_environment_then_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENDPOINTS_ENV, raising=False)
    with pytest.raises(click.UsageError, match="--endpoints"):
        resolve_endpoints(None)
    record = tmp_path / ".phalanx" / "cluster.json"
    record.parent.mkdir()
    record.write_text(json.dumps({"endpoints": ["127.0.0.1:7001", "127.0.0.1:7002"]}))
    assert resolve_endpoints(None) == ["127.0.0.1:7001", "127.0.0.1:7002"]
    monkeypatch.setenv(ENDPOINTS_ENV, "10.0.0.1:1, 10.0.0.2:2")
    assert resolve_endpoints(None) == ["10.0.0.1:1", "10.0.0.2:2"]
    assert resolve_endpoints("h:9") == ["h:9"]
    with pytest.raises(click.UsageError, match="host:port"):
        resolve_endpoints("nonsense")
    monkeypatch.delenv(ENDPOINTS_ENV)
    other = tmp_path / "elsewhere.json"
    other.write_text("{not json")
    with pytest.raises(click.UsageError, match="not JSON"):
        resolve_endpoints(None, cluster_file=other)
    other.write_text(json.dumps({"endpoints": "h:1"}))
    with pytest.raises(click.UsageError, match="endpoints"):
        resolve_endpoints(None, cluster_file=other)
