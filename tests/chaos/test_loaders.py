"""Jepsen/Knossos logs and EDN operation maps become operations."""

from pathlib import Path

import pytest

from phalanx.chaos.edn import EDN_DEPTH_MAX, EdnError, Keyword, read_edn
from phalanx.chaos.history import HistoryError
from phalanx.chaos.loaders import detect_format, load_history, parse_edn, parse_knossos
from phalanx.errors import Outcome

KNOSSOS = """\
INFO  jepsen.util - 3\t:invoke\t:write\t4
INFO  jepsen.util - 2\t:invoke\t:cas\t[3 0]
INFO  jepsen.util - 3\t:ok\t:write\t4
INFO  jepsen.util - 0\t:invoke\t:read\tnil
INFO  jepsen.util - 2\t:fail\t:cas\t[3 0]
INFO  jepsen.util - 0\t:fail\t:read\t:timed-out
INFO  jepsen.util - 1  :invoke :write  2
INFO  jepsen.util - 4\t:invoke\t:read\tnil
INFO  jepsen.util - 4\t:ok\t:read\t4
INFO  jepsen.util - 1  :info   :write  :timed-out
INFO  jepsen.util - 5\t:invoke\t:write\t7
"""


def test_knossos_log_pairs_invocations_with_completions() -> None:
    ops = parse_knossos(KNOSSOS)
    assert [(op.process, op.f) for op in ops] == [
        (3, "write"),
        (2, "cas"),
        (0, "read"),
        (1, "write"),
        (4, "read"),
        (5, "write"),
    ]
    write, cas, read, info_write, seen, pending = ops
    assert (write.outcome, write.input, write.invoke_us, write.complete_us) == (Outcome.OK, 4, 1, 3)
    assert (cas.outcome, cas.input) == (Outcome.FAILED, [3, 0])
    # A timeout is never a definite failure.
    assert (read.outcome, read.error) == (Outcome.INDETERMINATE, "timed-out")
    assert info_write.outcome is Outcome.INDETERMINATE
    assert (seen.outcome, seen.output) == (Outcome.OK, 4)
    assert (pending.outcome, pending.complete_us) == (Outcome.INDETERMINATE, None)
    assert [op.id for op in ops] == list(range(6))


def test_knossos_log_errors_name_the_line() -> None:
    with pytest.raises(HistoryError, match="line 1: not a Knossos"):
        parse_knossos("hello\n")
    with pytest.raises(HistoryError, match="line 2: process 3 invokes twice"):
        parse_knossos("x - 3\t:invoke\t:read\tnil\nx - 3\t:invoke\t:read\tnil\n")
    with pytest.raises(HistoryError, match="completes nothing"):
        parse_knossos("x - 3\t:ok\t:read\t1\n")


def test_edn_maps() -> None:
    text = (
        '{:process 9, :type :invoke, :f :append, :key "0", :value "x 9 0 y"}\n'
        '{:process 1, :type :invoke, :f :get, :key "0", :value nil}\n'
        '{:process 9, :type :ok, :f :append, :key "0", :value "x 9 0 y"}\n'
        '{:process 1, :type :ok, :f :get, :key "0", :value "x 9 0 y"}\n'
    )
    append, get = parse_edn(text)
    assert (append.key, append.input, append.outcome) == ("0", "x 9 0 y", Outcome.OK)
    assert (get.f, get.output, get.invoke_us, get.complete_us) == ("get", "x 9 0 y", 2, 4)
    assert detect_format(text) == "edn"
    assert detect_format(KNOSSOS) == "knossos"
    assert detect_format('{"process": 1}') == "jsonl"


def test_edn_reader_subset() -> None:
    assert read_edn('[1 -2 3.5 "a\\"b" :kw sym nil true false (1) {:a [1]}]') == [
        1,
        -2,
        3.5,
        'a"b',
        Keyword("kw"),
        Keyword("sym"),
        None,
        True,
        False,
        [1],
        {Keyword("a"): [1]},
    ]
    assert repr(Keyword("ok")) == ":ok"
    for bad in ["[1 2", '"open', "{:a}", "1 2", "", '"\\q"']:
        with pytest.raises(EdnError):
            read_edn(bad)
    with pytest.raises(EdnError, match="EDN_DEPTH_MAX"):
        read_edn("[" * (EDN_DEPTH_MAX + 1) + "]" * (EDN_DEPTH_MAX + 1))


def test_load_history_by_path(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    path.write_text(KNOSSOS)
    assert len(load_history(path)) == 6
    assert len(load_history(path, "knossos")) == 6
    with pytest.raises(HistoryError):
        load_history(path, "jsonl")


def test_fault_injector_events_are_skipped() -> None:
    log = (
        "INFO  jepsen.util - 1\t:invoke\t:read\tnil\n"
        "INFO  jepsen.util - :nemesis\t:info\t:start\tnil\n"
        "INFO  jepsen.util - 1\t:ok\t:read\t3\n"
    )
    (op,) = parse_knossos(log)
    assert (op.invoke_us, op.complete_us, op.output) == (1, 3, 3)
    edn = (
        "{:process 0, :type :invoke, :f :read, :value nil, :time 5}\n"
        "{:process :nemesis, :type :info, :f :start, :value nil}\n"
        "{:process 0, :type :ok, :f :read, :value 2, :time 9}\n"
    )
    (op,) = parse_edn(edn)
    assert (op.f, op.output) == ("read", 2)
