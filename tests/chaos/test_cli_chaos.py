"""``phalanx chaos check``: a verdict per file, exit status 0 / 1 / 2, HTML timelines."""

from pathlib import Path
from typing import Any

from click.testing import CliRunner

from chaos.helpers import INFO, Ops
from phalanx.chaos.history import write_jsonl
from phalanx.cli.main import _register, cli

PORCUPINE = Path(__file__).parents[2] / ".." / "shared" / "testdata" / "porcupine"


def run(*args: str) -> Any:
    _register()
    return CliRunner().invoke(cli, ["chaos", "check", *args])


def test_valid_files_exit_zero() -> None:
    result = run(
        "--model",
        "kv",
        str(PORCUPINE / "kv" / "c01-ok.txt"),
        str(PORCUPINE / "kv" / "c10-ok.txt"),
    )
    assert result.exit_code == 0, result.output
    assert "c01-ok.txt: linearizable (58 operations, " in result.output
    assert "c10-ok.txt: linearizable (337 operations, " in result.output


def test_an_invalid_file_exits_one_and_writes_its_timeline(tmp_path: Path) -> None:
    result = run(
        "--model",
        "register",
        "--html",
        str(tmp_path / "html"),
        str(PORCUPINE / "jepsen-etcd" / "etcd_002.log"),
        str(PORCUPINE / "jepsen-etcd" / "etcd_000.log"),
    )
    assert result.exit_code == 1, result.output
    assert "etcd_002.log: linearizable" in result.output
    assert "etcd_000.log: NOT linearizable" in result.output
    page = tmp_path / "html" / "etcd_000.log.html"
    assert page.exists()
    assert "process 0" in page.read_text()
    assert not (tmp_path / "html" / "etcd_002.log.html").exists()
    assert result.output.endswith("2 files: 1 valid, 1 invalid\n")


def test_unknown_exits_two(tmp_path: Path) -> None:
    h = Ops()
    for p in range(14):
        h.add(p, "write", p, 1000, input=p, outcome=INFO)
    h.add(99, "read", 1001, 1002, output=-1)
    path = tmp_path / "hard.jsonl"
    write_jsonl(path, h.ops)
    result = run("--model", "register", "--timeout-s", "0", str(path))
    assert result.exit_code == 2, result.output
    assert "UNKNOWN" in result.output
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("{not json}\n")
    result = run("--model", "register", str(garbage))
    assert result.exit_code == 2
    assert "cannot read" in result.output


def test_other_checkers_from_the_command_line(tmp_path: Path) -> None:
    h = Ops()
    h.add(0, "add", 0, 1, input=1)
    h.add(1, "read", 2, 3, output=[])
    path = tmp_path / "set.jsonl"
    write_jsonl(path, h.ops)
    result = run("--model", "set", "--html", str(tmp_path / "html"), str(path))
    assert result.exit_code == 1
    assert "set: invalid: lost 1" in result.output
    page = (tmp_path / "html" / "set.jsonl.html").read_text()
    assert "Operations that witness the violation" in page
    assert "add 1 -&gt; ?" not in page
    assert "add 1" in page
    bank = Ops()
    bank.add(1, "read", 2, 3, output={"a": 5, "b": 5})
    bank_path = tmp_path / "bank.jsonl"
    write_jsonl(bank_path, bank.ops)
    assert run("--model", "bank", str(bank_path)).exit_code == 0
    assert run("--model", "bank", "--bank-total", "11", str(bank_path)).exit_code == 1


def test_phalanx_help_lists_chaos() -> None:
    _register()
    result = CliRunner().invoke(cli, ["--help"])
    assert "chaos" in result.output


def test_simulator_histories_check_as_kv(tmp_path: Path) -> None:
    path = tmp_path / "sim.jsonl"
    _register()
    simulated = CliRunner().invoke(cli, ["sim", "--seed", "3", "--history", str(path)])
    assert simulated.exit_code == 0, simulated.output
    result = run("--model", "kv", str(path))
    assert result.exit_code == 0, result.output
    assert ": linearizable" in result.output
