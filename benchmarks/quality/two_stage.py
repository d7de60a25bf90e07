"""MovieLens-100k, split (a): the two-stage system (user tower -> index top-N -> ranker ->
top-10) against retrieval alone and popularity, all three from the same bundle, per seed.

``python -m benchmarks.quality.two_stage --seeds 0 1 2``: for each seed, train the shipped
configuration, build its bundle (the ranker trains on the run's own validation candidates),
and evaluate the bundle on the test split with the live history (train and valid items)
and with train-only history. JSON to ``benchmarks/results/two_stage.json`` with every run
and the mean / min / max over seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._machine import machine
from benchmarks._overrides import add_set_argument
from benchmarks._paths import RESULTS, ROOT
from tailored.bundle.build import build_bundle
from tailored.bundle.evaluate import evaluate_bundle
from tailored.config import load_config
from tailored.data.movielens import fetch_movielens_100k
from tailored.train.runs import load_data
from tailored.train.two_tower.fit import train

__all__ = ["main"]

KEYS = ("ndcg@10", "recall@10", "mrr@10", "hit@10", "itemcoverage@10")


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def _pick(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {
        name: {k: report[name][k] for k in KEYS} for name in ("metrics", "retrieval", "popularity")
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "movielens-100k.toml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_set_argument(p)
    p.add_argument("--out-json", type=Path, default=RESULTS / "two_stage.json")
    args = p.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    fetch_movielens_100k()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            overrides = {**dict(args.set), "train.seed": seed, "train.progress_bar": False}
            cfg = load_config(args.config, overrides=overrides)
            data = load_data(cfg)
            start = time.perf_counter()
            result = train(cfg, out=Path(tmp) / f"run{seed}", data=data)
            trained = time.perf_counter()
            # through valid: the bundle has not seen the test period it is evaluated on
            built = build_bundle(
                result.out, Path(tmp) / f"bundles{seed}", progress_bar=False, through="valid"
            )
            bundled = time.perf_counter()
            live = evaluate_bundle(built.path, split="test", history="all", data=data)
            train_only = evaluate_bundle(built.path, split="test", history="train", data=data)
            manifest = json.loads((built.path / "manifest.json").read_text())
            runs.append(
                {
                    "seed": seed,
                    "epochs": result.epochs,
                    "valid_ndcg@10": result.best_valid_ndcg10,
                    "train_seconds": round(trained - start, 1),
                    "bundle_seconds": round(bundled - trained, 1),
                    "ranker": manifest["metrics"].get("ranker"),
                    "test": _pick(live),
                    "test_train_history": _pick(train_only),
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    summary: dict[str, dict[str, Any]] = {
        view: {
            name: {k: _summary([r[view][name][k] for r in runs]) for k in KEYS}
            for name in ("metrics", "retrieval", "popularity")
        }
        for view in ("test", "test_train_history")
    }
    for view in summary:
        ratios = [r[view]["metrics"]["ndcg@10"] / r[view]["retrieval"]["ndcg@10"] for r in runs]
        summary[view]["two_stage_over_retrieval_ndcg@10"] = _summary(ratios)
    out = {
        "machine": machine(),
        "config": str(args.config),
        "overrides": dict(args.set),
        "runs": runs,
        "summary": summary,
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return out


if __name__ == "__main__":
    main()
