"""The co-occurrence counts behind the MovieLens signal checks."""

from __future__ import annotations

import numpy as np

from benchmarks.explorations.movielens_signals import cooccurrence


def testcooccurrence_counts_groups_holding_both_items_once_each() -> None:
    # group 7 holds items 0, 1 (twice) and 2; group 3 holds 0 and 1; item 3 is nowhere
    group = np.array([7, 7, 7, 7, 3, 3])
    item = np.array([0, 1, 1, 2, 0, 1])
    c = cooccurrence(group, item, 4)
    expected = np.array(
        [
            [0, 2, 1, 0],
            [2, 0, 1, 0],
            [1, 1, 0, 0],
            [0, 0, 0, 0],
        ],
        dtype=float,
    )
    np.testing.assert_array_equal(c, expected)
