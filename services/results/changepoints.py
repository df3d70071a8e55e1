"""Change points in a device's history for one spec: where did its samples/s shift, and how sure is that?

The pairwise regression check (`regressions.py`) asks whether one new result is outside the noise of the
results before it. This module looks at a whole series at once, the way E-Divisive does in Apache Otava and
MongoDB's performance CI: split the series where the two sides differ most, keep the split only if a
permutation test says it is unlikely under "no change", and repeat inside the pieces.

- The series is rank-transformed first (average ranks for ties), so one disturbed run moves a rank by at
  most the series' length and cannot pull a split towards itself the way it would pull a mean.
- The split of a segment is found by `ruptures` (binary segmentation, least squares on the ranks, at least
  `MIN_SEGMENT` results a side): the split with the largest gain `S_k**2 * n / (k * (n - k))`, where `S_k`
  is the sum of the first `k` centred ranks.
- Its significance: the same largest gain is computed for `PERMUTATIONS` random orders of the segment; the
  p-value is `(1 + #{permuted gain >= observed gain}) / (PERMUTATIONS + 1)`. Under no change the series is
  exchangeable and the test is exact: a series without a change is flagged with probability `ALPHA`. Runs
  that drift (a machine warming over days) are not exchangeable: a drift is reported as a change.
- Of the candidate splits of all segments, the most significant one is taken first; the search stops at
  the first candidate with p >= `ALPHA`.

The permutations are seeded (`seed`), so the same series always gives the same answer.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import ruptures
from scipy.stats import rankdata

ALPHA = 0.01
PERMUTATIONS = 999
MIN_SEGMENT = 3  # results on each side of a change point


@dataclass(frozen=True)
class ChangePoint:
    """A shift before the result at `index` (0-based in the series): medians either side, and its p-value."""

    index: int
    p_value: float
    before_median: float
    after_median: float

    @property
    def change(self) -> float:
        """after / before - 1: -0.05 is a 5% drop of samples/s."""
        return self.after_median / self.before_median - 1.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "change": self.change}


def _best_gains(ranks: np.ndarray, min_segment: int) -> np.ndarray:
    """The largest split gain of each row of `ranks` (rows, n), leaving `min_segment` points a side."""
    n = ranks.shape[-1]
    centred = ranks - ranks.mean(axis=-1, keepdims=True)
    k = np.arange(min_segment, n - min_segment + 1)
    sums = np.cumsum(centred, axis=-1)[..., k - 1]
    return np.asarray((sums**2 * n / (k * (n - k))).max(axis=-1))


def _split(ranks: np.ndarray, min_segment: int) -> int:
    """Where `ruptures` splits `ranks` in two (the index of the first point of the second part)."""
    search = ruptures.Binseg(model="l2", min_size=min_segment, jump=1).fit(ranks.reshape(-1, 1))
    return int(search.predict(n_bkps=1)[0])


def detect_change_points(
    values: Sequence[float],
    *,
    alpha: float = ALPHA,
    permutations: int = PERMUTATIONS,
    min_segment: int = MIN_SEGMENT,
    seed: int = 0,
) -> list[ChangePoint]:
    """The significant change points of `values` (in series order), sorted by index."""
    series = np.asarray(values, dtype=np.float64)
    ranks = rankdata(series)
    rng = np.random.default_rng(seed)
    cuts = [0, series.size]
    found: dict[int, float] = {}
    while True:
        best: tuple[float, int] | None = None
        for start, end in itertools.pairwise(cuts):
            if end - start < 2 * min_segment:
                continue
            segment = ranks[start:end]
            split = _split(segment, min_segment)
            observed = _best_gains(segment[None, :], min_segment)[0]
            shuffled = rng.permuted(np.broadcast_to(segment, (permutations, segment.size)), axis=1)
            exceed = int(np.count_nonzero(_best_gains(shuffled, min_segment) >= observed * (1 - 1e-12)))
            p_value = (1 + exceed) / (permutations + 1)
            if best is None or p_value < best[0]:
                best = (p_value, start + split)
        if best is None or best[0] >= alpha:
            break
        found[best[1]] = best[0]
        cuts = sorted([*cuts, best[1]])
    points = []
    for index in sorted(found):
        position = cuts.index(index)
        before = series[cuts[position - 1] : index]
        after = series[index : cuts[position + 1]]
        points.append(
            ChangePoint(
                index, found[index], float(statistics.median(before)), float(statistics.median(after))
            )
        )
    return points
