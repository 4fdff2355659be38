"""``phalanx shard``: a keyspace from the command line, grown and shrunk online."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from phalanx.cli.main import _register, cli

DDL = "CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, owner TEXT, balance INTEGER)"


def invoke(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(cli, ["shard", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def setup_keyspace(runner: CliRunner, directory: Path, *init: str) -> None:
    _register()
    invoke(runner, "init", "--dir", str(directory), *init)
    invoke(
        runner,
        "table",
        "accounts",
        "--dir",
        str(directory),
        "--key",
        "owner",
        "--pk",
        "id",
        "--columns",
        "id,owner,balance",
        "--ddl",
        DDL,
    )
    for i in range(40):
        invoke(
            runner,
            "query",
            "--dir",
            str(directory),
            "--key",
            f"user:{i:02d}",
            "INSERT INTO accounts VALUES (?, ?, ?)",
            "--params",
            json.dumps([i, f"user:{i:02d}", i]),
        )


def total(runner: CliRunner, directory: Path) -> list[int]:
    out = invoke(
        runner, "query", "--dir", str(directory), "SELECT COUNT(*), SUM(balance) FROM accounts"
    )
    counts = [line.split("\t") for line in out.strip().splitlines()]
    return [sum(int(c[0]) for c in counts), sum(int(c[1]) for c in counts if c[1] != "NULL")]


def test_init_add_remove_and_status(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = tmp_path / "ks"
    setup_keyspace(runner, directory, "--strategy", "jump", "--shards", "s0,s1")
    assert total(runner, directory) == [40, sum(range(40))]
    assert "map version 2" in invoke(runner, "add", "s2", "--dir", str(directory))
    assert total(runner, directory) == [40, sum(range(40))]
    status = invoke(runner, "status", "--dir", str(directory))
    assert "map version 2" in status
    assert "s2" in status
    assert "map version 3" in invoke(runner, "remove", "s0", "--dir", str(directory))
    assert total(runner, directory) == [40, sum(range(40))]
    shard_map = json.loads(invoke(runner, "map", "--dir", str(directory)))
    assert shard_map["version"] == 3
    assert sorted(shard_map["shards"]) == ["s1", "s2"]
    routed = invoke(runner, "route", "--dir", str(directory), "user:01").split()
    assert routed[1] in {"s1", "s2"}


def test_range_split_migrate_and_advise(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = tmp_path / "ks"
    setup_keyspace(
        runner, directory, "--strategy", "range", "--shards", "a,b", "--option", 'bounds=["user:3"]'
    )
    out = invoke(runner, "split", "a", "--new", "c", "--at", "user:1", "--dir", str(directory))
    assert "map version 2" in out
    on_c = invoke(
        runner,
        "query",
        "--dir",
        str(directory),
        "--key",
        "user:15",
        "SELECT MIN(owner), MAX(owner) FROM accounts",
    )
    assert on_c.split() == ["user:10", "user:29"]
    out = invoke(runner, "move", "b", "--to", "c", "--at", "user:35", "--dir", str(directory))
    assert "map version 3" in out
    on_c = invoke(
        runner,
        "query",
        "--dir",
        str(directory),
        "--key",
        "user:15",
        "SELECT MAX(owner) FROM accounts",
    )
    assert on_c.split() == ["user:34"]
    assert total(runner, directory) == [40, sum(range(40))]
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "1_note.sql").write_text("ALTER TABLE accounts ADD COLUMN note TEXT;\n")
    assert "version 0 -> 1" in invoke(runner, "migrate", str(migrations), "--dir", str(directory))
    assert "version 1 -> 1" in invoke(runner, "migrate", str(migrations), "--dir", str(directory))
    advice = invoke(
        runner, "advise", "--database", f"sqlite:{directory / 'a.db'}", "--writes-per-s", "5000"
    )
    assert "write rate" in advice
    assert "Sharding is justified" in advice


def test_a_second_init_and_an_unknown_shard_are_refused(tmp_path: Path) -> None:
    _register()
    runner = CliRunner()
    directory = tmp_path / "ks"
    invoke(runner, "init", "--dir", str(directory), "--shards", "s0")
    again = runner.invoke(cli, ["shard", "init", "--dir", str(directory), "--shards", "s0"])
    assert again.exit_code != 0
    assert "already exists" in again.output
    gone = runner.invoke(cli, ["shard", "remove", "nope", "--dir", str(directory)])
    assert gone.exit_code != 0
    assert "not a shard" in gone.output


def test_the_demo_grows_a_keyspace_under_writes_and_checks_every_row(tmp_path: Path) -> None:
    _register()
    runner = CliRunner()
    out = invoke(runner, "demo", "--rows", "1000", "--dir", str(tmp_path / "demo"))
    assert "0 lost, 0 duplicated, 0 misplaced, 0 stale" in out
    assert "s2" in out
    shard_map = json.loads(invoke(runner, "map", "--dir", str(tmp_path / "demo")))
    assert shard_map["version"] == 2


def test_query_merges_order_limit_offset_and_aggregates_across_shards(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = tmp_path / "ks"
    setup_keyspace(runner, directory, "--strategy", "jump", "--shards", "s0,s1,s2")
    d = str(directory)
    # Global order across three shards, paged: balances 39, 38, ... so rows 5..9 are 34..30.
    page = invoke(
        runner,
        "query",
        "--dir",
        d,
        "--table",
        "accounts",
        "--columns",
        "id,owner,balance",
        "--order-by",
        "balance desc, id",
        "--limit",
        "5",
        "--offset",
        "5",
    )
    assert [int(line.split("\t")[2]) for line in page.strip().splitlines()] == [34, 33, 32, 31, 30]
    lows = invoke(
        runner,
        "query",
        "--dir",
        d,
        "--table",
        "accounts",
        "--columns",
        "id",
        "--where",
        "balance < ?",
        "--params",
        "[3]",
        "--order-by",
        "id",
    )
    assert lows.split() == ["0", "1", "2"]
    totals = invoke(
        runner,
        "query",
        "--dir",
        d,
        "--table",
        "accounts",
        "--aggregate",
        "count:*",
        "--aggregate",
        "sum:balance",
        "--aggregate",
        "min:balance",
        "--aggregate",
        "max:balance",
        "--aggregate",
        "avg:balance",
    )
    count, summed, low, high, mean = totals.split()
    assert (int(count), int(summed), int(low), int(high)) == (40, sum(range(40)), 0, 39)
    assert float(mean) == sum(range(40)) / 40
    # Grouped: ten owners' prefixes are not a column, so group by owner over a filtered range.
    grouped = invoke(
        runner,
        "query",
        "--dir",
        d,
        "--table",
        "accounts",
        "--aggregate",
        "count:*",
        "--aggregate",
        "sum:balance",
        "--group-by",
        "owner",
        "--where",
        "id >= ?",
        "--params",
        "[37]",
    )
    assert [line.split("\t") for line in grouped.strip().splitlines()] == [
        ["user:37", "1", "37"],
        ["user:38", "1", "38"],
        ["user:39", "1", "39"],
    ]


def test_query_refuses_mixed_or_incomplete_options(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = tmp_path / "ks"
    setup_keyspace(runner, directory, "--shards", "s0,s1")
    d = str(directory)
    for args in (
        ["SELECT 1", "--limit", "3"],
        ["SELECT 1", "--table", "accounts", "--columns", "id"],
        ["--table", "accounts"],
        ["--table", "accounts", "--aggregate", "count:*", "--limit", "1"],
        ["--table", "accounts", "--aggregate", "count"],
        ["--table", "accounts", "--columns", "id", "--order-by", "id sideways"],
        ["--table", "accounts", "--columns", "id", "--order-by", "balance"],
    ):
        result = runner.invoke(cli, ["shard", "query", "--dir", d, *args])
        assert result.exit_code != 0, args


def test_adding_a_shard_to_a_bounded_map_is_refused_with_the_reason(tmp_path: Path) -> None:
    runner = CliRunner()
    directory = tmp_path / "ks"
    setup_keyspace(runner, directory, "--strategy", "bounded", "--shards", "s0,s1")
    result = runner.invoke(cli, ["shard", "add", "s2", "--dir", str(directory)])
    assert result.exit_code != 0
    assert "NotRebalanceable" in result.output
    assert "remembers each key's placement" in result.output
    assert not (directory / "job.json").exists()
    assert json.loads(invoke(runner, "map", "--dir", str(directory)))["version"] == 1
