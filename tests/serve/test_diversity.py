"""Diversity on hand-made candidates: what MMR and the category cap keep, and in what order."""

from __future__ import annotations

import numpy as np

from tailored.serve.diversity import category_cap, mmr


def _unit(*rows: list[float]) -> np.ndarray:
    a = np.asarray(rows, np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_mmr_trades_a_near_duplicate_for_a_different_item() -> None:
    # 0 and 1 point the same way; 2 is orthogonal and scores a little lower
    emb = _unit([1, 0], [1, 0.01], [0, 1])
    scores = np.array([1.0, 0.95, 0.9])
    assert mmr(scores, emb, 2, lam=1.0).tolist() == [0, 1]  # relevance only
    # lam 0.5: after 0, item 1 gains 0.5*0.5 - 0.5*1.0 < 0; item 2 gains 0 - 0 = 0
    assert mmr(scores, emb, 2, lam=0.5).tolist() == [0, 2]
    assert mmr(scores, emb, 3, lam=0.5).tolist() == [0, 2, 1]
    assert mmr(scores, emb, 10, lam=0.5).shape == (3,)  # k above the candidates
    assert mmr(scores[:0], emb[:0], 5, lam=0.5).shape == (0,)


def test_category_cap_keeps_at_most_cap_per_value_then_fills() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    cats = np.array([1, 1, 1, 2, 0])  # 0: no category, never capped
    assert category_cap(scores, cats, 3, cap=1).tolist() == [0, 3, 4]
    assert category_cap(scores, cats, 4, cap=2).tolist() == [0, 1, 3, 4]
    # too few left under the cap: the best of the rest fill the page
    assert category_cap(scores, cats, 5, cap=1).tolist() == [0, 3, 4, 1, 2]


def test_mmr_matches_the_definition_on_random_candidates() -> None:
    """Against a direct reading of the definition (all pairwise cosines, argmax per step)."""
    rng = np.random.default_rng(3)
    for trial in range(20):
        c, k, lam = int(rng.integers(1, 60)), int(rng.integers(1, 15)), float(rng.uniform(0, 1))
        emb = rng.normal(size=(c, 8)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        scores = rng.normal(size=c).astype(np.float32)
        span = scores.max() - scores.min()
        rel = (scores - scores.min()) / span if span > 0 else np.ones(c)
        sims = emb.astype(np.float64) @ emb.T.astype(np.float64)
        want: list[int] = []
        for _ in range(min(k, c)):
            red = sims[:, want].max(1) if want else np.zeros(c)
            gain = lam * rel - (1 - lam) * red
            gain[want] = -np.inf
            want.append(int(np.argmax(gain)))
        assert mmr(scores, emb, k, lam).tolist() == want, trial
