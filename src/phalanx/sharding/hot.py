"""Hot-shard detection: per-shard load counters and the split they suggest.

:class:`LoadTracker` counts operations per shard in a sliding window of ``window_s`` seconds
(``buckets`` slices, time from an injected clock), so rates reflect the recent past rather
than the whole uptime. :func:`propose_splits` compares each shard's rate with the mean and,
for shards above ``ratio_min`` times it, proposes what to do:

* range strategies: ``split`` at the median of the shard's sampled keys (or the middle of
  its range when no sample is given): the CockroachDB/TiKV load-based split;
* hash-family strategies: ``add-shard`` (a new shard takes about 1/(N+1) of every shard's
  keys), unless the samples show one key carrying at least ``hot_key_share_min`` of the
  shard's load, in which case no split helps and the proposal is ``hot-key``.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from phalanx.clock import SYSTEM_CLOCK, Clock
from phalanx.errors import BadRequest
from phalanx.sharding.keys import Key, key_bytes
from phalanx.sharding.strategies import RangeStrategy, Strategy

__all__ = ["BUCKETS_MAX", "LoadTracker", "SplitProposal", "propose_splits"]

#: Most time slices of one tracker's window.
BUCKETS_MAX: Final = 1_000
#: Most distinct shards one tracker counts.
SHARDS_TRACKED_MAX: Final = 65_536


class LoadTracker:
    """Operations per shard over the last ``window_s`` seconds."""

    def __init__(
        self, *, window_s: float = 60.0, buckets: int = 12, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s: must be > 0, got {window_s}")
        if not 1 <= buckets <= BUCKETS_MAX:
            raise ValueError(f"buckets: 1..{BUCKETS_MAX}, got {buckets}")
        self.window_s = window_s
        self._slice_s = window_s / buckets
        self._buckets = buckets
        self._clock = clock
        self._slices: deque[tuple[int, Counter[str]]] = deque(maxlen=buckets)

    def record(self, shard: str, count: int = 1) -> None:
        index = int(self._clock.now_s() // self._slice_s)
        if not self._slices or self._slices[-1][0] != index:
            self._slices.append((index, Counter()))
        current = self._slices[-1][1]
        if shard not in current and len(current) >= SHARDS_TRACKED_MAX:
            raise BadRequest(f"load tracker: more than {SHARDS_TRACKED_MAX} shards")
        current[shard] += count

    def rates(self) -> dict[str, float]:
        """Operations per second per shard over the window."""
        oldest = int(self._clock.now_s() // self._slice_s) - self._buckets + 1
        totals: Counter[str] = Counter()
        for index, counts in self._slices:
            if index >= oldest:
                totals.update(counts)
        return {shard: count / self.window_s for shard, count in totals.items()}


@dataclass(frozen=True)
class SplitProposal:
    shard: str
    action: str  # "split", "add-shard" or "hot-key"
    rate: float
    mean_rate: float
    split_at: bytes | None = None
    hot_key: bytes | None = None


def propose_splits(
    strategy: Strategy,
    rates: Mapping[str, float],
    *,
    ratio_min: float = 2.0,
    samples: Mapping[str, Sequence[Key]] | None = None,
    hot_key_share_min: float = 0.5,
) -> list[SplitProposal]:
    """Proposals for every shard whose rate is at least ``ratio_min`` times the mean."""
    shards = strategy.shards
    mean = sum(rates.get(s, 0.0) for s in shards) / len(shards)
    proposals = []
    for shard in shards:
        rate = rates.get(shard, 0.0)
        if mean <= 0 or rate < ratio_min * mean:
            continue
        sample = sorted(key_bytes(k) for k in (samples or {}).get(shard, ()))
        if sample:
            key, hits = Counter(sample).most_common(1)[0]
            if hits / len(sample) >= hot_key_share_min:
                proposals.append(SplitProposal(shard, "hot-key", rate, mean, hot_key=key))
                continue
        if isinstance(strategy, RangeStrategy):
            low, high = strategy.range_of(shard)
            median = sample[len(sample) // 2] if sample else None
            inside = median is not None and median > low and (high is None or median < high)
            split_at = median if inside else strategy.split_point(shard)
            proposals.append(SplitProposal(shard, "split", rate, mean, split_at=split_at))
        else:
            proposals.append(SplitProposal(shard, "add-shard", rate, mean))
    return proposals
