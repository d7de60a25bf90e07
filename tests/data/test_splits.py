from __future__ import annotations

import numpy as np

from tailored.data.splits import TEST, TRAIN, VALID, global_time_split, user_temporal_split


def test_user_temporal_split_matches_recbole_rs_to() -> None:
    # user 0: 10 events given newest first -> the newest (row 0) is test, the next valid
    # user 1: 25 events in order -> int(2.5) = 2 test, 2 valid, 21 train
    # user 2: 5 events with equal timestamps -> ties keep file order; 0.1 * 5 = 0.5 is in
    #         (0, 1), so RecBole still gives one event each to valid and test
    user = np.array([0] * 10 + [1] * 25 + [2] * 5)
    ts = np.r_[np.arange(10)[::-1], np.arange(25), np.zeros(5)]
    labels = user_temporal_split(user, ts)
    assert list(labels[:10]) == [TEST, VALID] + [TRAIN] * 8
    assert list(labels[10:35]) == [TRAIN] * 21 + [VALID] * 2 + [TEST] * 2
    assert list(labels[35:]) == [TRAIN] * 3 + [VALID, TEST]


def test_split_keeps_input_row_order_for_interleaved_users() -> None:
    user = np.array([1, 0, 1, 0] * 10)
    ts = np.arange(40)
    labels = user_temporal_split(user, ts)
    for u in (0, 1):
        mine = labels[user == u]
        assert list(mine) == [TRAIN] * 16 + [VALID] * 2 + [TEST] * 2


def test_a_user_with_two_events_gives_one_to_test_as_recbole_does() -> None:
    # counts [int(1.6), int(0.2), int(0.2)] = [1, 0, 0] -> train takes the rest, 2; then test
    # gets one (0 < 0.2 < 1) leaving 1 for train, and the loop stops before valid
    labels = user_temporal_split(np.array([0, 0]), np.array([1, 2]))
    assert list(labels) == [TRAIN, TEST]


def test_global_time_split() -> None:
    labels = global_time_split(np.array([5, 10, 15, 20, 25]), valid_start=10, test_start=20)
    assert list(labels) == [TRAIN, VALID, VALID, TEST, TEST]
