"""Full-ranking metrics: hand-computed examples and a pure-Python reference on random data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tailored.data.interactions import PositiveRule, load_interactions
from tailored.data.splits import TEST, TRAIN, VALID
from tailored.train.evaluate import user_csr
from tailored.train.metrics import (
    Csr,
    activity_bands,
    age_bands,
    aggregate_metrics,
    grouped_metrics,
    per_user_metrics,
    popularity_scores,
    topk_from_scores,
    topk_shared,
)


def _one(topk: list[int], relevant: list[int], k: int) -> dict[str, float]:
    out = per_user_metrics(np.array([topk]), Csr.from_lists([relevant]), [k])
    return {name.split("@")[0]: float(v[0]) for name, v in out.items()}


# --- Csr ------------------------------------------------------------------------------------


def test_csr_from_lists_rows_and_lengths() -> None:
    csr = Csr.from_lists([[3, 1], [], [7]])
    assert csr.indptr.tolist() == [0, 2, 2, 3]
    assert csr.indices.dtype == np.int64
    assert csr.row(0).tolist() == [3, 1]
    assert csr.row(1).tolist() == []
    assert csr.lengths().tolist() == [2, 0, 1]
    assert csr.n_rows == 3


def test_csr_rejects_inconsistent_indptr() -> None:
    with pytest.raises(ValueError, match="indptr"):
        Csr(np.array([0, 3]), np.array([1, 2]))
    with pytest.raises(ValueError, match="indptr"):
        Csr(np.array([0, 2, 1, 2]), np.array([1, 2]))


# --- per-user metrics -----------------------------------------------------------------------


def test_hand_computed_example_at_5() -> None:
    # relevant {2, 5, 9}, top-5 [5, 1, 9, 3, 7]: hits at ranks 1 and 3.
    # hit = 1; mrr = 1/1; precision = 2/5; recall = 2/3
    # dcg = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5
    # idcg = 1/log2(2) + 1/log2(3) + 1/log2(4) = 1 + 0.63093 + 0.5 = 2.13093
    # ndcg = 1.5 / 2.13093 = 0.70392
    m = _one([5, 1, 9, 3, 7], [2, 5, 9], 5)
    assert m["hit"] == 1.0
    assert m["mrr"] == 1.0
    assert m["precision"] == pytest.approx(2 / 5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["ndcg"] == pytest.approx(1.5 / (1 + 1 / math.log2(3) + 0.5))
    assert m["ndcg"] == pytest.approx(0.703918, abs=1e-6)


def test_hand_computed_example_at_2() -> None:
    # same user at k = 2: top-2 [5, 1] holds one hit.
    # precision = 1/2; recall = 1/3; dcg = 1; idcg = 1 + 1/log2(3) = 1.63093; ndcg = 0.61315
    m = _one([5, 1, 9, 3, 7], [2, 5, 9], 2)
    assert (m["hit"], m["mrr"]) == (1.0, 1.0)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["ndcg"] == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_first_hit_at_rank_three() -> None:
    # relevant {4}, top-5 [0, 1, 4, 2, 3]: mrr = 1/3; dcg = 1/log2(4) = 0.5; idcg = 1
    m = _one([0, 1, 4, 2, 3], [4], 5)
    assert m["mrr"] == pytest.approx(1 / 3)
    assert m["ndcg"] == pytest.approx(0.5)
    # at k = 2 the hit is outside the list: every metric is 0
    assert _one([0, 1, 4, 2, 3], [4], 2) == dict.fromkeys(
        ["hit", "mrr", "recall", "ndcg", "precision"], 0.0
    )


def test_ndcg_is_one_for_a_perfect_ranking() -> None:
    topk = np.array([[7, 3, 0, 1, 2], [4, 0, 1, 2, 3]])
    out = per_user_metrics(topk, Csr.from_lists([[3, 7], [4]]), [1, 2, 5])
    for k in (1, 2, 5):
        np.testing.assert_allclose(out[f"ndcg@{k}"], 1.0)


def test_recall_divides_by_all_relevant_items() -> None:
    # |R| = 6 > k = 3, all of the top 3 relevant: recall = 3/6, not 3/min(3, 6) = 1;
    # precision = 3/3; ndcg = 1 since idcg sums min(|R|, k) = 3 terms.
    m = _one([0, 1, 2], [0, 1, 2, 3, 4, 5], 3)
    assert m["recall"] == pytest.approx(0.5)
    assert m["precision"] == 1.0
    assert m["ndcg"] == pytest.approx(1.0)


def test_empty_relevant_row_raises() -> None:
    with pytest.raises(ValueError, match="row 1 is empty"):
        per_user_metrics(np.array([[0, 1], [0, 1]]), Csr.from_lists([[1], []]), [2])


def test_bad_cutoff_and_negative_relevant_raise() -> None:
    with pytest.raises(ValueError, match="cut-offs"):
        per_user_metrics(np.array([[0, 1]]), Csr.from_lists([[1]]), [3])
    with pytest.raises(ValueError, match="negative"):
        per_user_metrics(np.array([[0, 1]]), Csr.from_lists([[-1]]), [2])


def test_repeated_relevant_item_counts_once() -> None:
    # relevant [1, 1, 4] is the set {1, 4}: top-2 [1, 0] gives recall = 1/2 (not 1/3);
    # idcg = 1 + 1/log2(3) over min(|R|, k) = 2 items, dcg = 1
    m = _one([1, 0], [1, 1, 4], 2)
    assert m["recall"] == pytest.approx(0.5)
    assert m["ndcg"] == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_padding_never_matches_previous_users_last_item() -> None:
    # Keys are user * width + item with width = 4 here; a -1 slot of user 1 has the key of
    # user 0's item 3, which is relevant. It must still be a miss.
    topk = np.array([[3, 0], [-1, -1]])
    out = per_user_metrics(topk, Csr.from_lists([[3], [2]]), [2])
    assert out["hit@2"].tolist() == [1.0, 0.0]


# --- aggregate ------------------------------------------------------------------------------


def test_coverage_and_average_popularity_two_users() -> None:
    # 6 items with training counts [10, 5, 3, 1, 0, 2]; top-3: user 0 [0, 1, 2], user 1
    # [0, 3, -1] (one empty slot).
    # itemcoverage@3 = |{0, 1, 2, 3}| / 6 = 4/6; itemcoverage@1 = |{0}| / 6 = 1/6
    # averagepopularity@3 = mean((10 + 5 + 3)/3, (10 + 1 + 0)/3) = mean(6, 11/3) = 29/6
    # averagepopularity@1 = mean(10, 10) = 10
    popularity = np.array([10, 5, 3, 1, 0, 2])
    topk = np.array([[0, 1, 2], [0, 3, -1]])
    out = aggregate_metrics(topk, Csr.from_lists([[2], [5]]), [1, 3], popularity, 6)
    assert out["itemcoverage@3"] == pytest.approx(4 / 6)
    assert out["itemcoverage@1"] == pytest.approx(1 / 6)
    assert out["averagepopularity@3"] == pytest.approx(29 / 6)
    assert out["averagepopularity@1"] == pytest.approx(10.0)
    # means of the per-user metrics: user 0 hits item 2 at rank 3, user 1 misses
    assert out["hit@3"] == pytest.approx(0.5)
    assert out["mrr@3"] == pytest.approx((1 / 3) / 2)
    assert out["precision@3"] == pytest.approx((1 / 3) / 2)


# --- top-k ----------------------------------------------------------------------------------


def test_topk_masks_excluded_items() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [0.4, 0.3, 0.2, 0.1]])
    top = topk_from_scores(scores, Csr.from_lists([[1], []]), 2)
    assert top.dtype == np.int64
    assert top.tolist() == [[3, 2], [0, 1]]
    assert scores[0, 1] == 0.9  # input untouched


def test_topk_ties_broken_by_lower_index() -> None:
    scores = np.array([[1.0, 2.0, 2.0, 1.0, 2.0], [0.0] * 5])
    assert topk_from_scores(scores, None, 2).tolist() == [[1, 2], [0, 1]]
    assert topk_from_scores(scores, None, 4).tolist() == [[1, 2, 4, 0], [0, 1, 2, 3]]


def test_topk_matches_sorted_reference_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(30, 40)).astype(np.float32)
    exclude = Csr.from_lists(
        [rng.choice(40, size=rng.integers(0, 38), replace=False) for _ in range(30)]
    )
    top = topk_from_scores(scores, exclude, 7)
    for u in range(30):
        banned = set(exclude.row(u).tolist())
        ranked = sorted((i for i in range(40) if i not in banned), key=lambda i: (-scores[u, i], i))
        expected = (ranked + [-1] * 7)[:7]
        assert top[u].tolist() == expected


def test_topk_k_larger_than_catalogue() -> None:
    top = topk_from_scores(np.array([[0.2, 0.3, 0.1]]), None, 10)
    assert top.tolist() == [[1, 0, 2]]


def test_topk_pads_short_rows_and_metrics_ignore_padding() -> None:
    # user 0 has only item 3 left after exclusion; -inf counts as unavailable too
    scores = np.array([[0.4, 0.3, 0.2, 0.1], [0.0, -np.inf, 1.0, 2.0]])
    top = topk_from_scores(scores, Csr.from_lists([[0, 1, 2], []]), 3)
    assert top.tolist() == [[3, -1, -1], [3, 2, 0]]
    out = per_user_metrics(top, Csr.from_lists([[3], [1]]), [3])
    # user 0: one hit at rank 1 out of k = 3 slots: precision 1/3, ndcg 1
    assert out["precision@3"].tolist() == pytest.approx([1 / 3, 0.0])
    assert out["ndcg@3"].tolist() == pytest.approx([1.0, 0.0])
    agg = aggregate_metrics(top, Csr.from_lists([[3], [1]]), [3], np.ones(4), 4)
    assert agg["itemcoverage@3"] == pytest.approx(3 / 4)  # {3, 2, 0}; -1 is not an item
    assert agg["averagepopularity@3"] == pytest.approx((1 / 3 + 1) / 2)


def test_topk_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        topk_from_scores(np.array([[0.1, np.nan]]), None, 1)


def test_popularity_baseline_excludes_seen_items() -> None:
    scores = popularity_scores(np.array([3, 9, 1, 9]))
    assert scores.dtype == np.float64
    top = topk_from_scores(np.broadcast_to(scores, (2, 4)), Csr.from_lists([[1], []]), 2)
    assert top.tolist() == [[3, 0], [1, 3]]
    assert topk_shared(scores, Csr.from_lists([[1], []]), 2).tolist() == [[3, 0], [1, 3]]


@pytest.mark.parametrize("k", [1, 7, 40, 60])
def test_topk_shared_equals_the_broadcast_ranking(k: int) -> None:
    # many ties, -inf entries, rows that exclude almost everything, an empty row
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 6, size=50).astype(np.float64)
    scores[rng.choice(50, 5, replace=False)] = -np.inf
    rows: list[Any] = [rng.choice(50, size=rng.integers(0, 50), replace=False) for _ in range(25)]
    rows.append([])
    exclude = Csr.from_lists(rows)
    expected = topk_from_scores(np.broadcast_to(scores, (len(rows), 50)), exclude, k)
    assert topk_shared(scores, exclude, k).tolist() == expected.tolist()


def test_topk_shared_rejects_bad_scores() -> None:
    with pytest.raises(ValueError, match="NaN"):
        topk_shared(np.array([0.1, np.nan]), Csr.from_lists([[]]), 1)
    with pytest.raises(ValueError, match="1-D"):
        topk_shared(np.zeros((2, 2)), Csr.from_lists([[]]), 1)


# --- groups ---------------------------------------------------------------------------------


def test_grouped_metrics_means_and_counts() -> None:
    per_user = {"hit@1": np.array([1.0, 0.0, 1.0, 1.0]), "ndcg@1": np.array([1.0, 0, 0.5, 0])}
    groups = {"gender": np.array(["M", "F", "M", "F"]), "age": np.array(["a", "a", "a", "b"])}
    out = grouped_metrics(per_user, groups)
    assert list(out["gender"]) == ["F", "M"]
    assert out["gender"]["F"] == {"hit@1": 0.5, "ndcg@1": 0.0, "users": 2}
    assert out["gender"]["M"] == {"hit@1": 1.0, "ndcg@1": 0.75, "users": 2}
    assert out["age"]["a"] == {"hit@1": pytest.approx(2 / 3), "ndcg@1": 0.5, "users": 3}
    assert out["age"]["b"]["users"] == 1


def test_grouped_metrics_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="gender"):
        grouped_metrics({"hit@1": np.zeros(3)}, {"gender": np.array(["M", "F"])})


def test_activity_bands_at_edges() -> None:
    counts = np.array([0, 19, 20, 49, 50, 99, 100, 199, 200, 5000])
    assert activity_bands(counts).tolist() == [
        "<20", "<20", "20-49", "20-49", "50-99", "50-99", "100-199", "100-199", ">=200", ">=200",
    ]  # fmt: skip


def test_age_bands_at_edges() -> None:
    ages = np.array([np.nan, 1, 17.9, 18, 24.9, 25, 34, 35, 44, 45, 54.9, 55, 56, 90])
    assert age_bands(ages).tolist() == [
        "unknown", "<18", "<18", "18-24", "18-24", "25-34", "25-34", "35-44", "35-44",
        "45-54", "45-54", "55+", "55+", "55+",
    ]  # fmt: skip


# --- reference cross-check ------------------------------------------------------------------


def _reference(top: list[int], rel: set[int], k: int) -> dict[str, float]:
    """Straight from the RecBole 1.2.1 definitions, one user at a time."""
    flags = [1 if i in rel else 0 for i in top[:k]]
    n_hit = sum(flags)
    first = next((i for i, f in enumerate(flags) if f), None)
    dcg = sum(f / math.log2(i + 2) for i, f in enumerate(flags))
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), k)))
    return {
        "hit": float(n_hit > 0),
        "mrr": 0.0 if first is None else 1 / (first + 1),
        "recall": n_hit / len(rel),
        "ndcg": dcg / idcg,
        "precision": n_hit / k,
    }


def test_per_user_metrics_match_reference_on_random_data() -> None:
    rng = np.random.default_rng(42)
    n_users, n_items, ks = 200, 50, [1, 5, 10, 20]
    scores = rng.normal(size=(n_users, n_items))
    seen = [rng.choice(n_items, size=rng.integers(0, 45), replace=False) for _ in range(n_users)]
    relevant = []
    for u in range(n_users):
        pool = np.setdiff1d(np.arange(n_items), seen[u])
        relevant.append(
            rng.choice(pool, size=rng.integers(1, min(15, pool.size) + 1), replace=False)
        )
    top = topk_from_scores(scores, Csr.from_lists(seen), 20)
    assert (top == -1).any()  # some users have fewer than 20 candidates
    out = per_user_metrics(top, Csr.from_lists(relevant), ks)
    for u in range(n_users):
        for k in ks:
            expected = _reference(top[u].tolist(), set(relevant[u].tolist()), k)
            for name, value in expected.items():
                assert out[f"{name}@{k}"][u] == pytest.approx(value), (u, name, k)


@pytest.mark.parametrize(("k", "levels"), [(1, 5), (7, 5), (7, 1000), (40, 3), (60, 6)])
def test_the_device_topk_equals_the_numpy_ranking(k: int, levels: int) -> None:
    # ties (few score levels: ties at the cut; many: almost none), -inf, rows that exclude
    # almost everything, an empty exclusion, and item 0 excluded beside the padding's -1
    import torch

    from tailored.train.evaluate import device_topk

    rng = np.random.default_rng(k + levels)
    scores = rng.integers(0, levels, size=(26, 50)).astype(np.float32)
    scores[rng.random((26, 50)) < 0.05] = -np.inf
    rows: list[Any] = [rng.choice(50, size=rng.integers(0, 50), replace=False) for _ in range(24)]
    rows += [[], [0]]
    expected = topk_from_scores(scores, Csr.from_lists(rows), k)
    width = max(len(r) for r in rows)
    padded = torch.tensor([list(r) + [-1] * (width - len(r)) for r in rows], dtype=torch.long)
    got = device_topk(torch.from_numpy(scores.copy()), padded, k)
    assert got.tolist() == expected.tolist()


def test_user_csr_takes_the_users_items_of_the_splits(movielens_dir: Path) -> None:
    # the evaluated users' lists, read from their own events only: the same rows as the
    # per-user lists of every user, in the users' order, repeats and empty rows included
    data = load_interactions(movielens_dir, PositiveRule.weighted({"rating": 1.0}))
    users = np.r_[np.random.default_rng(0).choice(data.n_users, 50, replace=False), 7, 7]
    for splits in [(TRAIN,), (TRAIN, VALID), (TEST,)]:
        lists = data.per_user(splits)
        got = user_csr(data, splits, users)
        want = Csr.from_lists([lists[u] - 1 for u in users])
        np.testing.assert_array_equal(got.indptr, want.indptr)
        np.testing.assert_array_equal(got.indices, want.indices)
    assert user_csr(data, (TEST,), np.zeros(0, np.int64)).n_rows == 0
    stacked = Csr.stacked(
        [user_csr(data, (TRAIN,), users[:20]), user_csr(data, (TRAIN,), users[20:])]
    )
    np.testing.assert_array_equal(stacked.indices, user_csr(data, (TRAIN,), users).indices)
    np.testing.assert_array_equal(stacked.indptr, user_csr(data, (TRAIN,), users).indptr)
