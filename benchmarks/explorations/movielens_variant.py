"""One MovieLens-100k training run with configuration overrides, for exploring variants:
prints best validation NDCG@10 and test NDCG@10 / Recall@10 with the live and the train-only
history. The shipped configuration's figures come from ``benchmarks.quality.movielens``.

    python -m benchmarks.explorations.movielens_variant --set model.dim=128 \\
        --set train.lr=0.002 --seed 1
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._overrides import add_set_argument
from benchmarks._paths import ROOT
from tailored.config import load_config
from tailored.data.movielens import fetch_movielens_100k
from tailored.train.evaluate import evaluate
from tailored.train.runs import load_data, load_run
from tailored.train.two_tower.fit import train


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "movielens-100k.toml")
    add_set_argument(p)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    fetch_movielens_100k()
    overrides = {**dict(args.set), "train.seed": args.seed, "train.progress_bar": False}
    cfg = load_config(args.config, overrides=overrides)
    data = load_data(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, out=Path(tmp), data=data)
        run = load_run(result.out, data=data)
        live = evaluate(run, split="test", history="all")["metrics"]
        train_only = evaluate(run, split="test", history="train")["metrics"]
    out = {
        "overrides": dict(args.set),
        "seed": args.seed,
        "epochs": result.epochs,
        "valid_ndcg@10": result.best_valid_ndcg10,
        "test": {k: live[k] for k in ("ndcg@10", "recall@10")},
        "test_train_history": {k: train_only[k] for k in ("ndcg@10", "recall@10")},
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
