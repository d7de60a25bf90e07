"""Segments: FAISS k-means over user embeddings finds planted groups, the quality measure
peaks at the planted k, and each segment's description names what its members planted."""

from __future__ import annotations

import numpy as np
import pytest

from tailored.retrieval.segments import describe_segments, fit_segments, k_quality

GENRES = ["Action", "Comedy", "Drama", "Horror"]


def _planted(users: int = 1200, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Users around 4 directions (one per genre): embeddings and their planted group."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, d))
    group = rng.integers(0, 4, users)
    return centres[group] + 0.35 * rng.standard_normal((users, d)), group


def test_kmeans_recovers_planted_groups_and_quality_peaks_at_their_number() -> None:
    emb, group = _planted()
    seg = fit_segments(emb, 4, seed=1)
    assert seg.k == 4 and seg.labels.shape == group.shape
    # each planted group lands (almost) whole in one segment, a different one each
    majority = [np.bincount(seg.labels[group == g], minlength=4).argmax() for g in range(4)]
    assert len(set(majority)) == 4
    agree = np.mean([seg.labels[i] == majority[group[i]] for i in range(len(group))])
    assert agree > 0.97
    assert np.array_equal(seg.assign(emb), seg.labels)
    quality = {q["k"]: q for q in k_quality(emb, [2, 4, 8], seed=1, sample=800)}
    assert quality[4]["silhouette"] > quality[2]["silhouette"]
    assert quality[4]["silhouette"] > quality[8]["silhouette"]
    assert quality[8]["objective_per_user"] < quality[2]["objective_per_user"]


def test_a_segment_is_described_by_what_its_members_did_and_who_they_are() -> None:
    emb, group = _planted()
    seg = fit_segments(emb, 4, seed=1)
    rng = np.random.default_rng(2)
    n_items = 40  # items 0-9 Action, 10-19 Comedy, ...
    genre_of = [[GENRES[i // 10]] for i in range(n_items)]
    per_user = rng.integers(3, 12, len(group))
    items = np.concatenate(
        [
            np.where(rng.random(n) < 0.8, 10 * g + rng.integers(0, 10, n), rng.integers(0, 40, n))
            for g, n in zip(group, per_user, strict=True)
        ]
    )
    offsets = np.r_[0, np.cumsum(per_user)]
    ages = np.where(group == 3, "18-24", rng.choice(["25-34", "35-44", ""], len(group)))
    vocab = ["18-24", "25-34", "35-44"]  # profile codes: 0 unknown, c is vocab[c - 1]
    codes = np.array([vocab.index(a) + 1 if a else 0 for a in ages])
    out = describe_segments(
        seg.labels,
        user_items=(offsets, items),
        item_values={"genre": genre_of},
        item_names=[f"item {i}" for i in range(n_items)],
        user_values={"age": (codes, vocab)},
    )
    assert [s["segment"] for s in out] == [0, 1, 2, 3]
    assert sum(s["users"] for s in out) == len(group)
    for s in out:
        planted = np.bincount(group[seg.labels == s["segment"]], minlength=4).argmax()
        top = s["over_indexing"]["genre"][0]
        assert top["value"] == GENRES[planted] and top["lift"] > 2.5
        assert all(int(i["item"].split()[1]) // 10 == planted for i in s["items"])
        assert GENRES[planted] in s["summary"] and s["summary"].startswith(
            f"Segment {s['segment']} ("
        )
        if planted == 3:
            assert s["profile"]["age"][0]["value"] == "18-24"
            assert "age 18-24" in s["summary"]


def test_a_bad_k_is_refused() -> None:
    emb, _ = _planted(users=50)
    with pytest.raises(ValueError, match="k must be in"):
        fit_segments(emb, 1)
    with pytest.raises(ValueError, match="k must be in"):
        fit_segments(emb, 51)


def test_the_silhouette_matches_scikit_learns() -> None:
    from sklearn.metrics import silhouette_score

    from tailored.retrieval.segments import _silhouette, _unit

    emb, _ = _planted(users=600, seed=4)
    seg = fit_segments(emb, 5, seed=2)
    x = _unit(emb)
    ours = _silhouette(np.clip(1.0 - x @ x.T, 0.0, 2.0), seg.labels, 5)
    assert ours == pytest.approx(silhouette_score(x, seg.labels, metric="cosine"), abs=1e-4)


def test_a_segment_is_labelled_by_its_strongest_values() -> None:
    from tailored.retrieval.segments import _label

    seg = {
        "segment": 2,
        "over_indexing": {
            "genre": [{"value": "Horror", "lift": 2.1}, {"value": "Action", "lift": 1.4}],
            "decade": [{"value": "1970s", "lift": 1.8}],
        },
        "profile": {"age": [{"value": "18-24", "lift": 3.0}]},
    }
    assert _label(seg) == "Horror and 1970s"
    assert _label({**seg, "over_indexing": {}}) == "age 18-24"
    assert _label({**seg, "over_indexing": {}, "profile": {}}) == "segment 2"
