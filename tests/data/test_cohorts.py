"""Users grouped by profile and their engagements per item (tailored.data.cohorts)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tailored.config import load_config
from tailored.data.cohorts import (
    CohortActivity,
    Cohorts,
    CohortSnapshot,
    CohortTable,
    cohort_columns,
)
from tailored.data.features import FeatureEncoder
from tailored.data.schema import FieldSpec
from tailored.errors import ConfigError


def test_small_cohorts_are_pooled_into_cohort_0() -> None:
    codes = np.array([[1, 1]] * 5 + [[1, 2]] * 2 + [[2, 1]] * 4 + [[3, 3]])
    cohorts, of_user = Cohorts.of(codes, min_users=4)
    assert cohorts.keys.tolist() == [[-1, -1], [1, 1], [2, 1]]
    assert cohorts.sizes.tolist() == [3, 5, 4]  # the pooled: two [1, 2] and one [3, 3]
    assert of_user.tolist() == [1] * 5 + [0] * 2 + [2] * 4 + [0]
    # a profile of a pooled cohort, or one never seen, is cohort 0
    assert cohorts.of_codes(np.array([[2, 1], [1, 2], [9, 9], [1, 1]])).tolist() == [2, 0, 0, 1]
    assert cohorts.rate(1, np.array([0.0, 5.0])).tolist() == [0.0, 1000.0]


def test_counts_as_of_a_time_and_the_snapshot_agree_with_counting_by_hand() -> None:
    rng = np.random.default_rng(0)
    n_items, groups, e = 12, 3, 400
    cohort = rng.integers(0, groups, e)
    items = rng.integers(1, n_items + 1, e)
    times = rng.integers(1_000, 2_000, e)
    act = CohortActivity.of(cohort, items, times, n_items, groups)
    every = np.arange(1, n_items + 1)
    for g in range(groups):
        for now in (999, 1_000, 1_500, 2_000, 5_000):
            mine = (cohort == g) & (times < now)
            expected = np.bincount(items[mine], minlength=n_items + 1)[1:]
            np.testing.assert_array_equal(act.counts(g, every, now), expected)
    snap = act.snapshot(1_500, groups)
    assert snap.check(groups, n_items) is None
    for g in range(groups):
        np.testing.assert_array_equal(snap.counts(g, every, 0.0), act.counts(g, every, 1_500))
    # the table a bundle keeps counts every event, as the activity does after the last one
    users = np.arange(e)
    table = CohortTable.of(cohort[:, None], (0,), 1, users, items, n_items)
    assert table.cohorts.keys.tolist() == [[-1], [0], [1], [2]]  # cohort g is row g + 1
    for g in range(groups):
        rate = table.rate(np.array([g]), every)
        count = act.counts(g, every, 10_000)
        np.testing.assert_allclose(rate, count * 1000 / (cohort == g).sum())
    back = CohortTable.from_arrays(table.arrays())
    np.testing.assert_array_equal(back.rate(np.array([1]), every), table.rate(np.array([1]), every))
    assert back.check(n_items, 1) is None


def test_a_broken_table_is_named() -> None:
    table = CohortTable.of(
        np.array([[1], [1], [2]]), (0,), 1, np.array([0, 2]), np.array([3, 4]), 5
    )
    assert table.check(5, 1) is None
    assert "columns" in str(table.check(5, 0))
    assert "item index" in str(table.check(3, 1))
    bad = CohortSnapshot(np.array([0, 2, 1]), np.array([1, 2]), np.array([1.0, 1.0], np.float32))
    assert "offsets" in str(bad.check(2, 5))
    negative = CohortSnapshot(np.array([0, 1]), np.array([1]), np.array([-1.0], np.float32))
    assert "negative" in str(negative.check(1, 5))


def _encoder(buckets: int) -> FeatureEncoder:
    fields = [FieldSpec("gender", "categorical"), FieldSpec("age", "numeric")]
    table = pa.table({"gender": ["f", "m", "f", "m"], "age": [20.0, 30.0, 40.0, 50.0]})
    return FeatureEncoder.fit(table, tuple(fields), buckets=buckets)


def test_cohort_fields_name_user_columns() -> None:
    enc = _encoder(buckets=2)
    assert enc.columns == ["gender", "age:bucket"]
    assert cohort_columns(enc, ("age", "gender")) == (1, 0)
    with pytest.raises(ConfigError, match=r"'zip' is not a user field \(the user fields: "):
        cohort_columns(enc, ("zip",))
    with pytest.raises(ConfigError, match=r"'age' is numeric and has no quantile ranges"):
        cohort_columns(_encoder(buckets=0), ("age",))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("gender", "a list of field names"),
        (["gender", "gender"], "a field named twice"),
    ],
)
def test_the_configuration_refuses_bad_cohort_fields(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[ranker\] cohort_fields: {message}"):
        load_config(values={"ranker": {"cohort_fields": value}})
    with pytest.raises(ConfigError, match=r"\[ranker\] cohort_min_users"):
        load_config(values={"ranker": {"cohort_min_users": 0}})
