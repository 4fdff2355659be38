"""``phalanx chaos proxy``: a real ``serve`` process, driven by the client commands."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from loopback import free_port
from phalanx.cli.chaos import chaos
from phalanx.cli.chaos_proxy import proxy

WAIT_S = 10.0


class Served:
    def __init__(self, process: subprocess.Popen[str], lines: list[str]) -> None:
        self.process = process
        self.lines = lines

    @property
    def admin_url(self) -> str:
        return "http://" + self.lines[-1].removeprefix("admin listening on ")

    def listen(self, name: str) -> tuple[str, int]:
        for line in self.lines:
            if line.startswith(f"proxy {name} "):
                host, port = line.rsplit(" ", 1)[1].rsplit(":", 1)
                return host, int(port)
        raise AssertionError(f"no line for proxy {name}: {self.lines}")


def _read_until_admin_line(process: subprocess.Popen[str]) -> list[str]:
    """The lines ``serve`` printed up to its admin address (read by a thread, so the wait is
    bounded even if the process prints nothing)."""
    assert process.stdout is not None
    stdout = process.stdout
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stdout:  # ends when the process exits
            lines.put(line.strip())
            if line.startswith("admin listening on "):
                return

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=max(deadline - time.monotonic(), 0.01)))
        except queue.Empty:
            break
        if seen[-1].startswith("admin listening on "):
            return seen
    raise AssertionError(f"serve did not announce its admin address: {seen}")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    upstream_port = free_port()
    config = tmp_path / "proxies.json"
    config.write_text(
        json.dumps(
            [
                {"name": "db", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{upstream_port}"},
                {
                    "name": "off",
                    "listen": "127.0.0.1:0",
                    "upstream": "127.0.0.1:1",
                    "enabled": False,
                },
            ]
        )
    )
    argv = [sys.executable, "-m", "phalanx.cli.main", "chaos", "proxy", "serve"]
    argv += ["--listen", "127.0.0.1:0", "--config", str(config), "--seed", "7"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield Served(process, _read_until_admin_line(process))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _out, err = process.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise
    assert process.returncode == 0, err


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(proxy, list(args))
    return result.exit_code, result.output


def test_serve_announces_every_address_and_the_commands_drive_it(served: Served) -> None:
    assert served.lines[0].startswith("proxy db listening on 127.0.0.1:")
    assert served.lines[1].startswith("proxy off disabled on 127.0.0.1:")
    host, port = served.listen("db")
    with socket.create_connection((host, port), timeout=WAIT_S):
        pass  # the proxy listens
    admin = ("--admin", served.admin_url)

    code, output = invoke("toxic", "add", "db", "--type", "latency", "-a", "latency=50", *admin)
    assert code == 0, output
    assert (
        output.strip()
        == "toxic latency_downstream: latency downstream toxicity=1 latency=50 jitter=0"
    )
    code, output = invoke("toxic", "update", "db", "latency_downstream", "-a", "jitter=5", *admin)
    assert code == 0, output
    assert "jitter=5" in output
    code, output = invoke("create", "cache", "--listen", "127.0.0.1:0", "--upstream", "h:1", *admin)
    assert code == 0, output
    assert output.startswith("proxy cache listening on 127.0.0.1:")
    code, output = invoke("list", *admin)
    assert code == 0, output
    assert "proxy db listening on" in output
    assert "  toxic latency_downstream: latency downstream" in output
    code, output = invoke("list", "--json", *admin)
    assert sorted(json.loads(output)) == ["cache", "db", "off"]
    assert invoke("toxic", "remove", "db", "latency_downstream", *admin)[0] == 0
    assert invoke("disable", "db", *admin) == (0, f"proxy db disabled on {host}:{port}\n")
    assert invoke("reset", *admin)[0] == 0
    assert invoke("delete", "cache", *admin)[0] == 0
    code, output = invoke("list", "--json", *admin)
    states = json.loads(output)
    assert sorted(states) == ["db", "off"]
    assert all(state["enabled"] for state in states.values())


def test_errors_are_one_line_and_a_non_zero_exit(served: Served) -> None:
    admin = ("--admin", served.admin_url)
    code, output = invoke("toxic", "add", "db", "--type", "latency", "-a", "bogus=1", *admin)
    assert code == 1
    assert (
        output == "Error: attributes: latency has no attribute 'bogus' (it has: latency, jitter)\n"
    )
    code, output = invoke("delete", "nope", *admin)
    assert (code, output) == (1, "Error: proxy 'nope' not found\n")
    code, output = invoke("toxic", "add", "db", "--type", "latency", "-a", "latency", *admin)
    assert code == 2
    assert "expected KEY=INTEGER" in output


def test_an_unreachable_admin_api_is_one_line() -> None:
    code, output = invoke("list", "--admin", f"http://127.0.0.1:{free_port()}")
    assert code == 1
    assert output.startswith("Error: proxy API at http://127.0.0.1:")
    assert output.count("\n") == 1


def test_serve_refuses_a_remote_admin_address_and_a_bad_config(tmp_path: Path) -> None:
    code, output = invoke("serve", "--listen", "0.0.0.0:0")
    assert code == 2
    assert "not a loopback address" in output
    config = tmp_path / "bad.json"
    config.write_text('[{"name": "x"}]')
    code, output = invoke("serve", "--listen", "127.0.0.1:0", "--config", str(config))
    assert code == 1
    assert "missing required field" in output


def test_the_group_is_registered_under_chaos() -> None:
    result = CliRunner().invoke(chaos, ["proxy", "--help"])
    assert result.exit_code == 0
    for command in ("serve", "list", "create", "delete", "toxic", "reset"):
        assert command in result.output


def test_toxiproxys_own_python_client_drives_the_proxy(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTTP API speaks Toxiproxy's dialect: its official Python client (toxiproxy-python)
    creates, populates, degrades, disables and removes proxies here unchanged."""
    toxiproxy = pytest.importorskip("toxiproxy.server")
    api = pytest.importorskip("toxiproxy.api")
    host, port = served.admin_url.removeprefix("http://").rsplit(":", 1)
    monkeypatch.setattr(api.APIConsumer, "host", host)
    monkeypatch.setattr(api.APIConsumer, "port", int(port))
    server = toxiproxy.Toxiproxy()
    assert server.running()
    pg = server.create(upstream="127.0.0.1:5432", name="pg", listen="127.0.0.1:0")
    assert (pg.name, pg.upstream, pg.enabled) == ("pg", "127.0.0.1:5432", True)
    pg.add_toxic(type="latency", attributes={"latency": 100, "jitter": 10}, name="slow")
    toxics = pg.toxics()
    assert (toxics["slow"].type, toxics["slow"].stream) == ("latency", "downstream")
    assert toxics["slow"].attributes == {"latency": 100, "jitter": 10}
    pg.disable()
    assert server.get_proxy("pg").enabled is False
    pg.enable()
    pg.destroy_toxic("slow")
    assert pg.toxics() == {}
    server.populate([{"name": "cache", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:6379"}])
    assert sorted(server.proxies()) == ["cache", "db", "off", "pg"]
    server.reset()
    server.destroy_all()
    assert server.proxies() == {}
