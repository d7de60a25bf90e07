"""MovieLens-100k, RecBole's split (RS 0.8/0.1/0.1, temporal, by user): train the shipped
configuration with several seeds; report test metrics with the live history (train + valid
items) and with train-only history (what RecBole's models see), and the popularity baseline
measured in the same run.

    python -m benchmarks.quality.movielens --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._machine import machine
from benchmarks._paths import RESULTS, ROOT
from tailored.config import load_config
from tailored.data.movielens import fetch_movielens_100k
from tailored.train.evaluate import evaluate
from tailored.train.runs import load_data, load_run
from tailored.train.two_tower.fit import train

KEYS = (
    "ndcg@10",
    "recall@10",
    "mrr@10",
    "hit@10",
    "ndcg@20",
    "recall@20",
    "itemcoverage@10",
    "averagepopularity@10",
)


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
        "std": statistics.pstdev(values),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "movielens-100k.toml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--out-json", type=Path, default=RESULTS / "movielens.json")
    args = p.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    fetch_movielens_100k()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            cfg = load_config(
                args.config,
                overrides={
                    "train.seed": seed,
                    "train.max_epochs": args.max_epochs,
                    "train.progress_bar": False,
                },
            )
            data = load_data(cfg)
            start = time.perf_counter()
            result = train(cfg, out=Path(tmp) / f"seed{seed}", data=data)
            seconds = time.perf_counter() - start
            run = load_run(result.out, data=data)
            live = evaluate(run, split="test", history="all")
            train_only = evaluate(run, split="test", history="train")
            runs.append(
                {
                    "seed": seed,
                    "epochs": result.epochs,
                    "train_seconds": seconds,
                    "samples_per_second": result.samples_per_second,
                    "valid_ndcg@10": result.best_valid_ndcg10,
                    "test": live["metrics"],
                    "test_train_history": train_only["metrics"],
                    "popularity": live["popularity"],
                    "groups": live["groups"],
                }
            )
            print(
                f"seed {seed}: test ndcg@10 {live['metrics']['ndcg@10']:.4f} "
                f"recall@10 {live['metrics']['recall@10']:.4f} | train-only history "
                f"{train_only['metrics']['ndcg@10']:.4f} | popularity "
                f"{live['popularity']['ndcg@10']:.4f} ({result.epochs} epochs, "
                f"{seconds:.0f} s)",
                flush=True,
            )
    report = {
        "benchmark": "movielens-100k",
        "config": str(args.config.relative_to(ROOT)),
        "seeds": args.seeds,
        "machine": machine(),
        "runs": runs,
        "summary": {
            "test": {k: _summary([r["test"][k] for r in runs]) for k in KEYS},
            "test_train_history": {
                k: _summary([r["test_train_history"][k] for r in runs]) for k in KEYS
            },
            "popularity": {k: _summary([r["popularity"][k] for r in runs]) for k in KEYS},
        },
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(report, indent=2) + "\n")
    s = report["summary"]
    print(
        json.dumps(
            {name: {k: round(v["mean"], 4) for k, v in s[name].items()} for name in s}, indent=2
        )
    )
    return report


if __name__ == "__main__":
    main()
