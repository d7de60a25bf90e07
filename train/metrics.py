"""Offline full-ranking metrics with RecBole 1.2.1's definitions (numpy only).

Every user is scored against the whole catalogue, the items seen in training are excluded,
and the top-k list is compared with the user's held-out (relevant) items:

* :func:`topk_from_scores` — [U, N] scores to [U, k] item indices, -1 padding rows that have
  fewer than k candidates;
* :func:`per_user_metrics` — hit, MRR, recall, NDCG and precision per user and cut-off;
* :func:`aggregate_metrics` — their means plus item coverage and average popularity;
* :func:`grouped_metrics` — means per group (gender, :func:`age_bands`,
  :func:`activity_bands`), to see who the model serves well;
* :func:`popularity_scores` — the most-popular baseline, ranked by the same code;
  :func:`topk_shared` ranks one score vector for many users without the [U, N] matrix.

A -1 in a top-k list is an empty slot: it is never relevant, adds no popularity and is not an
item for coverage, while precision and average popularity still divide by k (a short list is
penalised, not rescaled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Csr",
    "activity_bands",
    "age_bands",
    "aggregate_metrics",
    "grouped_metrics",
    "per_user_metrics",
    "popularity_scores",
    "topk_from_scores",
    "topk_shared",
]

_RANK_METRICS = ("hit", "mrr", "recall", "ndcg", "precision")

# Rows of scores copied and ranked at a time: bounds the temporary arrays to ~4M elements.
_BLOCK_ELEMENTS = 1 << 22


@dataclass(frozen=True, eq=False)
class Csr:
    """Ragged rows of item indices in compressed sparse row form.

    ``indptr``: int64 [U+1], starts at 0, non-decreasing; ``indices``: int64 [nnz]. Row ``u``
    is ``indices[indptr[u]:indptr[u+1]]``, in the order given. Used for each user's relevant
    (held-out) items and for the items excluded from ranking (seen in training).
    """

    indptr: np.ndarray
    indices: np.ndarray

    def __post_init__(self) -> None:
        indptr = np.asarray(self.indptr, dtype=np.int64)
        indices = np.asarray(self.indices, dtype=np.int64)
        if indptr.ndim != 1 or indices.ndim != 1 or indptr.size == 0:
            raise ValueError("Csr: indptr must be 1-D of length U+1 and indices 1-D")
        if indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
            raise ValueError(
                f"Csr: indptr must start at 0, be non-decreasing and end at len(indices)="
                f"{indices.size}; got start {indptr[0]}, end {indptr[-1]}"
            )
        object.__setattr__(self, "indptr", indptr)
        object.__setattr__(self, "indices", indices)

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int] | np.ndarray]) -> Csr:
        """Build from one array-like of item indices per row (kept in the order given)."""
        arrays = [np.asarray(r, dtype=np.int64).reshape(-1) for r in rows]
        indptr = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([a.size for a in arrays], out=indptr[1:])
        indices = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        return cls(indptr, indices)

    @classmethod
    def stacked(cls, parts: Sequence[Csr]) -> Csr:
        """The rows of ``parts``, one after the other."""
        ends = np.cumsum([0, *(p.indices.size for p in parts)])
        indptr = np.concatenate(
            [[0], *(p.indptr[1:] + e for p, e in zip(parts, ends, strict=False))]
        )
        indices = np.concatenate([p.indices for p in parts]) if parts else np.zeros(0, np.int64)
        return cls(indptr, indices)

    @property
    def n_rows(self) -> int:
        """Number of rows U."""
        return int(self.indptr.size - 1)

    def row(self, u: int) -> np.ndarray:
        """Row ``u``'s item indices: int64 [length of row u] (a view)."""
        return self.indices[self.indptr[u] : self.indptr[u + 1]]

    def lengths(self) -> np.ndarray:
        """Number of items in each row: int64 [U]."""
        return np.diff(self.indptr)


def topk_from_scores(scores: np.ndarray, exclude: Csr | None, k: int) -> np.ndarray:
    """Indices of each row's k highest-scoring items: int64 [U, min(k, N)].

    ``scores``: float [U, N] (not modified); ``exclude``: U rows of item indices in [0, N)
    that must not be returned (e.g. training items), or None. Order is by descending score,
    ties by lower item index. Excluded items, and items scored -inf, are unavailable: a row
    with fewer than k available items is padded at the end with -1. NaN scores raise
    ValueError.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [U, N], got shape {scores.shape}")
    n_users, n_items = scores.shape
    if exclude is not None:
        _check_exclude(exclude, n_users, n_items)
    k = min(k, n_items)
    out = np.full((n_users, k), -1, dtype=np.int64)
    if k == 0:
        return out
    dtype = scores.dtype if np.issubdtype(scores.dtype, np.floating) else np.float64
    step = max(1, _BLOCK_ELEMENTS // n_items)
    for lo in range(0, n_users, step):
        hi = min(lo + step, n_users)
        block = np.array(scores[lo:hi], dtype=dtype, copy=True)
        if np.isnan(block).any():
            raise ValueError(f"scores contain NaN in rows {lo}..{hi - 1}")
        if exclude is not None:
            cols = exclude.indices[exclude.indptr[lo] : exclude.indptr[hi]]
            block[np.repeat(np.arange(hi - lo), exclude.lengths()[lo:hi]), cols] = -np.inf
        out[lo:hi] = _topk_block(block, k)
    return out


def _check_exclude(exclude: Csr, n_users: int, n_items: int) -> None:
    if exclude.n_rows != n_users:
        raise ValueError(f"exclude has {exclude.n_rows} rows, scores have {n_users}")
    idx = exclude.indices
    if idx.size and (idx.min() < 0 or idx.max() >= n_items):
        raise ValueError(f"exclude holds item indices outside [0, {n_items})")


def _topk_block(block: np.ndarray, k: int) -> np.ndarray:
    """Top-k of a [B, N] float block with ties by lower index; -inf entries become -1."""
    b, n = block.shape
    # one partition per row finds the k-th largest value; the candidates are everything at or
    # above it (k of them unless there are ties at the cut), sorted by (-score, index) per row
    kth = np.partition(block, n - k, axis=1)[:, n - k, None]
    rows, cols = np.nonzero(block >= kth)
    values = block[rows, cols]
    order = np.lexsort((cols, -values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    counts = np.bincount(rows, minlength=b)
    starts = np.cumsum(counts) - counts
    keep = np.arange(len(rows)) - np.repeat(starts, counts) < k
    items = cols[keep].reshape(b, k).astype(np.int64)
    items[values[keep].reshape(b, k) == -np.inf] = -1
    return items


def topk_shared(scores: np.ndarray, exclude: Csr, k: int) -> np.ndarray:
    """:func:`topk_from_scores` of one score vector that every row shares (the popularity
    baseline), each row with its own exclusions: int64 [U, min(k, N)], the same result as
    ``topk_from_scores(np.broadcast_to(scores, (U, N)), exclude, k)`` without the [U, N]
    work. ``scores``: float [N]."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = np.asarray(scores, dtype=np.float64)  # as topk_from_scores ranks integers
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D [N], got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    n = scores.size
    _check_exclude(exclude, exclude.n_rows, n)
    k = min(k, n)
    out = np.full((exclude.n_rows, k), -1, dtype=np.int64)
    if k == 0:
        return out
    order = np.argsort(-scores, kind="stable")  # descending; ties keep the lower index first
    order = order[scores[order] > -np.inf]
    lengths = exclude.lengths()
    prefix = order[: k + (int(lengths.max()) if lengths.size else 0)]  # enough for any row
    rank = np.full(n, len(prefix), dtype=np.int64)
    rank[prefix] = np.arange(len(prefix))
    for u in range(exclude.n_rows):
        hidden = rank[exclude.indices[exclude.indptr[u] : exclude.indptr[u + 1]]]
        free = np.ones(len(prefix) + 1, dtype=bool)
        free[hidden] = False
        picks = prefix[free[:-1]][:k]
        out[u, : len(picks)] = picks
    return out


def _hit_matrix(topk: np.ndarray, relevant: Csr) -> tuple[np.ndarray, np.ndarray]:
    """bool [U, K]: topk[u, j] is one of row u's relevant items (-1 never is); and int64 [U]:
    the number of distinct relevant items per row."""
    n_users = topk.shape[0]
    rows = np.repeat(np.arange(n_users, dtype=np.int64), relevant.lengths())
    width = int(max(topk.max(initial=0), relevant.indices.max(initial=0))) + 1
    # One sorted key per (user, item) pair turns the per-row membership test into a single
    # searchsorted over nnz keys: O(U K log nnz), no [U, N] matrix. Repeated items are
    # dropped, as in RecBole's 0/1 positive matrix (sort + mask: np.unique is ~50x slower).
    rel_keys = np.sort(rows * width + relevant.indices)
    rel_keys = rel_keys[np.r_[True, rel_keys[1:] != rel_keys[:-1]]]
    n_rel = np.bincount(rel_keys // width, minlength=n_users)
    top_keys = np.arange(n_users, dtype=np.int64)[:, None] * width + topk
    pos = np.minimum(np.searchsorted(rel_keys, top_keys), rel_keys.size - 1)
    return (rel_keys[pos] == top_keys) & (topk >= 0), n_rel


def _check_topk(topk: np.ndarray, relevant: Csr, ks: Sequence[int]) -> None:
    if topk.ndim != 2 or not np.issubdtype(topk.dtype, np.integer):
        raise ValueError(f"topk must be an integer [U, K] array, got {topk.dtype} {topk.shape}")
    if relevant.n_rows != topk.shape[0]:
        raise ValueError(f"relevant has {relevant.n_rows} rows, topk has {topk.shape[0]}")
    if topk.size and topk.min() < -1:
        raise ValueError("topk holds negative item indices other than the -1 padding")
    if relevant.indices.size and relevant.indices.min() < 0:
        raise ValueError("relevant holds negative item indices")
    bad = [k for k in ks if not 1 <= k <= topk.shape[1]]
    if bad:
        raise ValueError(f"cut-offs {bad} outside [1, K={topk.shape[1]}]")


def per_user_metrics(topk: np.ndarray, relevant: Csr, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user metrics at each cut-off k: float64 [U] under ``"<metric>@<k>"``.

    ``topk``: int [U, K] distinct item indices, best first, -1 for empty slots; ``relevant``:
    U rows of relevant item indices, none empty (drop users without held-out items first, as
    RecBole does; an empty row raises ValueError), a repeated item counting once; ``ks``:
    cut-offs with 1 <= k <= K. With rel_i = 1 if the i-th item is relevant else 0 and R the
    user's set of relevant items (RecBole 1.2.1):

    * hit@k = 1 if sum_{i<=k} rel_i > 0 else 0
    * mrr@k = 1 / (rank of the first relevant item) if it is within the top k, else 0
    * precision@k = sum_{i<=k} rel_i / k
    * recall@k = sum_{i<=k} rel_i / |R|   (|R|, not min(k, |R|))
    * ndcg@k = DCG / IDCG, DCG = sum_{i<=k} rel_i / log2(i + 1),
      IDCG = sum_{i<=min(|R|, k)} 1 / log2(i + 1)
    """
    _check_topk(topk, relevant, ks)
    empty = relevant.lengths() == 0
    if np.any(empty):
        raise ValueError(
            f"relevant row {int(np.argmax(empty))} is empty: exclude users without "
            "relevant items before evaluating"
        )
    if topk.shape[0] == 0:
        return {f"{m}@{k}": np.zeros(0) for k in ks for m in _RANK_METRICS}
    hits, n_rel = _hit_matrix(topk, relevant)
    discount = 1.0 / np.log2(np.arange(2, topk.shape[1] + 2))  # 1 / log2(i + 1), i = 1..K
    ideal = np.cumsum(discount)  # ideal[j - 1] = IDCG with j relevant items
    first = np.argmax(hits, axis=1)  # 0-based position of the first hit (0 if none)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        top = hits[:, :k]
        n_hit = top.sum(axis=1).astype(np.float64)
        found = n_hit > 0
        out[f"hit@{k}"] = found.astype(np.float64)
        out[f"mrr@{k}"] = np.where(found, 1.0 / (first + 1), 0.0)
        out[f"recall@{k}"] = n_hit / n_rel
        out[f"ndcg@{k}"] = (top @ discount[:k]) / ideal[np.minimum(n_rel, k) - 1]
        out[f"precision@{k}"] = n_hit / k
    return out


def aggregate_metrics(
    topk: np.ndarray,
    relevant: Csr,
    ks: Sequence[int],
    item_popularity: np.ndarray,
    n_items: int,
) -> dict[str, float]:
    """Means over users of :func:`per_user_metrics`, plus catalogue-level metrics.

    ``item_popularity``: int or float [N], each item's number of training interactions;
    ``n_items``: catalogue size for coverage. Adds, for each k (RecBole 1.2.1):

    * itemcoverage@k = |union over users of their top-k items| / n_items
    * averagepopularity@k = mean over users of (1/k) * sum_{i<=k} popularity(item_i)

    -1 slots count as no item and popularity 0. Raises ValueError with no users.
    """
    if topk.shape[0] == 0:
        raise ValueError("no users to evaluate")
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    per_user = per_user_metrics(topk, relevant, ks)
    popularity = np.asarray(item_popularity, dtype=np.float64)
    if topk.max() >= popularity.size:
        raise ValueError(f"topk holds item {topk.max()} but item_popularity has {popularity.size}")
    out = {name: float(values.mean()) for name, values in per_user.items()}
    top_pop = np.where(topk >= 0, popularity[np.maximum(topk, 0)], 0.0)
    for k in ks:
        seen = topk[:, :k]
        out[f"itemcoverage@{k}"] = np.count_nonzero(np.bincount(seen[seen >= 0])) / n_items
        out[f"averagepopularity@{k}"] = float(top_pop[:, :k].sum(axis=1).mean() / k)
    return out


def grouped_metrics(
    per_user: dict[str, np.ndarray], groups: dict[str, np.ndarray]
) -> dict[str, dict[str, dict[str, float]]]:
    """Mean of each per-user metric within each group of users.

    ``per_user``: metric name -> float [U] (from :func:`per_user_metrics`); ``groups``:
    grouping name (e.g. "gender", "age", "activity") -> labels [U] of any dtype. Returns
    grouping -> label (as str, sorted) -> {metric: mean, "users": number of users}.
    """
    sizes = {v.shape[0] for v in per_user.values()}
    if len(sizes) > 1:
        raise ValueError(f"per_user metrics have different lengths {sorted(sizes)}")
    n_users = sizes.pop() if sizes else None
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, labels in groups.items():
        labels = np.asarray(labels)
        if n_users is not None and labels.shape != (n_users,):
            raise ValueError(f"group {name!r} has shape {labels.shape}, expected ({n_users},)")
        keys, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        means = {
            m: np.bincount(inverse, weights=v, minlength=keys.size) / counts
            for m, v in per_user.items()
        }
        out[name] = {
            str(key): {**{m: float(means[m][i]) for m in per_user}, "users": int(counts[i])}
            for i, key in enumerate(keys)
        }
    return out


# Bands of training interactions per user. MovieLens-100k keeps only users with >= 20 ratings
# (median about 65, a long tail to about 700), so doubling edges from 20 separate light from
# heavy users while keeping each of its 943 users' bands large enough for a readable mean.
# "<20" still fills: an 80/10/10 split leaves a 20-rating user 16 training interactions, and
# other data sets have no floor.
_ACTIVITY_EDGES = np.array([20, 50, 100, 200])
_ACTIVITY_LABELS = np.array(["<20", "20-49", "50-99", "100-199", ">=200"])


def activity_bands(n_train_interactions: np.ndarray) -> np.ndarray:
    """Activity band of each user: str [U], one of "<20", "20-49", "50-99", "100-199",
    ">=200" training interactions. Negative counts raise ValueError."""
    counts = np.asarray(n_train_interactions)
    if counts.size and counts.min() < 0:
        raise ValueError("n_train_interactions must be >= 0")
    return _ACTIVITY_LABELS[np.searchsorted(_ACTIVITY_EDGES, counts, side="right")]


_AGE_EDGES = np.array([18.0, 25.0, 35.0, 45.0, 55.0])
_AGE_LABELS = np.array(["<18", "18-24", "25-34", "35-44", "45-54", "55+", "unknown"])


def age_bands(ages: np.ndarray) -> np.ndarray:
    """Age band of each user: str [U], one of "<18", "18-24", "25-34", "35-44", "45-54",
    "55+", or "unknown" where ``ages`` (float [U], years) is NaN."""
    ages = np.asarray(ages, dtype=np.float64)
    band = np.searchsorted(_AGE_EDGES, ages, side="right")
    return _AGE_LABELS[np.where(np.isnan(ages), _AGE_LABELS.size - 1, band)]


def popularity_scores(item_popularity: np.ndarray) -> np.ndarray:
    """The most-popular baseline's score of each item: float64 [N], its training count.

    Every user gets the same scores; rank them with the users' training items excluded,
    exactly like the model: ``topk_shared(s, seen, k)``, which equals
    ``topk_from_scores(np.broadcast_to(s, (U, N)), seen, k)``.
    """
    popularity = np.asarray(item_popularity, dtype=np.float64)
    if popularity.ndim != 1 or (popularity.size and popularity.min() < 0):
        raise ValueError("item_popularity must be a 1-D array of counts >= 0")
    return popularity.copy()
