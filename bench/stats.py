"""Small statistics for the benchmarks that compare timings (no SciPy dependency for one function).

Checked against SciPy's results by tests/test_bench_stats.py."""

from __future__ import annotations

import math
from collections.abc import Sequence


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test that ``a`` and ``b`` come from one distribution.

    Normal approximation with the tie correction and a continuity correction of 0.5, as
    ``scipy.stats.mannwhitneyu(a, b, method="asymptotic")`` computes it; fine from about 20 values each.
    """
    n1, n2 = len(a), len(b)
    ranked = sorted([*a, *b])
    ranks: dict[float, float] = {}  # value -> average rank (1-based) of its ties
    ties = 0.0
    start = 0
    while start < len(ranked):
        end = start
        while end + 1 < len(ranked) and ranked[end + 1] == ranked[start]:
            end += 1
        ranks[ranked[start]] = (start + end) / 2 + 1
        count = end - start + 1
        ties += count**3 - count
        start = end + 1
    u = sum(ranks[value] for value in a) - n1 * (n1 + 1) / 2
    n = n1 + n2
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))
    if sigma == 0:
        return 1.0
    z = (abs(u - n1 * n2 / 2) - 0.5) / sigma
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))
