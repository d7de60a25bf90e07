"""Is an item's recent popularity worth a ranker feature on MovieLens-100k? An exploration
for issue 3 (the re-ranker's gain over retrieval), before building such a feature into
training and serving.

Split (a) (RecBole's per-user 80/10/10 by time). Each user's request is made when their test
period begins (time t); items they already rated are excluded, and their test items are
relevant. Items are ranked by their events from other users in the W seconds before t (ties
broken by training popularity), for several W, beside the training split's popularity and
all events before t. Nothing after t is used.

    python -m benchmarks.explorations.movielens_recent_popularity [--dataset DIR]

JSON to ``benchmarks/results/movielens_recent_popularity.json`` (atomically).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.explorations._movielens import ndcg_at_10, requests, split_a_events
from tailored.paths import write_json_atomic

__all__ = ["main"]

OUT = RESULTS / "movielens_recent_popularity.json"
DAY = 86_400
WINDOWS = {"1 day": DAY, "3 days": 3 * DAY, "7 days": 7 * DAY, "30 days": 30 * DAY}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, help="a converted MovieLens-100k (default: fetch)")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    user, item, ts, split = split_a_events(a.dataset)
    test = split == 2
    n_items = int(item.max()) + 1
    order = np.argsort(ts, kind="stable")
    ts_s, item_s, user_s = ts[order], item[order], user[order]
    train_pop = np.bincount(item[split == 0], minlength=n_items).astype(float)
    tie = 1e-3 * train_pop / train_pop.max()  # below one event: breaks ties only
    windows = {"all events before t": None} | {
        f"events in the {name} before t": w for name, w in WINDOWS.items()
    }
    users, exclude, relevant = requests(user, item, split)
    scores = {"training popularity": np.tile(train_pop, (len(users), 1))}
    scores |= {name: np.zeros((len(users), n_items)) for name in windows}
    for r, u in enumerate(users):
        t0 = ts[(user == u) & test].min()
        hi = int(np.searchsorted(ts_s, t0, "left"))
        for name, w in windows.items():
            lo = 0 if w is None else int(np.searchsorted(ts_s, t0 - w, "left"))
            other = user_s[lo:hi] != u
            scores[name][r] = np.bincount(item_s[lo:hi][other], minlength=n_items) + tie
    ndcg = {name: round(ndcg_at_10(s, exclude, relevant), 4) for name, s in scores.items()}
    result: dict[str, Any] = {
        "benchmark": "movielens_recent_popularity",
        "machine": machine(),
        "users": len(users),
        "test_ndcg@10": ndcg,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out, result)
    for k, v in ndcg.items():
        print(f"{k:32s} test NDCG@10 {v:.4f}")
    return result


if __name__ == "__main__":
    main()
