"""The statistics the timing benchmark (``python -m bench.subscribe_timing``) relies on, against SciPy."""

from __future__ import annotations

import pytest

from bench.stats import mann_whitney_p


def test_the_mann_whitney_p_agrees_with_scipy() -> None:
    # p-values computed with scipy.stats.mannwhitneyu(a, b, method="asymptotic"), an independent implementation
    assert mann_whitney_p(list(range(1, 21)), list(range(11, 31))) == pytest.approx(5.2125496206037515e-05)
    tied_a, tied_b = [1, 2, 2, 3, 3, 3, 4, 5] * 3, [2, 3, 3, 4, 4, 5, 6, 6] * 3
    assert mann_whitney_p(tied_a, tied_b) == pytest.approx(0.0033179745794356496)
    assert mann_whitney_p(tied_b, tied_a) == pytest.approx(0.0033179745794356496)
    assert mann_whitney_p([5.0] * 30, [5.0] * 30) == 1.0
