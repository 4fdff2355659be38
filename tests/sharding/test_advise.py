"""The when-to-shard advisor applies the guide's thresholds per engine."""

import pytest

from phalanx.sharding.advise import DatabaseMetrics, advise


def fired(metrics: DatabaseMetrics) -> set[str]:
    return {i.name for i in advise(metrics).indicators if i.fired}


def test_nothing_fires_on_a_small_quiet_database() -> None:
    advice = advise(DatabaseMetrics("postgres", 10**9, writes_per_s=100, cpu_percent=30))
    assert not advice.shard
    assert advice.try_first == ()
    assert "Not needed" in advice.summary


@pytest.mark.parametrize(
    ("engine", "size_bytes", "writes_per_s", "shard"),
    [
        ("postgres", 2 * 10**12, 0, True),
        ("postgres", 2 * 10**11, 9_000, False),
        ("postgres", 10**9, 12_000, True),
        ("mysql", 2 * 10**11, 0, True),
        ("mysql", 10**9, 6_000, True),
        ("sqlite", 10**9, 2_000, True),
    ],
)
def test_size_and_write_rate_thresholds(
    engine: str, size_bytes: int, writes_per_s: float, shard: bool
) -> None:
    assert advise(DatabaseMetrics(engine, size_bytes, writes_per_s=writes_per_s)).shard is shard


def test_cpu_and_latency_suggest_cheaper_steps_before_sharding() -> None:
    metrics = DatabaseMetrics(
        "postgres", 10**9, cpu_percent=95, latency_ms_p99=80, latency_ms_p99_baseline=20
    )
    advice = advise(metrics)
    assert fired(metrics) == {"CPU (sustained)", "p99 latency despite indexes"}
    assert not advice.shard
    assert advice.try_first[0].startswith("vertical scaling")
    assert any(step.startswith("read replicas") for step in advice.try_first)
    no_index = DatabaseMetrics(
        "postgres", 10**9, latency_ms_p99=80, latency_ms_p99_baseline=20, uses_indexes=False
    )
    assert fired(no_index) == set()  # slow without indexes: fix the queries, not the topology
    assert advise(no_index).try_first[0].startswith("query optimisation")


def test_unknown_engines_are_refused() -> None:
    with pytest.raises(ValueError):
        advise(DatabaseMetrics("oracle", 1))
