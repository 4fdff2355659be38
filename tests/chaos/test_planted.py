"""Generated histories are linearizable; each planted anomaly is caught."""

import pytest

from phalanx.chaos.generate import ANOMALIES, Anomaly, generate_kv
from phalanx.chaos.models import KVModel
from phalanx.chaos.partition import check_linearizable
from phalanx.chaos.verdict import Verdict

SEEDS = range(8)


@pytest.mark.parametrize("seed", SEEDS)
def test_generated_history_is_linearizable(seed: int) -> None:
    ops, planted = generate_kv(seed, ops=600, keys=4, processes=6, info_rate=0.03)
    assert planted is None
    assert check_linearizable(ops, KVModel()).result.verdict is Verdict.VALID


def test_generator_is_deterministic() -> None:
    assert generate_kv(3, ops=200) == generate_kv(3, ops=200)
    assert generate_kv(3, ops=200) != generate_kv(4, ops=200)


@pytest.mark.parametrize("anomaly", ANOMALIES)
@pytest.mark.parametrize("seed", SEEDS)
def test_planted_anomaly_is_caught(anomaly: Anomaly, seed: int) -> None:
    ops, planted = generate_kv(seed, ops=400, keys=4, processes=6, info_rate=0.03, plant=anomaly)
    assert planted is not None
    assert planted.anomaly == anomaly
    report = check_linearizable(ops, KVModel())
    assert report.result.verdict is Verdict.INVALID, report.result.summary
    failure = report.smallest_failure()
    assert failure is not None
    assert failure.key == ops[planted.op_id].key
    # The operations invoked before the stuck point are a witness on their own.
    partition = [op for op in ops if op.key == failure.key]
    stuck = next(op for op in partition if op.id == failure.stuck_op)
    window = [op for op in partition if op.invoke_us <= (stuck.complete_us or 0)]
    assert len(window) <= failure.ops
    assert check_linearizable(window, KVModel()).result.verdict is Verdict.INVALID
