"""The item-item linear model behind the ranker's ``ease_score`` feature, alone, on
MovieLens-100k split (a): how its L2 penalty was chosen (validation NDCG@10), and what it
reaches on the test split beside training popularity.

Validation requests read the training split (the model is fitted on it); test requests read
training and validation (fitted on both), as the ranker's features do. Items already in
the history are excluded; full ranking over all items with :class:`ItemRegression` (every
item modelled), the project's metrics.

    python -m benchmarks.explorations.movielens_ease [--dataset DIR]

JSON to ``benchmarks/results/movielens_ease.json`` (atomically).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.explorations._movielens import split_a_events
from tailored.data.ranking_features import ItemRegression
from tailored.paths import write_json_atomic
from tailored.train.metrics import Csr, per_user_metrics, topk_from_scores

__all__ = ["main"]

OUT = RESULTS / "movielens_ease.json"
L2 = (25.0, 50.0, 100.0, 200.0, 400.0, 800.0)


def _ndcg(scores: np.ndarray, exclude: Csr, relevant: Csr) -> float:
    top = topk_from_scores(scores, exclude, 10)
    return round(float(per_user_metrics(top, relevant, [10])["ndcg@10"].mean()), 4)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, help="a converted MovieLens-100k (default: fetch)")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    user, item, _, split = split_a_events(a.dataset)
    item = item + 1  # the item-item model numbers items from 1
    n_items = int(item.max())
    result: dict[str, Any] = {"benchmark": "movielens_ease", "machine": machine(), "ndcg@10": {}}
    for name, target in (("valid", 1), ("test", 2)):
        known = split < target
        users = np.unique(user[split == target])
        hist = [np.unique(item[(user == u) & known]) for u in users]
        exclude = Csr.from_lists([h - 1 for h in hist])
        relevant = Csr.from_lists(
            [np.unique(item[(user == u) & (split == target)]) - 1 for u in users]
        )
        pop = np.bincount(item[split == 0] - 1, minlength=n_items).astype(float)
        rows = {"training popularity": _ndcg(np.tile(pop, (len(users), 1)), exclude, relevant)}
        for l2 in L2:
            reg = ItemRegression.of(user[known], item[known], n_items, max_items=n_items, l2=l2)
            scores = np.stack([reg.scores(h, np.arange(1, n_items + 1)) for h in hist])
            rows[f"l2 {l2:g}"] = _ndcg(scores, exclude, relevant)
            print(f"{name} l2 {l2:g}: NDCG@10 {rows[f'l2 {l2:g}']:.4f}", flush=True)
        result["ndcg@10"][name] = rows
    valid = {k: v for k, v in result["ndcg@10"]["valid"].items() if k.startswith("l2")}
    result["chosen_on_valid"] = max(valid, key=lambda k: valid[k])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out, result)
    print("chosen on validation:", result["chosen_on_valid"])
    return result


if __name__ == "__main__":
    main()
