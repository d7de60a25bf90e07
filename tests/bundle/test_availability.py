"""Item windows: which items a bundle may serve at a time, and which are new."""

from __future__ import annotations

import numpy as np

from tailored.bundle.availability import NEVER, ItemWindows


def _windows() -> ItemWindows:
    # rows 1..5: always; launched at 100; launched at 200 and ended at 300; ended at 50;
    # launched at 150
    start = np.array([NEVER, 0, 100, 200, 0, 150], np.int64)
    end = np.array([NEVER, NEVER, NEVER, 300, 50, NEVER], np.int64)
    return ItemWindows(start, end)


def test_an_item_is_served_from_its_start_until_before_its_end() -> None:
    w = _windows()
    expected = {
        0: {2, 3, 5},  # not launched yet (row 0, padding, never counts as an item)
        50: {2, 3, 4, 5},  # row 4 ended at 50: not served at 50
        99.9: {2, 3, 4, 5},
        100: {3, 4, 5},
        150: {3, 4},
        299: {4},
        300: {3, 4},
    }
    for t, closed in expected.items():
        got = set(w.closed(t).tolist()) - {0}
        assert got == closed, t


def test_new_items_are_those_launched_in_the_window_and_still_served() -> None:
    w = _windows()
    assert sorted(w.launched(90, 160).tolist()) == [2, 5]
    assert sorted(w.launched(100, 250).tolist()) == [3, 5]  # 100 itself is not after 100
    assert w.launched(160, 400).tolist() == []  # row 3 launched at 200 but ended at 300
