"""Is an item's recent popularity worth a ranker feature on MovieLens-100k? An exploration
for issue 3 (the re-ranker's gain over retrieval), before building such a feature into
training and serving.

Split (a) (RecBole's per-user 80/10/10 by time). Each user's request is made when their test
period begins (time t); items they already rated are excluded, and their test items are
relevant. Items are ranked by their events from other users in the W seconds before t (ties
broken by training popularity), for several W, beside the training split's popularity and
all events before t. Nothing after t is used.

    python -m benchmarks.ml100k_recent_popularity [--dataset DIR]

JSON to ``benchmarks/results/ml100k_recent_popularity.json`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from benchmarks._machine import machine
from tailored.data.movielens import fetch_movielens_100k
from tailored.data.splits import user_temporal_split

__all__ = ["main"]

OUT = Path(__file__).parent / "results" / "ml100k_recent_popularity.json"
DAY = 86_400
WINDOWS = {"1 day": DAY, "3 days": 3 * DAY, "7 days": 7 * DAY, "30 days": 30 * DAY}


def _ndcg_at_10(scores: np.ndarray, relevant: np.ndarray, excluded: np.ndarray) -> float:
    s = scores.copy()
    s[excluded] = -np.inf
    top = np.argpartition(-s, 10)[:10]
    top = top[np.argsort(-s[top], kind="stable")]
    gains = np.isin(top, relevant) / np.log2(np.arange(2, 12))
    ideal = (1 / np.log2(np.arange(2, 2 + min(10, len(relevant))))).sum()
    return float(gains.sum() / ideal)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, help="a converted MovieLens-100k (default: fetch)")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    dataset = a.dataset or fetch_movielens_100k()
    t = pq.read_table(dataset / "events.parquet", columns=["user_id", "item_id", "timestamp"])
    user = np.unique(t["user_id"].to_numpy(zero_copy_only=False), return_inverse=True)[1]
    item = np.unique(t["item_id"].to_numpy(zero_copy_only=False), return_inverse=True)[1]
    ts = t["timestamp"].cast("int64").to_numpy()
    split = user_temporal_split(user, ts)
    test = split == 2
    n_items = int(item.max()) + 1
    order = np.argsort(ts, kind="stable")
    ts_s, item_s, user_s = ts[order], item[order], user[order]
    train_pop = np.bincount(item[split == 0], minlength=n_items).astype(float)
    tie = 1e-3 * train_pop / train_pop.max()  # below one event: breaks ties only
    scores: dict[str, list[float]] = {"training popularity": [], "all events before t": []}
    scores |= {f"events in the {w} before t": [] for w in WINDOWS}
    for u in np.unique(user[test]):
        mine = user == u
        t0 = ts[mine & test].min()
        relevant = np.unique(item[mine & test])
        excluded = np.unique(item[mine & ~test])
        scores["training popularity"].append(_ndcg_at_10(train_pop, relevant, excluded))
        hi = int(np.searchsorted(ts_s, t0, "left"))
        for name, w in [("all events before t", None), *WINDOWS.items()]:
            lo = 0 if w is None else int(np.searchsorted(ts_s, t0 - w, "left"))
            other = user_s[lo:hi] != u
            counts = np.bincount(item_s[lo:hi][other], minlength=n_items) + tie
            key = name if w is None else f"events in the {name} before t"
            scores[key].append(_ndcg_at_10(counts, relevant, excluded))
    ndcg = {k: round(float(np.mean(v)), 4) for k, v in scores.items()}
    result: dict[str, Any] = {
        "benchmark": "ml100k_recent_popularity",
        "machine": machine(),
        "users": len(scores["training popularity"]),
        "test_ndcg@10": ndcg,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_name(f".{a.out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, a.out)
    for k, v in ndcg.items():
        print(f"{k:32s} test NDCG@10 {v:.4f}")
    return result


if __name__ == "__main__":
    main()
