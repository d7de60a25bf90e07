"""Training on the synthetic website at scale: throughput on this machine's CPU (or GPU), and
what was learned, checked against the planted ground truth.

    python -m benchmarks.scale.train_throughput --users 1000000 --items 100000 --minutes 10

Generates the dataset if it is not cached, trains for a bounded time, then for a sample of
users compares the model's top-10 (their training/validation items excluded) with the true
top-10 by planted affinity at the end of the time span (the same items excluded): recall@10
against the truth, for the model and for the popularity baseline in the same run. Also the
usual held-out test metrics on the same users.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path
from typing import Any

from benchmarks._machine import machine
from benchmarks._overrides import add_set_argument
from benchmarks._paths import RESULTS, ROOT
from tailored.config import load_config
from tailored.data.splits import TEST, TRAIN, VALID
from tailored.data.synth import generate_synthetic
from tailored.paths import tailored_home
from tailored.train.evaluate import evaluate
from tailored.train.runs import load_data, load_run
from tailored.train.truth import planted_truth_recall
from tailored.train.two_tower.fit import train


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--events-per-user", type=float, default=30.0)
    p.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help="where the dataset is cached (default $TAILORED_HOME/datasets/synthetic-<users>)",
    )
    p.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--eval-users", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    add_set_argument(p)  # e.g. --set train.batch_size=8192
    p.add_argument("--out-json", type=Path, default=RESULTS / "train_throughput.json")
    args = p.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    ds = args.dataset or tailored_home() / "datasets" / f"synthetic-{args.users}"
    report: dict[str, Any] = {
        "benchmark": "train_throughput",
        "machine": machine(),
        "users": args.users,
        "items": args.items,
        "overrides": dict(args.set),
    }
    if not (ds / "dataset.json").is_file():
        s = generate_synthetic(
            ds,
            n_users=args.users,
            n_items=args.items,
            events_per_user=args.events_per_user,
            seed=args.seed,
        )
        report["generate_seconds"] = s.seconds
    cfg = load_config(
        ROOT / "configs" / "synthetic.toml",
        overrides={
            **dict(args.set),
            "data.dataset": str(ds),
            "train.max_minutes": args.minutes,
            "train.max_epochs": args.epochs,
            "train.seed": args.seed,
            "train.progress_bar": False,
        },
    )
    start = time.perf_counter()
    data = load_data(cfg)
    report["load_seconds"] = time.perf_counter() - start
    report["positives"] = {
        "train": int((data.split == TRAIN).sum()),
        "valid": int((data.split == VALID).sum()),
        "test": int((data.split == TEST).sum()),
    }
    out = ROOT / "runs" / "bench-synthetic"
    result = train(cfg, out=out, data=data)
    report["train"] = {
        "samples_per_second": result.samples_per_second,
        "train_seconds": result.train_seconds,
        "epochs": result.epochs,
        "best_valid_ndcg@10": result.best_valid_ndcg10,
        "batch_size": cfg.train.batch_size,
        "encoder": cfg.model.sequence_encoder,
    }
    run = load_run(out, data=data)
    report["truth_recall@10"] = planted_truth_recall(run, ds, users=args.eval_users, seed=args.seed)
    heldout = evaluate(run, split="test", max_users=args.eval_users, seed=args.seed)
    report["test"] = {"model": heldout["metrics"], "popularity": heldout["popularity"]}
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps({k: report[k] for k in ("train", "truth_recall@10", "peak_rss_mib")}, indent=2)
    )
    return report


if __name__ == "__main__":
    main()
