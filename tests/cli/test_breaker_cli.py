"""``phalanx breaker``: an operator opens and closes breakers that share a store."""

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from phalanx.cli.breaker import WRITE_ATTEMPTS_MAX, publish
from phalanx.cli.main import _register, cli
from phalanx.errors import CircuitOpen
from phalanx.resilience.breaker import CircuitBreaker
from phalanx.resilience.breaker_store import BreakerRecord, MemoryBreakerStore, SQLiteBreakerStore


def run(*args: str) -> Any:
    _register()
    return CliRunner().invoke(cli, ["breaker", *args])


@pytest.fixture
def store_spec(tmp_path: Path) -> str:
    return f"sqlite:{tmp_path / 'breakers.db'}"


def test_open_and_close_reach_a_breaker_sharing_the_store(store_spec: str) -> None:
    store = SQLiteBreakerStore(store_spec.removeprefix("sqlite:"))
    payments = CircuitBreaker("payments", store=store)
    assert payments.call(lambda: "ok") == "ok"

    opened = run("open", "payments", "--store", store_spec)
    assert opened.exit_code == 0, opened.output
    assert "payments: open" in opened.output
    assert "forced open until closed" in opened.output
    payments.refresh()  # what the breaker does by itself every refresh_interval_s
    assert payments.state.value == "open"
    with pytest.raises(CircuitOpen):
        payments.call(lambda: "ok")

    closed = run("close", "payments", "--store", store_spec)
    assert closed.exit_code == 0, closed.output
    payments.refresh()
    assert payments.state.value == "closed"
    assert payments.call(lambda: "ok") == "ok"
    store.close()


def test_open_for_a_while_then_probe(store_spec: str) -> None:
    result = run("open", "payments", "--store", store_spec, "--for", "10m")
    assert result.exit_code == 0, result.output
    assert "probing from" in result.output
    shown = run("show", "payments", "--store", store_spec)
    assert "payments: open (version 1" in shown.output


def test_show_without_a_record(store_spec: str) -> None:
    result = run("show", "inventory", "--store", store_spec)
    assert result.exit_code == 0
    assert "no state published" in result.output


def test_the_redis_store_is_reached_by_url(redis_server: Any) -> None:
    url = str(redis_server.url)
    assert run("open", "search", "--store", url).exit_code == 0
    assert "search: open" in run("show", "search", "--store", url).output
    assert "search: closed" in run("close", "search", "--store", url).output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "x", "--store", "mysql://db"], "expected sqlite:PATH"),
        (["show", "x", "--store", "sqlite:"], "needs a path"),
        (["open", "x", "--store", "sqlite:/tmp/b.db", "--for", "30"], "malformed duration"),
        (["open", "x", "--store", "sqlite:/tmp/b.db", "--for", "25h"], "at most"),
    ],
)
def test_bad_input_is_a_usage_error(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output


def test_publish_gives_up_after_losing_every_race() -> None:
    class AlwaysBeaten(MemoryBreakerStore):
        def compare_and_set(
            self, name: str, expected_version: int, record: BreakerRecord
        ) -> tuple[bool, BreakerRecord]:
            self.races = getattr(self, "races", 0) + 1
            return False, BreakerRecord("closed", expected_version + 1)

    store = AlwaysBeaten()
    with pytest.raises(Exception, match="lost 10 races"):
        publish(store, "payments", "open", None)
    assert store.races == WRITE_ATTEMPTS_MAX
