"""Does MovieLens-100k hold a signal its ranker lacks? Three checks of the data alone, for
issue 20 (two-stage NDCG@10 0.23), before any of them is built into the ranker.

Split (a) (RecBole's per-user 80/10/10 by time). Each user's request is made when their test
period begins; their training and validation items are excluded and their test items are
relevant, as in every MovieLens figure of the project. Each score ranks every item alone:

- **pages**: 51% of a user's consecutive ratings share their second (a page of ratings
  submitted at once). Items scored by how often they shared a page with the user's last 5
  items, in other users' training and validation events, against the same count over whole
  users (the ranker's ``cooc_recent`` family counts users), raw and cosine-normalised.
- **release years**: consecutive ratings are of movies of close release years. Items scored
  by log popularity minus their year's distance to the user's last 5 items' (nearest, or
  their median) over a scale of 1-10 years, against log popularity alone.
- **the user's own ratings**: the user co-occurrence with the last 5 items, each weighted by
  the user's rating of it (1-5), or only those rated 4 or more, against unweighted.

    python -m benchmarks.explorations.movielens_signals [--dataset DIR]

JSON to ``benchmarks/results/movielens_signals.json`` (atomically).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.explorations._movielens import ndcg_at_10, requests, split_a_events
from tailored.data.movielens import fetch_movielens_100k
from tailored.paths import write_json_atomic

__all__ = ["cooccurrence", "main"]

OUT = RESULTS / "movielens_signals.json"
LAST = 5  # the user's last items each score starts from
MINUTE = 60


def cooccurrence(group: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """How many groups (pages, users) hold each pair of items, float64 [N, N], 0 diagonal."""
    g = np.unique(group, return_inverse=True)[1]
    m = sp.csr_matrix((np.ones(len(g)), (g, item)), shape=(int(g.max()) + 1, n_items))
    m.data[:] = 1.0  # an item twice in a group counts once
    c = (m.T @ m).toarray()
    np.fill_diagonal(c, 0.0)
    return c


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, help="a converted MovieLens-100k (default: fetch)")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    dataset = a.dataset or fetch_movielens_100k()
    user, item, ts, split = split_a_events(dataset)
    events = pq.read_table(dataset / "events.parquet", columns=["item_id", "value"])
    rating = events["value"].to_numpy()
    # items numbered as split_a_events numbers them: their ids' sorted order
    ids = np.unique(events["item_id"].to_numpy(zero_copy_only=False))
    table = pq.read_table(dataset / "items.parquet", columns=["item_id", "year"])
    year_of = dict(zip(table["item_id"].to_pylist(), table["year"].to_pylist(), strict=True))
    years = np.array([year_of.get(i) for i in ids], dtype=float)
    years = np.where(np.isnan(years), np.nanmedian(years), years)
    n_items = len(ids)
    known = split < 2  # training and validation: what the request may read
    users, exclude, relevant = requests(user, item, split)
    last, last_rating = [], []
    for u in users:
        rows = np.flatnonzero((user == u) & known)
        rows = rows[np.argsort(ts[rows], kind="stable")][-LAST:]
        last.append(item[rows])
        last_rating.append(rating[rows])

    def ndcg(scores: np.ndarray) -> float:
        return round(ndcg_at_10(scores, exclude, relevant), 4)

    def from_last(c: np.ndarray, weight: Any = None) -> np.ndarray:
        pairs = zip(last, last_rating, strict=True)
        w = [np.ones(len(x)) if weight is None else weight(r) for x, r in pairs]
        return np.stack([(wi[:, None] * c[x]).sum(0) for x, wi in zip(last, w, strict=True)])

    order = np.lexsort((ts, user))
    u_s, t_s = user[order], ts[order]
    same_user = u_s[1:] == u_s[:-1]
    gaps = (t_s[1:] - t_s[:-1])[same_user]
    pop = np.bincount(item[known], minlength=n_items) + 1.0
    cosine = np.sqrt(pop[:, None] * pop[None, :])
    page = user[known].astype(np.int64) * 10**10 + ts[known]
    n_pages = len(np.unique(page))
    pages = cooccurrence(page, item[known], n_items)
    users_c = cooccurrence(user[known], item[known], n_items)
    users_cos = users_c / cosine
    unweighted = ndcg(from_last(users_cos))
    near = np.stack([np.abs(years[None, :] - years[x][:, None]).min(0) for x in last])
    median = np.stack([np.abs(years - np.median(years[x])) for x in last])
    results: dict[str, dict[str, float]] = {
        "popularity": {"log popularity": ndcg(np.tile(np.log(pop), (len(users), 1)))},
        "pages": {
            "page co-occurrence, raw": ndcg(from_last(pages)),
            "page co-occurrence, cosine": ndcg(from_last(pages / cosine)),
            "user co-occurrence, raw": ndcg(from_last(users_c)),
            "user co-occurrence, cosine": unweighted,
        },
        "release years": {},
        "own ratings": {
            "unweighted": unweighted,
            "weighted by the rating": ndcg(from_last(users_cos, lambda r: r)),
            "rated 4 or more (others 0.2)": ndcg(from_last(users_cos, lambda r: (r >= 4) + 0.2)),
        },
    }
    for scale in (1, 2, 5, 10):
        results["release years"] |= {
            f"nearest of the last {LAST}, scale {scale} years": ndcg(np.log(pop) - near / scale),
            f"their median, scale {scale} years": ndcg(np.log(pop) - median / scale),
        }
    # consecutive ratings of a user within a minute: release-year rank distance
    close = same_user & (t_s[1:] - t_s[:-1] <= MINUTE)
    i_s = item[order]
    rank = np.argsort(np.argsort(years + np.random.default_rng(0).random(n_items) * 1e-3))
    prev, nxt = rank[i_s[:-1][close]], i_s[1:][close]
    shuffled = np.random.default_rng(0).permutation(nxt)
    result: dict[str, Any] = {
        "benchmark": "movielens_signals",
        "machine": machine(),
        "users": len(users),
        "consecutive_ratings": {
            "share_same_second": round(float(np.mean(gaps == 0)), 3),
            "share_within_a_minute": round(float(np.mean(gaps <= MINUTE)), 3),
            "pages": n_pages,
            "mean_page_size": round(float(known.sum() / n_pages), 2),
            "year_rank_distance_median": float(np.median(np.abs(prev - rank[nxt]))),
            "year_rank_distance_median_shuffled": float(np.median(np.abs(prev - rank[shuffled]))),
        },
        "test_ndcg@10": results,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out, result)
    for k, v in result["consecutive_ratings"].items():
        print(f"{k:40s} {v}")
    for group, scores in results.items():
        for name, v in scores.items():
            print(f"{group:14s} {name:44s} test NDCG@10 {v:.4f}")
    return result


if __name__ == "__main__":
    main()
