from click.testing import CliRunner

from phalanx.cli.main import _register, cli


def test_demo_runs_end_to_end_and_summarises() -> None:
    _register()
    # The later acts have tests of their own (test_cluster_act, test_more_acts).
    result = CliRunner().invoke(cli, ["demo", "--duration-s", "2", "--seed", "3", "--no-more"])
    assert result.exit_code == 0, result.output
    for phase in ("healthy", "latency spike", "outage", "recovered"):
        assert phase in result.output
    assert "circuit breaker" in result.output
    assert "During the outage the dependency received" in result.output
    words = " ".join(result.output.split())  # the console wraps long lines
    assert "orders created: 1 (the retry got the stored reply)" in words
    assert "14 admitted" in words
    assert 'phalanx_idempotency_hits{name="orders"} 1.0' in result.output
    assert "safety violations" in words
    assert "seed 0 twice: same trace" in words


def test_demo_rejects_a_silly_duration() -> None:
    _register()
    result = CliRunner().invoke(cli, ["demo", "--duration-s", "0"])
    assert result.exit_code != 0
    assert "duration-s" in result.output
