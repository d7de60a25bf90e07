"""The ranker's features on a hand-computed example, and request building on real data."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tailored.config import ConfigError
from tailored.data.features import FeatureEncoder, FeatureTable
from tailored.data.ranking_features import (
    COHORT_PRIOR,
    DENSE_FEATURES,
    CohortCounts,
    ItemActivity,
    ItemNeighbors,
    ItemRegression,
    cohort_columns,
    dense_features,
    item_tags,
    ranker_inputs,
)
from tailored.data.schema import FieldSpec
from tailored.train.ranker.data import exact_retriever

DAY = 86_400
F = {name: j for j, name in enumerate(DENSE_FEATURES)}


def _items() -> FeatureTable:
    # 4 items (+ padding row 0); one categorical field (codes 1..2) and one multi field
    # (genres, codes 1..3): item 1 = cat 1, genres {1, 2}; item 2 = cat 2, {2};
    # item 3 = cat 1, {3}; item 4 = cat 2, no genre
    cat = np.array([[0], [1], [2], [1], [2]])
    multi = np.zeros((5, 1, 8), np.int64)
    multi[1, 0, :2] = [1, 2]
    multi[2, 0, 0] = 2
    multi[3, 0, 0] = 3
    return FeatureTable(cat, multi, np.zeros((5, 0), np.float32))


def test_item_tags_share_one_code_space() -> None:
    tags = item_tags(_items())
    # the categorical field's codes stay 1..2, the genres move to 3..5
    assert sorted(tags[1][tags[1] > 0]) == [1, 3, 4]
    assert sorted(tags[2][tags[2] > 0]) == [2, 4]
    assert sorted(tags[4][tags[4] > 0]) == [2]
    assert (tags[0] == 0).all()


def test_item_activity_counts_as_of_a_time() -> None:
    items = np.array([1, 1, 2, 1, 3])
    times = np.array([100, 200, 150, 300, 50])
    act = ItemActivity.of(items, times, n_items=4)
    assert act.count_before(np.array([1, 2, 3, 4]), 200).tolist() == [1, 1, 1, 0]
    assert act.count_before(np.array([1]), 301).tolist() == [3]
    assert act.count_before(np.array([1]), 10).tolist() == [0]
    assert act.first_time(np.array([1, 2, 4])).tolist() == [100, 150, -1]


def test_dense_features_by_hand() -> None:
    items = _items()
    tags = item_tags(items)
    now = 100 * DAY
    # item 1 was engaged 60 days and 2 days before now; item 2 once, 10 days before
    act = ItemActivity.of(
        np.array([1, 1, 2]), np.array([now - 60 * DAY, now - 2 * DAY, now - 10 * DAY]), 4
    )
    # the user watched item 2 (tags {2, 4}) 3 days ago and item 3 (tags {1, 5}) 1 hour ago
    history = np.array([2, 3])
    history_times = np.array([now - 3 * DAY, now - 3600])
    cands = np.array([1, 4, 3])
    # co-occurrence from one other user who had items 2 and 1: cos(1, 2) = 1/sqrt(1*1) = 1
    nb = ItemNeighbors.of(np.array([0, 0]), np.array([2, 1]), np.array([0, 2]), 4)
    emb = np.array([[0, 0], [1, 0], [0, 1], [0.6, 0.8], [1, 0]], np.float32)
    f = dense_features(
        candidates=cands,
        scores=np.array([0.9, 0.5, 0.1], np.float32),
        history=history,
        history_times=history_times,
        now=now,
        tags=tags,
        activity=act,
        neighbors=nb,
        item_emb=emb,
    )
    assert f.shape == (3, len(DENSE_FEATURES)) and f.dtype == np.float32
    np.testing.assert_allclose(f[:, F["retrieval_score"]], [0.9, 0.5, 0.1])
    np.testing.assert_allclose(f[:, F["retrieval_rank"]], np.log1p([0, 1, 2]), rtol=1e-6)
    np.testing.assert_allclose(f[:, F["item_count"]], np.log1p([2, 0, 0]), rtol=1e-6)
    np.testing.assert_allclose(f[:, F["item_count_7d"]], np.log1p([1, 0, 0]), rtol=1e-6)
    np.testing.assert_allclose(f[:, F["item_count_30d"]], np.log1p([1, 0, 0]), rtol=1e-6)
    np.testing.assert_allclose(f[0, F["item_age_days"]], np.log1p(60), rtol=1e-6)
    assert f[:, F["item_unseen"]].tolist() == [0, 1, 1]
    # item 1's tags {1, 3, 4}: shares in the 2-item history 1/2, 0, 1/2 -> mean 1/3, max 1/2
    # item 4's tag {2}: 1/2; item 3's tags {1, 5}: 1/2 and 1/2
    np.testing.assert_allclose(f[:, F["tag_affinity"]], [1 / 3, 1 / 2, 1 / 2], rtol=1e-6)
    np.testing.assert_allclose(f[:, F["tag_affinity_max"]], [1 / 2, 1 / 2, 1 / 2], rtol=1e-6)
    # item 1 shares tag 1 (item 3, 1 hour ago) and tag 4 (item 2, 72 hours ago): 1 hour
    np.testing.assert_allclose(f[:, F["tag_hours_since"]], np.log1p([1.0, 72.0, 1.0]), rtol=1e-6)
    assert f[:, F["tag_never"]].tolist() == [0, 0, 0]
    np.testing.assert_allclose(f[:, F["history_length"]], np.log1p(2), rtol=1e-6)
    np.testing.assert_allclose(f[:, F["hours_since_last"]], np.log1p(1.0), rtol=1e-6)
    # history [2, 3]: item 2's neighbour is item 1 (1.0); item 3 has none
    np.testing.assert_allclose(f[:, F["cooc_recent"]], [1.0, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(f[:, F["cooc_recent_max"]], [1.0, 0.0, 0.0], rtol=1e-6)
    # most recent item 3 = (0.6, 0.8): candidates 1 = (1, 0), 4 = (1, 0), 3 itself
    np.testing.assert_allclose(f[:, F["emb_sim_last"]], [0.6, 0.6, 1.0], rtol=1e-6)
    # mean over items 2 = (0, 1) and 3: (0 + 0.6) / 2, (0 + 0.6) / 2, (0.8 + 1) / 2
    np.testing.assert_allclose(f[:, F["emb_sim_recent"]], [0.3, 0.3, 0.9], rtol=1e-6)


def test_item_neighbors_by_hand() -> None:
    # user 0: items 1, 2; user 1: items 1, 2, 3; user 2: item 3 (each item has 2 users)
    # cos(1, 2) = 2 / sqrt(2 * 2) = 1; cos(1, 3) = cos(2, 3) = 1 / sqrt(2 * 2) = 0.5
    users = np.array([0, 0, 1, 1, 1, 2])
    items = np.array([1, 2, 1, 2, 3, 3])
    nb = ItemNeighbors.of(users, items, np.array([0, 2, 5, 6]), 3, neighbors=2)
    assert nb.ids[1].tolist() == [2, 3]
    np.testing.assert_allclose(nb.weights[1], [1.0, 0.5], rtol=1e-6)
    assert sorted(nb.ids[3].tolist()) == [1, 2]
    assert (nb.ids[0] == 0).all()
    # history [1, 3]: candidate 2 gets 1.0 (from 1) + 0.5 (from 3), max 1.0; 4 is unknown
    total, best = nb.scores(np.array([1, 3]), np.array([2, 0]))
    np.testing.assert_allclose(total, [1.5, 0.0], rtol=1e-6)
    np.testing.assert_allclose(best, [1.0, 0.0], rtol=1e-6)
    # only the `recent` last items of each user count: with 1, user 1 keeps item 3 only
    nb1 = ItemNeighbors.of(users, items, np.array([0, 2, 5, 6]), 3, recent=1)
    assert (nb1.weights[3] == 0).all()


def test_item_regression_is_a_ridge_regression_per_item() -> None:
    # EASE's closed form against its definition: column j of the weights is the ridge
    # regression of "the user has item j" on the user's other items
    rng = np.random.default_rng(0)
    x = (rng.random((40, 7)) < 0.4).astype(float)
    users, cols = np.nonzero(x)
    l2 = 3.0
    reg = ItemRegression.of(np.r_[users, users[:5]], np.r_[cols, cols[:5]] + 1, 7, l2=l2)
    assert reg.rows.tolist() == [-1, 0, 1, 2, 3, 4, 5, 6]  # every item modelled, in order
    for j in range(7):
        others = [i for i in range(7) if i != j]
        a = x[:, others]
        ridge = np.linalg.solve(a.T @ a + l2 * np.eye(6), a.T @ x[:, j])
        np.testing.assert_allclose(reg.weights[others, j], ridge, rtol=1e-4, atol=1e-6)
        assert reg.weights[j, j] == 0
    # a history's score is the sum of its items' rows; a repeated item counts once
    hist, cands = np.array([1, 3, 3]), np.array([2, 4, 1])
    expect = reg.weights[[0, 2]][:, [1, 3, 0]].sum(0)
    np.testing.assert_allclose(reg.scores(hist, cands), expect, rtol=1e-6)


def test_item_regression_models_the_most_active_items_only() -> None:
    # user 0: items 1, 2; user 1: 1, 3; user 2: 1, 2, 4 (twice); user 3: 3
    # item 1 has 3 users, items 2 and 3 two each, item 4 one: two places go to items 1 and 2
    # (a tie goes to the lower item number)
    users = np.array([0, 0, 1, 1, 2, 2, 2, 2, 3])
    items = np.array([1, 2, 1, 3, 1, 2, 4, 4, 3])
    reg = ItemRegression.of(users, items, 5, max_items=2, l2=1.0)
    assert reg.rows.tolist() == [-1, 0, 1, -1, -1, -1]
    assert reg.weights.shape == (2, 2)
    # item 2 regressed on item 1 alone: <x1, x2> / (|x1|^2 + l2) = 2 / (3 + 1)
    np.testing.assert_allclose(reg.weights[0, 1], 0.5, rtol=1e-5)
    np.testing.assert_allclose(reg.weights[1, 0], 2 / (2 + 1), rtol=1e-5)
    # items outside the model, in the history or among the candidates, add nothing
    s = reg.scores(np.array([1, 3, 5]), np.array([2, 3, 4]))
    np.testing.assert_allclose(s, [reg.weights[0, 1], 0.0, 0.0], rtol=1e-6)
    empty = ItemRegression.of(users, items, 5, max_items=0)
    assert empty.weights.shape == (0, 0)
    assert (empty.scores(np.array([1, 2]), np.array([1, 2, 3])) == 0).all()


def test_dense_features_read_the_item_regression() -> None:
    tags = item_tags(_items())
    act = ItemActivity.of(np.array([1]), np.array([5]), 4)
    nb = ItemNeighbors.of(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(1, np.int64), 4)
    reg = ItemRegression.of(np.array([0, 0, 1, 1, 2]), np.array([1, 2, 2, 3, 4]), 4, l2=1.0)
    kwargs = {
        "candidates": np.array([1, 3, 4]),
        "scores": np.zeros(3, np.float32),
        "history": np.array([2, 4]),
        "history_times": np.array([1, 2]),
        "now": 10.0,
        "tags": tags,
        "activity": act,
        "neighbors": nb,
        "item_emb": np.ones((5, 2), np.float32),
    }
    f = dense_features(**kwargs, regression=reg)  # type: ignore[arg-type]
    got = f[:, F["ease_score"]]
    np.testing.assert_allclose(got, reg.scores(np.array([2, 4]), np.array([1, 3, 4])))
    assert got[0] != 0 and got[1] != 0  # items 1 and 3 share users with item 2
    assert (dense_features(**kwargs)[:, F["ease_score"]] == 0).all()  # type: ignore[arg-type]


def test_dense_features_without_history() -> None:
    tags = item_tags(_items())
    act = ItemActivity.of(np.array([1]), np.array([5]), 4)
    f = dense_features(
        candidates=np.array([1, 2]),
        scores=np.zeros(2, np.float32),
        history=np.zeros(0, np.int64),
        history_times=np.zeros(0, np.int64),
        now=10.0,
        tags=tags,
        activity=act,
        neighbors=ItemNeighbors.of(
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(1, np.int64), 4
        ),
        item_emb=np.ones((5, 2), np.float32),
    )
    assert f[:, F["tag_never"]].tolist() == [1, 1]
    assert f[:, F["tag_affinity"]].tolist() == [0, 0]
    assert np.isfinite(f).all()


def test_ranker_inputs_rows_are_request_major() -> None:
    items = _items()
    users = FeatureTable(np.array([[1], [2]]), np.zeros((2, 0, 8), np.int64), np.ones((2, 1)))
    cands = np.array([[1, 2], [3, 4]])
    emb = np.arange(10, dtype=np.float32).reshape(5, 2)
    x = ranker_inputs(
        users=users,
        context=np.zeros((2, 0), np.int64),
        items=items,
        item_emb=emb,
        candidates=cands,
        dense=np.arange(8, dtype=np.float32).reshape(2, 2, 2),
        user_emb=np.array([[1, 0], [0, 1]], np.float32),
    )
    assert x["user_cat"][:, 0].tolist() == [1, 1, 2, 2]
    assert x["item_cat"][:, 0].tolist() == [1, 2, 1, 2]
    assert x["item_emb"].tolist() == emb[[1, 2, 3, 4]].tolist()
    assert x["dense"].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert x["user_emb"].tolist() == [[1, 0], [1, 0], [0, 1], [0, 1]]


def test_exact_retriever_excludes_and_pads() -> None:
    emb = np.array([[0, 0], [1, 0], [0.9, 0.1], [0, 1]], np.float32)
    retrieve = exact_retriever(emb)
    scores, ids = retrieve(np.array([[1, 0]], np.float32), [np.array([1])], 5)
    # 3 real items, one excluded: two candidates, then padding
    assert ids[0, :2].tolist() == [2, 3]
    assert (ids[0, 2:] == 0).all()
    assert scores[0, 0] == pytest.approx(0.9)


def test_neighbor_scores_match_a_brute_force_sum_and_max() -> None:
    rng = np.random.default_rng(3)
    n, m = 60, 7
    ids = rng.integers(0, n + 1, (n + 1, m))
    weights = rng.random((n + 1, m)).astype(np.float32)
    nb = ItemNeighbors(ids, weights)
    for _ in range(20):
        history = rng.integers(1, n + 1, rng.integers(0, 12))
        candidates = rng.integers(0, n + 1, rng.integers(1, 30))  # repeats and 0 included
        total, best = nb.scores(history, candidates)
        for j, c in enumerate(candidates):
            hits = [weights[h, s] for h in history for s in range(m) if c and ids[h, s] == c]
            assert total[j] == pytest.approx(sum(hits), abs=1e-5)
            assert best[j] == pytest.approx(max(hits, default=0.0), abs=1e-6)


# -- cohorts ------------------------------------------------------------------------------------
# six users, columns (gender: codes 0-2, region: codes 0-2); users 0-2 gender 1, users 3-4
# gender 2, user 5 gender missing (0)
_USER_CAT = np.array([[1, 1], [1, 2], [1, 1], [2, 1], [2, 2], [0, 1]])
_EV_USERS = np.array([0, 0, 0, 1, 2, 3, 4, 4, 5])
_EV_ITEMS = np.array([1, 2, 1, 1, 3, 2, 2, 4, 4])  # user 0's item 1 twice: counts once


def test_cohort_counts_by_hand() -> None:
    by_gender = np.array([[0, 0, 3]])
    c = CohortCounts.of(_EV_USERS, _EV_ITEMS, _USER_CAT, by_gender, 4, min_users=2)
    # gender 0 has one user engaging: too few to keep; genders 1 (3 users) and 2 (2 users)
    assert c.cohorts.tolist() == [1, 2]
    assert c.item_totals.tolist() == [0, 2, 3, 1, 2]  # every user's distinct pairs
    assert c.items[c.offsets[0] : c.offsets[1]].tolist() == [1, 2, 3]
    assert c.counts[c.offsets[0] : c.offsets[1]].tolist() == [2, 1, 1]
    assert c.items[c.offsets[1] : c.offsets[2]].tolist() == [2, 4]
    assert c.totals.tolist() == [4, 3]
    lift, best = c.scores(np.array([1]), np.array([1, 4]))
    p = 3 / 12  # items 1 and 4: (2 users + 1) / (8 pairs + 4 items)
    share_1 = (2 + COHORT_PRIOR * p) / (4 + COHORT_PRIOR)
    share_4 = (0 + COHORT_PRIOR * p) / (4 + COHORT_PRIOR)
    np.testing.assert_allclose(lift, np.log([share_1 / p, share_4 / p]), rtol=1e-6)
    np.testing.assert_array_equal(best, lift)  # one definition: its lift is the largest
    assert lift[0] > 0 > lift[1]  # gender 1 engaged with item 1 more than all, 4 less
    # a cohort too small to keep, one never seen, and no cohort read as nothing
    for cohorts in ([0], [7], []):
        assert not any(a.any() for a in c.scores(np.array(cohorts), np.array([1, 2, 3, 4])))


def test_cohort_definitions_cross_their_fields_and_add_up() -> None:
    # definition 0: gender x region (9 cohorts, keys 0-8); definition 1: region (keys 9-11)
    columns = np.array([[0, 0, 3], [0, 1, 3], [1, 1, 3]])
    c = CohortCounts.of(_EV_USERS, _EV_ITEMS, _USER_CAT, columns, 4, min_users=1)
    keys = c.keys(_USER_CAT)
    assert keys[:, 0].tolist() == [4, 5, 4, 7, 8, 1]  # gender x 3 + region
    assert keys[:, 1].tolist() == [10, 11, 10, 10, 11, 10]  # 9 + region
    assert c.cohorts.tolist() == [1, 4, 5, 7, 8, 10, 11]
    cands = np.array([1, 2, 3, 4])
    lift, best = c.scores(keys[0], cands)
    (a, _), (b, _) = c.scores(keys[0, :1], cands), c.scores(keys[0, 1:], cands)
    np.testing.assert_allclose(lift, a + b, rtol=1e-6)
    np.testing.assert_allclose(best, np.maximum(a, b), rtol=1e-6)
    none = CohortCounts.of(_EV_USERS, _EV_ITEMS, _USER_CAT, np.zeros((0, 3)), 4)
    assert none.keys(_USER_CAT).shape == (6, 0) and not len(none.cohorts)


def test_dense_features_read_the_cohort() -> None:
    items = _items()
    c = CohortCounts.of(_EV_USERS, _EV_ITEMS, _USER_CAT, np.array([[0, 0, 3]]), 4, min_users=2)
    kwargs = {
        "candidates": np.array([1, 4]),
        "scores": np.zeros(2, np.float32),
        "history": np.array([2]),
        "history_times": np.array([0]),
        "now": 10.0,
        "tags": item_tags(items),
        "activity": ItemActivity.of(np.array([2]), np.array([0]), 4),
        "neighbors": ItemNeighbors.of(np.array([0]), np.array([2]), np.array([0, 1]), 4),
        "item_emb": np.eye(5, dtype=np.float32),
    }
    f = dense_features(**kwargs, cohorts=c, cohort=np.array([1]))  # type: ignore[arg-type]
    lift, best = c.scores(np.array([1]), np.array([1, 4]))
    np.testing.assert_array_equal(f[:, F["cohort_lift"]], lift)
    np.testing.assert_array_equal(f[:, F["cohort_lift_max"]], best)
    assert f[:, F["cohort_lift"]].any()
    without = dense_features(**kwargs)  # type: ignore[arg-type]
    assert not without[:, [F["cohort_lift"], F["cohort_lift_max"]]].any()


def test_cohort_columns_name_fields_and_refuse_unknown_ones() -> None:
    table = pa.table(
        {
            "gender": pa.array(["f", "m", None, "m"]),
            "age": pa.array([20.0, 30.0, 40.0, 50.0]),
        }
    )
    fields = (FieldSpec("gender", "categorical"), FieldSpec("age", "numeric"))
    enc = FeatureEncoder.fit(table, fields, buckets=2)
    cols = cohort_columns(enc, [["age", "gender"], ["gender"]])
    # age by its range column (after the categorical fields), 2 ranges + missing
    assert cols.tolist() == [[0, 1, 3], [0, 0, 3], [1, 0, 3]]
    with pytest.raises(ConfigError, match=r"\[ranker\] cohorts: 'zip'.*\['gender', 'age'\]"):
        cohort_columns(enc, [["zip"]])
    no_ranges = FeatureEncoder.fit(table, fields, buckets=0)
    with pytest.raises(ConfigError, match="'age' is no categorical"):
        cohort_columns(no_ranges, [["age"]])
