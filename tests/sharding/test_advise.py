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


def test_postgres_size_and_write_rate_are_read_from_the_server(pg_dsn: str) -> None:
    import psycopg

    from phalanx.sharding.advise import read_postgres

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("SELECT pg_stat_force_next_flush()")  # its catalog rows count before

    def write_meanwhile(sample_s: float) -> None:
        # The "sleep" between the two readings writes 300 rows, then has its statistics
        # flushed to pg_stat_database before the statement returns (PostgreSQL 15+).
        with psycopg.connect(pg_dsn, autocommit=True) as writer:
            writer.execute("INSERT INTO t SELECT i, 'x' FROM generate_series(1, 200) AS i")
            writer.execute("UPDATE t SET v = 'y' WHERE id <= 50")
            writer.execute("DELETE FROM t WHERE id <= 50")
            writer.execute("SELECT pg_stat_force_next_flush()")

    reading = read_postgres(pg_dsn, 2.0, sleep=write_meanwhile)
    assert reading.size_bytes > 1_000_000  # an empty PostgreSQL database is several MB
    # 300 rows in 2 s; catalog writes (an autovacuum's ANALYZE) may add a few.
    assert reading.writes_per_s is not None
    assert 300 / 2.0 <= reading.writes_per_s < 600 / 2.0
    if not reading.has_pg_stat_statements:
        assert reading.statement_ms_mean is None


def test_the_advise_command_reads_postgres_and_keeps_flags_as_overrides(pg_dsn: str) -> None:
    from click.testing import CliRunner

    from phalanx.cli.main import _register, cli

    _register()
    runner = CliRunner()
    base = ["shard", "advise", "--database", f"postgres:{pg_dsn}", "--sample-s", "0"]
    quiet = runner.invoke(cli, base, catch_exceptions=False)
    assert quiet.exit_code == 0, quiet.output
    assert "does not expose the host's CPU" in quiet.output
    assert "pg_stat_statements" in quiet.output
    assert "Sharding is justified" not in quiet.output
    busy = runner.invoke(
        cli, [*base, "--writes-per-s", "20000", "--cpu-percent", "95"], catch_exceptions=False
    )
    assert busy.exit_code == 0, busy.output
    assert "Sharding is justified" in busy.output
