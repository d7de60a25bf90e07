"""Seeded clustered vectors with exact ground truth, for index tests and benchmarks.

Like FAISS's ``contrib.datasets.SyntheticDataset`` but clustered, as item embeddings are:
``n_clusters`` unit centres in ``d`` dimensions, each item a centre plus Gaussian noise of
per-dimension standard deviation ``spread / sqrt(d)`` (so the noise vector's length is about
``spread``), normalized to unit length. Queries come from the same mixture with their own
random stream, so they are held out. Ids are shuffled, non-contiguous int64 values far from
row numbers, so an index that confused rows with ids fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ClusteredCatalog", "clustered_catalog", "exact_top_k"]


@dataclass(frozen=True)
class ClusteredCatalog:
    """vectors float32 ``[N, d]`` (unit rows), ids int64 ``[N]``, queries float32 ``[B, d]``."""

    vectors: np.ndarray
    ids: np.ndarray
    queries: np.ndarray


def clustered_catalog(
    n_items: int,
    dim: int,
    n_queries: int,
    *,
    n_clusters: int = 100,
    spread: float = 0.6,
    seed: int = 0,
) -> ClusteredCatalog:
    """A catalog of ``n_items`` clustered unit vectors and ``n_queries`` held-out queries."""
    rng = np.random.default_rng([seed, 0])
    centres = _unit(rng.standard_normal((n_clusters, dim)))
    # ids: 10**12 + a cumulative sum of random gaps (1..997), then shuffled
    ids = (10**12 + np.cumsum(rng.integers(1, 998, size=n_items))).astype(np.int64)
    rng.shuffle(ids)
    vectors = _sample(np.random.default_rng([seed, 1]), centres, n_items, spread)
    queries = _sample(np.random.default_rng([seed, 2]), centres, n_queries, spread)
    return ClusteredCatalog(vectors, ids, queries)


def _sample(rng: np.random.Generator, centres: np.ndarray, n: int, spread: float) -> np.ndarray:
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    step = 1 << 16  # in chunks: 1M x 64 float64 temporaries would be 0.5 GiB each
    for start in range(0, n, step):
        rows = min(step, n - start)
        which = rng.integers(0, centres.shape[0], size=rows)
        noise = rng.standard_normal((rows, centres.shape[1])) * (spread / np.sqrt(out.shape[1]))
        out[start : start + rows] = _unit(centres[which] + noise)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top_k(
    queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth by brute force in float64: (scores float64 ``[B, min(k, N)]``, ids int64
    ``[B, min(k, N)]``), best first, ties broken by row. For small catalogs (tests)."""
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]
