"""``phalanx health serve``: option parsing, and a real process answering probes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from phalanx.cli.health import check_name, health, parse_check_spec, registry_from_specs
from phalanx.cli.main import _register, cli
from phalanx.health import CHECK_NAME_CHARS_MAX, CheckStatus, HealthRegistry, Probe


def test_health_group_is_registered_on_the_main_cli() -> None:
    _register()
    result = CliRunner().invoke(cli, ["health", "--help"])
    assert result.exit_code == 0
    assert "serve" in result.output


def test_serve_help_shows_the_defaults() -> None:
    result = CliRunner().invoke(health, ["serve", "--help"])
    assert result.exit_code == 0
    assert "127.0.0.1" in result.output
    assert "8080" in result.output
    assert "tcp:HOST:PORT|sqlite:PATH" in result.output


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("tcp:127.0.0.1:5432", ("tcp", "127.0.0.1", 5432)),
        ("tcp:db.internal:6379", ("tcp", "db.internal", 6379)),
        ("tcp:[::1]:5432", ("tcp", "::1", 5432)),
        ("sqlite:/data/app.db", ("sqlite", "/data/app.db", None)),
        ("sqlite:relative.db", ("sqlite", "relative.db", None)),
    ],
)
def test_parse_check_spec(spec: str, parsed: tuple[str, str, int | None]) -> None:
    assert parse_check_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["tcp:host", "tcp::5432", "tcp:h:port", "http:x", "sqlite:", "x"])
def test_bad_specs_name_the_option(spec: str) -> None:
    with pytest.raises(ValueError, match=r"^--check:"):
        parse_check_spec(spec)


def test_bad_spec_is_a_usage_error() -> None:
    result = CliRunner().invoke(health, ["serve", "--port", "0", "--check", "ftp:x"])
    assert result.exit_code == 2
    assert "--check: unknown kind 'ftp'" in result.output


def test_registry_from_specs_adds_readiness_checks() -> None:
    registry = registry_from_specs(["tcp:127.0.0.1:1", "sqlite:a.db"], timeout_s=0.2)
    names = [(c.name, c.probes, c.timeout_s) for c in registry.checks()]
    ready = frozenset({Probe.READINESS})
    assert names == [("tcp:127.0.0.1:1", ready, 0.2), ("sqlite:a.db", ready, 0.2)]


@pytest.mark.parametrize("port", ["70000", "-1", "65536"])
def test_a_port_out_of_range_is_a_usage_error(port: str) -> None:
    result = CliRunner().invoke(health, ["serve", "--port", port])
    assert result.exit_code == 2
    assert "--port" in result.output
    assert "0<=x<=65535" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_spec_that_is_a_valid_name_is_the_name() -> None:
    assert check_name("tcp:127.0.0.1:5432") == "tcp:127.0.0.1:5432"
    assert check_name("sqlite:/data/app.db") == "sqlite:/data/app.db"


@pytest.mark.parametrize(
    "spec",
    [
        "sqlite:/tmp/my db.db",
        "sqlite:/data/" + "nested/" * 30 + "app.db",
        "sqlite:/data/caf\u00e9.db",
        "sqlite:/data/x" + "y" * (CHECK_NAME_CHARS_MAX + 1 - len("sqlite:/data/x")),
    ],
)
def test_other_specs_get_a_valid_distinct_name(spec: str) -> None:
    name = check_name(spec)
    assert name != spec
    assert len(name) <= CHECK_NAME_CHARS_MAX
    assert name == check_name(spec)  # stable across runs
    HealthRegistry().add(name, lambda: True)  # accepted as a check name
    assert name.startswith("sqlite:/")
    assert check_name(spec.replace("/data", "/date").replace("/tmp", "/tnp")) != name


def test_similar_specs_that_clean_up_alike_still_get_different_names() -> None:
    assert check_name("sqlite:/a b.db") != check_name("sqlite:/a_b.db")
    assert check_name("sqlite:/a b.db") != check_name("sqlite:/a;b.db")


async def test_a_renamed_check_shows_its_spec_in_the_message(tmp_path: Path) -> None:
    present = tmp_path / "my db.db"
    sqlite3.connect(present).close()
    missing = tmp_path / ("long-" * 25 + "gone.db")
    specs = [f"sqlite:{present}", f"sqlite:{missing}"]
    registry = registry_from_specs(specs)
    report = await registry.run_probe("readiness")
    ok, gone = report.checks
    assert ok.status is CheckStatus.OK
    assert ok.name == check_name(specs[0])
    assert ok.message == f"{specs[0]}: schema objects: 0"
    assert gone.status is CheckStatus.FAIL
    assert gone.message.startswith(f"{specs[1]}: ")
    assert gone.message.endswith("no such database file")


def test_serve_command_answers_probes_until_interrupted(tmp_path: Path) -> None:
    database = tmp_path / "app.db"
    sqlite3.connect(database).close()
    command = [
        sys.executable,
        "-c",
        "from phalanx.cli.main import main; main()",
        "health",
        "serve",
        "--port",
        "0",
        "--check",
        f"sqlite:{database}",
        "--check",
        f"sqlite:{tmp_path / 'missing.db'}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("serving health on http://127.0.0.1:")
        url = banner.split()[3]
        live = httpx.get(f"{url}/healthz", timeout=5.0, trust_env=False)
        assert live.status_code == 200
        ready = httpx.get(f"{url}/ready", timeout=5.0, trust_env=False)
        assert ready.status_code == 503
        statuses = {c["name"].rsplit("/", 1)[-1]: c["status"] for c in ready.json()["checks"]}
        assert statuses == {"app.db": "ok", "missing.db": "fail"}
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10.0)
        if process.stdout is not None:
            process.stdout.close()
