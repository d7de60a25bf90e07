"""Train/valid/test splits of a user-by-time ordered event stream.

* :func:`user_temporal_split` — RecBole's ``RS [0.8, 0.1, 0.1], order TO, group_by user``:
  each user's events stable-sorted by time (ties keep file order); with ``n`` events the last
  ``int(0.1 n)`` go to test and the ``int(0.1 n)`` before them to valid, the rest to train.
  As in RecBole, a user with ``0 < 0.1 n < 1`` still gives one event to each of test and valid
  while at least two remain for training.
* :func:`global_time_split` — train before ``valid_start``, valid until ``test_start``, test
  after: what a production system sees.
* pre-split data (imported with a ``split`` column) needs no function: it is read as is.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TEST", "TRAIN", "VALID", "global_time_split", "user_temporal_split", "user_time_order"]

TRAIN, VALID, TEST = 0, 1, 2


def user_time_order(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Permutation sorting events by (user, timestamp, file position): stable in time."""
    return np.lexsort((timestamp, user))  # a stable sort: ties keep file order


def _split_counts(n: int, valid_ratio: float, test_ratio: float) -> tuple[int, int, int]:
    """RecBole's ``_calcu_split_ids`` for ratios [1 - v - t, v, t] over ``n`` events."""
    ratios = [1.0 - valid_ratio - test_ratio, valid_ratio, test_ratio]
    cnt = [int(r * n) for r in ratios]
    cnt[0] = n - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * n < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt[0], cnt[1], cnt[2]


def user_temporal_split(
    user: np.ndarray, timestamp: np.ndarray, *, valid_ratio: float = 0.1, test_ratio: float = 0.1
) -> np.ndarray:
    """Split label per event (``int8``: TRAIN, VALID, TEST), in the input's row order.

    ``user``: int [E] user index per event; ``timestamp``: int [E] seconds.
    """
    order = user_time_order(user, timestamp)
    sorted_users = user[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    ends = np.r_[starts[1:], len(order)]
    labels_sorted = np.zeros(len(order), dtype=np.int8)
    # vectorised over users: position within the user's sequence vs. the two cut points
    sizes = ends - starts
    cuts = np.array([_split_counts(int(n), valid_ratio, test_ratio) for n in np.unique(sizes)])
    lookup = {int(n): c for n, c in zip(np.unique(sizes), cuts, strict=True)}
    n_train = np.array([lookup[int(n)][0] for n in sizes])
    n_valid = np.array([lookup[int(n)][1] for n in sizes])
    pos = np.arange(len(order)) - np.repeat(starts, sizes)
    first_valid = np.repeat(n_train, sizes)
    first_test = first_valid + np.repeat(n_valid, sizes)
    labels_sorted[pos >= first_valid] = VALID
    labels_sorted[pos >= first_test] = TEST
    labels = np.empty_like(labels_sorted)
    labels[order] = labels_sorted
    return labels


def global_time_split(timestamp: np.ndarray, *, valid_start: int, test_start: int) -> np.ndarray:
    """TRAIN before ``valid_start``, VALID in ``[valid_start, test_start)``, TEST after."""
    labels = np.full(len(timestamp), TRAIN, dtype=np.int8)
    labels[timestamp >= valid_start] = VALID
    labels[timestamp >= test_start] = TEST
    return labels
