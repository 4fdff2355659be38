"""``phalanx lock`` and ``phalanx elect`` against a real in-process cluster, and where the
commands find their endpoints."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from node_cluster import cluster, endpoint, leader_of
from phalanx.cli.endpoints import ENDPOINTS_ENV, resolve_endpoints
from phalanx.cli.lock import EXIT_LOCK_LOST
from phalanx.cli.main import _register, cli
from phalanx.client import AsyncClient
from phalanx.client.election import Election
from phalanx.client.lock import LOCK_PREFIX, Lock, queue_prefix

WAIT_S = 10.0


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


def _invoke(args: list[str]) -> Result:
    _register()
    return CliRunner().invoke(cli, args)


async def _line(stream: asyncio.StreamReader | None) -> str:
    assert stream is not None
    async with asyncio.timeout(WAIT_S):
        return (await stream.readline()).decode().strip()


async def test_lock_runs_the_command_with_its_fencing_token(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        endpoints = ",".join(endpoint(n) for n in nodes.values())
        out = tmp_path / "token"
        script = (
            "import os, sys; "
            f"open({str(out)!r}, 'w').write(os.environ['PHALANX_FENCING_TOKEN']); sys.exit(3)"
        )
        args = ["lock", "jobs", "--ttl-s", "2", "--endpoints", endpoints, "--"]
        result = await asyncio.to_thread(_invoke, [*args, sys.executable, "-c", script])
        assert result.exit_code == 3, result.output
        assert int(out.read_text()) > 0
        async with AsyncClient(endpoints.split(",")) as client:
            queue = queue_prefix(LOCK_PREFIX, "jobs")
            assert (await client.range(queue, prefix=True)).count == 0  # released
            # While someone else holds the lock, a bounded wait gives up with status 1.
            async with Lock(client, "jobs", ttl_s=2.0):
                busy = await asyncio.to_thread(
                    _invoke,
                    [
                        "lock",
                        "jobs",
                        "--timeout-s",
                        "0.3",
                        "--endpoints",
                        endpoints,
                        "--",
                        sys.executable,
                        "-c",
                        "pass",
                    ],
                )
            assert busy.exit_code == 1
            assert "NotAcquired" in busy.output
            missing = await asyncio.to_thread(_invoke, [*args, str(tmp_path / "no-such-command")])
            assert missing.exit_code == 1
            assert "cannot run" in missing.output
            assert (await client.range(queue, prefix=True)).count == 0


async def test_lock_lost_while_the_command_runs_terminates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        endpoints = ",".join(endpoint(n) for n in nodes.values())

        async def never(self: AsyncClient, lease_id: int) -> float:
            await asyncio.Event().wait()  # the lock's keep-alives never get through
            return 0.0

        monkeypatch.setattr(AsyncClient, "keep_alive", never)
        forever = [sys.executable, "-c", "import time; time.sleep(600)"]
        args = ["lock", "doomed", "--ttl-s", "0.5", "--endpoints", endpoints, "--", *forever]
        result = await asyncio.wait_for(asyncio.to_thread(_invoke, args), WAIT_S)
        assert result.exit_code == EXIT_LOCK_LOST
        assert "terminating the command" in result.output


async def test_elect_leads_until_sigterm_and_observe_follows(tmp_path: Path) -> None:
    async with cluster(tmp_path) as nodes:
        await leader_of(nodes)
        endpoints = ",".join(endpoint(n) for n in nodes.values())
        env = {**os.environ, ENDPOINTS_ENV: endpoints}
        command = [sys.executable, "-m", "phalanx.cli.main", "elect", "svc"]
        pipe = asyncio.subprocess.PIPE
        observer = await asyncio.create_subprocess_exec(*command, "--observe", stdout=pipe, env=env)
        candidate = await asyncio.create_subprocess_exec(
            *command, "alpha", "--ttl-s", "2", stdout=pipe, env=env
        )
        try:
            elected = await _line(candidate.stdout)
            assert elected.startswith("elected: alpha (token ")
            token = elected.removeprefix("elected: alpha (token ").rstrip(")")
            assert await _line(observer.stdout) == f"alpha (token {token})"
            shown = await asyncio.to_thread(
                _invoke, ["elect", "svc", "--leader", "--endpoints", endpoints]
            )
            assert (shown.exit_code, shown.output) == (0, "alpha\n")

            candidate.send_signal(signal.SIGTERM)
            async with asyncio.timeout(WAIT_S):
                assert await candidate.wait() == 0
            assert await _line(candidate.stdout) == "resigned"
            none = await asyncio.to_thread(
                _invoke, ["elect", "svc", "--leader", "--endpoints", endpoints]
            )
            assert none.exit_code == 1

            async with AsyncClient(endpoints.split(",")) as client:
                election = Election(client, "svc", ttl_s=2.0)
                won = await election.campaign(b"beta", timeout_s=WAIT_S)
                assert await _line(observer.stdout) == f"beta (token {won.token})"
                assert won.token > int(token)
                await election.resign()
            observer.send_signal(signal.SIGINT)
            async with asyncio.timeout(WAIT_S):
                assert await observer.wait() == 0
        finally:
            for process in (observer, candidate):
                if process.returncode is None:
                    process.kill()
                    await process.wait()


def test_elect_wants_exactly_one_mode() -> None:
    result = _invoke(["elect", "svc", "--endpoints", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "exactly one" in result.output
