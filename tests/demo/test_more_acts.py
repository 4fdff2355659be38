"""The demo's sharding, saga and chaos acts run and their proofs hold."""

from __future__ import annotations

import io

from rich.console import Console

from phalanx.demo.acts import run_chaos_act, run_sharding_act, run_txn_act


def test_sharding_and_saga_acts_prove_their_claims() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120)
    assert run_sharding_act(console, rows=2000)
    assert run_txn_act(console)
    text = out.getvalue()
    assert "0 lost, 0 duplicated, 0 misplaced, 0 stale" in text
    assert "invariants: hold" in text


def test_chaos_act_checks_a_real_run() -> None:
    out = io.StringIO()
    assert run_chaos_act(Console(file=out, width=200))
    assert "Linearizability check: valid" in out.getvalue()
