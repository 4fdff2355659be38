"""The order-flow reference system: both modes, every failure switch and crash, and the
invariant checker proven by planted bugs."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from phalanx.cli.txn import txn
from phalanx.txn.orders import Faults, run_orders
from phalanx.txn.orders import services as services_module

FAULTS = {"payment": 0.2, "inventory": 0.1, "shipping": 0.1}


@pytest.mark.parametrize("mode", ["orchestrated", "choreographed"])
@pytest.mark.parametrize("crash", ["none", "orchestrator", "payment"])
def test_invariants_hold_under_failures_and_crashes(tmp_path: Path, mode: str, crash: str) -> None:
    report = run_orders(
        mode=mode,
        orders=60,
        faults=Faults(**FAULTS, seed=3),
        crash=crash,
        directory=tmp_path,
        seed=3,
    )
    assert report.violations == []
    assert report.completed + report.cancelled == 60
    assert report.completed > 0
    assert report.cancelled > 0
    if crash != "none":
        assert report.crashes > 0


def test_both_modes_reach_the_same_outcomes(tmp_path: Path) -> None:
    reports = [
        run_orders(
            mode=mode,
            orders=40,
            faults=Faults(**FAULTS, seed=5),
            crash="none",
            directory=tmp_path / mode,
            seed=5,
        )
        for mode in ("orchestrated", "choreographed")
    ]
    assert reports[0].completed == reports[1].completed
    assert reports[0].cancelled == reports[1].cancelled


def test_a_missing_refund_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services_module.Payments, "refund", lambda self, key: None)
    report = run_orders(
        mode="orchestrated",
        orders=40,
        faults=Faults(shipping=0.5, seed=1),
        crash="none",
        directory=tmp_path,
        seed=1,
    )
    assert any("paid but neither shipped nor refunded" in v for v in report.violations)


def test_a_charge_without_idempotency_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = services_module.Payments.charge
    calls = {"n": 0}

    def careless(self: services_module.Payments, key: str, order_id: str, amount: int) -> None:
        calls["n"] += 1
        original(self, f"{key}#{calls['n']}", order_id, amount)  # a new key on every call

    monkeypatch.setattr(services_module.Payments, "charge", careless)
    report = run_orders(
        mode="orchestrated",
        orders=40,
        faults=Faults(seed=2),
        crash="payment",
        directory=tmp_path,
        seed=2,
    )
    assert any("charged 2 times" in v for v in report.violations)


def test_the_command_exits_non_zero_on_a_violation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    args = ["orders", "--orders", "30", "--fail", "payment=0.3,shipping=0.3", "--seed", "4"]
    ok = runner.invoke(txn, [*args, "--mode", "choreographed", "--dir", str(tmp_path / "a")])
    assert ok.exit_code == 0, ok.output
    assert "invariants: hold" in ok.output
    monkeypatch.setattr(services_module.Inventory, "release", lambda self, key: None)
    bad = runner.invoke(txn, [*args, "--dir", str(tmp_path / "b")])
    assert bad.exit_code == 1
    assert "violated" in bad.output
    wrong = runner.invoke(txn, ["orders", "--fail", "weather=1"])
    assert wrong.exit_code != 0


def test_the_demo_shows_a_compensated_saga() -> None:
    lines: list[str] = []
    from phalanx.txn.orders.demo import run_demo

    assert run_demo(lines.append)
    text = "\n".join(lines)
    assert "invariants: hold" in text
    assert "compensation-done reserve" in text
    assert text.index("compensation-done reserve") < text.index("compensation-done create")


@pytest.mark.parametrize("crash", ["payment", "orchestrator"])
def test_services_as_processes_over_http_with_a_process_killed(tmp_path: Path, crash: str) -> None:
    result = CliRunner().invoke(
        txn,
        [
            "orders",
            "--http",
            "--orders",
            "24",
            "--fail",
            "payment=0.2,inventory=0.1,shipping=0.1",
            "--crash",
            crash,
            "--seed",
            "3",
            "--dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 crashes injected" in result.output
    assert "invariants: hold" in result.output


def test_choreographed_services_as_processes_over_redis_streams(
    tmp_path: Path, redis_server: object
) -> None:
    result = CliRunner().invoke(
        txn,
        [
            "orders",
            "--http",
            "--mode",
            "choreographed",
            "--redis",
            str(redis_server.url),  # type: ignore[attr-defined]
            "--orders",
            "24",
            "--fail",
            "payment=0.2,inventory=0.1,shipping=0.1",
            "--crash",
            "payment",
            "--seed",
            "3",
            "--dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "1 crashes injected" in result.output
    assert "invariants: hold" in result.output
