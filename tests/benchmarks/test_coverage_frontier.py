"""The reach penalty of the coverage exploration: an item the requests' own top k all hold
moves down, by hand-worked standard scores; no penalty leaves the order as it is."""

from __future__ import annotations

import numpy as np

from benchmarks.explorations.coverage_frontier import reach_penalized


def test_an_item_in_every_list_moves_down_by_its_standard_score() -> None:
    # items 1 and 2 lead both lists (reach 2); 3, 4 and 5 lead none (reach 0)
    scores = np.array([[3.0, 2.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0]], np.float32)
    candidates = np.array([[1, 2, 3, 4], [1, 2, 5, 4]])
    got = reach_penalized(scores, candidates, 0.5, k=2)
    # z(score) = (s - 1.5) / sqrt(1.25); z(log(1 + reach)) = +1 for items 1, 2 and -1 for the rest
    z = (np.array([3.0, 2.0, 1.0, 0.0]) - 1.5) / np.sqrt(1.25)
    want = z - 0.5 * np.array([1.0, 1.0, -1.0, -1.0])
    np.testing.assert_allclose(got, np.stack([want, want]), rtol=1e-6)
    # the third candidate now ranks above the second
    assert got[0, 2] > got[0, 1]


def test_no_penalty_is_the_order_given_and_empty_slots_stay_out() -> None:
    scores = np.array([[0.5, 0.2, 0.9]], np.float32)
    candidates = np.array([[4, 7, 0]])
    np.testing.assert_array_equal(reach_penalized(scores, candidates, 0.0), scores)
    got = reach_penalized(scores, candidates, 1.5, k=1)
    assert got[0, 2] == -np.inf and np.isfinite(got[0, :2]).all()
    assert got[0, 0] < got[0, 1]  # item 4 leads the only list: pushed below item 7
