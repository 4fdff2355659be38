"""``phalanx demo orders``: the order flow on embedded defaults, from the demo group.

The flow itself is tested in tests/txn/test_orders.py; these tests prove the command's
options reach it, that ``phalanx demo`` still runs its acts without a subcommand, and that
a violated invariant (a planted bug) makes the command exit 1.
"""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from phalanx.cli.main import _register, cli
from phalanx.txn.orders import services as services_module

FAIL = "payment=0.2,inventory=0.1,shipping=0.1"


def outcome(output: str) -> tuple[int, int, int, int]:
    found = re.search(
        r"(\d+) orders, (\d+) completed, (\d+) compensated, (\d+) crashes injected", output
    )
    assert found, output
    orders, completed, compensated, crashes = (int(g) for g in found.groups())
    return orders, completed, compensated, crashes


@pytest.mark.parametrize("mode", ["orchestrated", "choreographed"])
def test_both_modes_complete_and_compensate_under_a_failure_mix(mode: str) -> None:
    _register()
    args = ["demo", "orders", "--mode", mode, "--orders", "40", "--fail", FAIL, "--seed", "3"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{mode}:")
    orders, completed, compensated, crashes = outcome(result.output)
    assert orders == 40
    assert completed + compensated == 40
    assert completed > 0
    assert compensated > 0
    assert crashes == 0
    assert "invariants: hold" in result.output


@pytest.mark.parametrize("crash", ["orchestrator", "payment"])
def test_a_crash_mid_saga_keeps_the_invariants(crash: str) -> None:
    _register()
    args = ["demo", "orders", "--orders", "30", "--fail", FAIL, "--crash", crash, "--seed", "5"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    orders, completed, compensated, crashes = outcome(result.output)
    assert completed + compensated == orders == 30
    assert crashes > 0
    assert "invariants: hold" in result.output


def test_the_same_seed_gives_the_same_outcome() -> None:
    _register()
    args = ["demo", "orders", "--orders", "30", "--fail", FAIL, "--seed", "9"]
    runs = [CliRunner().invoke(cli, args) for _ in range(2)]
    assert [r.exit_code for r in runs] == [0, 0]
    assert outcome(runs[0].output) == outcome(runs[1].output)


def test_a_violated_invariant_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    _register()
    monkeypatch.setattr(services_module.Payments, "refund", lambda self, key: None)
    args = ["demo", "orders", "--orders", "40", "--fail", "shipping=0.5", "--seed", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "paid but neither shipped nor refunded" in result.output


def test_bad_options_are_refused() -> None:
    _register()
    runner = CliRunner()
    assert runner.invoke(cli, ["demo", "orders", "--fail", "weather=1"]).exit_code == 2
    assert runner.invoke(cli, ["demo", "orders", "--mode", "telepathic"]).exit_code == 2
    assert runner.invoke(cli, ["demo", "orders", "--crash", "everything"]).exit_code == 2
    assert runner.invoke(cli, ["demo", "orders", "--orders", "0"]).exit_code == 2


def test_the_group_lists_orders_and_keeps_its_options() -> None:
    _register()
    result = CliRunner().invoke(cli, ["demo", "--help"])
    assert result.exit_code == 0
    assert "orders" in result.output
    for option in ("--seed", "--duration-s", "--cluster", "--more"):
        assert option in result.output
