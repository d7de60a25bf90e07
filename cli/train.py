"""``tailored train`` and ``tailored evaluate`` (a run, or a bundle's two stages)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tailored.cli._common import Sub

__all__ = ["register"]


def register(sub: Sub) -> None:
    _add_train(sub)
    _add_evaluate(sub)


# --- train ------------------------------------------------------------------------------------


def _add_train(sub: Sub) -> None:
    p = sub.add_parser(
        "train",
        help="train the two-tower model",
        description="Train the two-tower retrieval model from a TOML "
        "configuration; writes checkpoints, logs, the model and its metrics.",
    )
    p.add_argument("--config", type=Path, required=True, help="TOML configuration")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--seed", type=int, default=None, help="override train.seed")
    p.add_argument("--devices", type=int, default=None, help="override train.devices")
    p.add_argument("--max-epochs", type=int, default=None, help="override train.max_epochs")
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from tailored.config import load_config
    from tailored.train.two_tower.fit import train

    cfg = load_config(
        args.config,
        overrides={
            "train.seed": args.seed,
            "train.devices": args.devices,
            "train.max_epochs": args.max_epochs,
        },
    )
    train(cfg, out=args.out)
    return 0


# --- evaluate ---------------------------------------------------------------------------------


def _add_evaluate(sub: Sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="offline evaluation of a run or a bundle (two-stage beside retrieval alone)",
        description="Recall, NDCG, MRR, Hit, ItemCoverage, AveragePopularity at 10 and 20 "
        "against a popularity baseline, with a breakdown by user group. A run is scored by "
        "full ranking over all items (seen items masked); a bundle as it serves: user tower "
        "-> index top-N -> ranker -> top-K (key 'metrics'), beside retrieval alone (key "
        "'retrieval').",
    )
    p.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_OR_BUNDLE",
        help="a run written by `tailored train`, or a bundle (a version or a bundle root)",
    )
    p.add_argument("--split", choices=["valid", "test"], default="test")
    p.add_argument(
        "--history",
        choices=["all", "train"],
        default="all",
        help="history the user tower reads: everything before the evaluated period "
        "(all, as a live system) or the training split only (train)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from tailored.bundle.format import MANIFEST, latest_bundle
    from tailored.train.evaluate import evaluate_run, format_report

    path: Path = args.run_dir
    bundle = path if (path / MANIFEST).is_file() else (path.is_dir() and latest_bundle(path))
    if bundle:
        from tailored.bundle.evaluate import evaluate_bundle

        report = evaluate_bundle(bundle, split=args.split, history=args.history)
    else:
        report = evaluate_run(path, split=args.split, history=args.history)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0
