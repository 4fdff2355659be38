"""The checker agrees with every verdict of the shared validation histories.

102 Jepsen etcd register histories with their expected verdicts (VERDICTS.tsv), and six
key-value histories whose names say ``-ok`` or ``-bad``.
"""

from pathlib import Path

import pytest

from phalanx.chaos.loaders import load_history
from phalanx.chaos.models import KVModel, RegisterModel
from phalanx.chaos.partition import check_linearizable
from phalanx.chaos.verdict import Verdict

PORCUPINE = Path(__file__).parents[2] / ".." / "shared" / "testdata" / "porcupine"
ETCD = PORCUPINE / "jepsen-etcd"
KV = PORCUPINE / "kv"


def _expected_etcd() -> list[tuple[str, Verdict]]:
    rows = []
    for line in (ETCD / "VERDICTS.tsv").read_text().splitlines():
        name, verdict = line.split("\t")
        rows.append((name, Verdict.VALID if verdict.strip() == "linearizable" else Verdict.INVALID))
    return rows


ETCD_VERDICTS = _expected_etcd()
KV_FILES = sorted(p.name for p in KV.glob("*.txt"))


def test_the_validation_data_is_all_there() -> None:
    assert len(ETCD_VERDICTS) == 102
    assert len(KV_FILES) == 6


@pytest.mark.parametrize(("name", "expected"), ETCD_VERDICTS)
def test_etcd_register_history(name: str, expected: Verdict) -> None:
    report = check_linearizable(load_history(ETCD / name), RegisterModel(), timeout_s=120)
    assert report.result.verdict is expected, report.result.summary


@pytest.mark.parametrize("name", KV_FILES)
def test_kv_history_partitioned(name: str) -> None:
    expected = Verdict.VALID if "-ok" in name else Verdict.INVALID
    report = check_linearizable(load_history(KV / name), KVModel(), timeout_s=120)
    assert report.result.verdict is expected, report.result.summary
    assert report.result.details["partitions"] > 1


# c10-bad checked whole is an exhaustive search of about 300k configurations (seconds): the
# benchmark times it; per key it takes milliseconds.
@pytest.mark.parametrize("name", ["c01-ok.txt", "c01-bad.txt", "c10-ok.txt"])
def test_kv_history_checked_whole_agrees(name: str) -> None:
    ops = load_history(KV / name)
    whole = check_linearizable(ops, KVModel(), partition=False, timeout_s=120)
    per_key = check_linearizable(ops, KVModel(), timeout_s=120)
    assert whole.result.details["partitions"] == 1
    assert whole.result.verdict is per_key.result.verdict is not Verdict.UNKNOWN


def test_empty_log_is_trivially_linearizable() -> None:
    # etcd_095.log is the run that never started: no operations, nothing to violate.
    ops = load_history(ETCD / "etcd_095.log", "knossos")
    assert ops == []
    assert check_linearizable(ops, RegisterModel()).result.verdict is Verdict.VALID
