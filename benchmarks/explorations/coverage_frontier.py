"""What item coverage@10 costs on MovieLens-100k: the ranker's lists with a popularity
penalty, NDCG@10 against coverage. An exploration for issue 20's goal (two-stage NDCG@10 at
least 0.23 *with* coverage@10 at least 0.45), before building any coverage control into
serving. With ``--dataset synthetic`` the same on the ablation's synthetic site, where the
planted-truth recall@10 is reported too: whether the popularity the clicks over-count (the
site's logging policy shows popular items more) hides planted tastes a penalty would find.

For each seed, the shipped configuration is trained and its ranker fitted as the ablation
does (:mod:`benchmarks.quality.ablation`, no bundle), and the test requests are made as
``tailored evaluate`` makes them. Each request's candidates are then ordered by ``z(ranker
score) - beta * z(item_count)`` (each standardised within the request; ``item_count`` is the
ranker's own feature, log(1 + the item's known interactions before the request)), for each
``beta``: 0 is the ranker's own order (the order is :func:`~tailored.data.ranking_features.
popularity_penalized`'s, ``[ranker] popularity_penalty``, whatever the configuration sets;
the runs of 2026-12-06 and 07 counted a request's empty candidate slots in the
standardisation, which the function leaves out).

    python -m benchmarks.explorations.coverage_frontier --seeds 0 [--betas 0 0.1 0.2 0.3 0.5]
    python -m benchmarks.explorations.coverage_frontier --dataset synthetic [--site-seed 1] \
        --out benchmarks/results/coverage_frontier_synthetic.json

JSON to ``benchmarks/results/coverage_frontier.json``: per seed and beta, NDCG@10, Recall@10
and coverage@10 (and the planted truth's recall@10 and new-item recall on the synthetic
site), with retrieval alone beside them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._machine import machine
from benchmarks._overrides import add_set_argument
from benchmarks._paths import RESULTS
from benchmarks.quality.ablation import SeedModels, test_requests
from benchmarks.quality.ablation_plan import (
    Base,
    Site,
    add_site_arguments,
    make_plan,
    movielens_site,
    row_metrics,
    synthetic_site,
)
from tailored.bundle.evaluate import rerank
from tailored.config import load_config
from tailored.data.ranking_features import penalized, popularity_penalized
from tailored.data.schema import read_dataset_meta
from tailored.paths import write_json_atomic
from tailored.train.ranker.task import task_logits
from tailored.train.runs import load_data
from tailored.train.threads import torch_threads

__all__ = ["main"]

OUT = RESULTS / "coverage_frontier.json"
K = 10


def reach_penalized(
    scores: np.ndarray, candidates: np.ndarray, penalty: float, k: int = K
) -> np.ndarray:
    """The order of R requests' candidates by ``z(score) - penalty * z(log(1 + reach))``,
    ``reach`` how many of the R requests' own top ``k`` (by ``scores``) hold the item: a
    penalty on what the lists already show everyone, not on what the logs count (the
    popularity penalty's ``item_count``). A server would count the reach over the bundle's
    users when the bundle is built; here the test requests count it themselves (their
    rankings, never their labels)."""
    if penalty == 0:
        return np.asarray(scores, np.float32)
    top = rerank(scores, candidates, k) + 1  # item numbers, 0 = none
    reach = np.bincount(top[top > 0].ravel(), minlength=int(candidates.max(initial=0)) + 1)
    return penalized(scores, np.log1p(reach[candidates]), candidates, penalty)


def _seed(
    site: Site,
    seed: int,
    betas: list[float],
    work: Path,
    extra: dict[str, Any] | None = None,
    reach_betas: list[float] | None = None,
    below: tuple[int, ...] = (0,),
) -> dict[str, Any]:
    overrides = {**site.overrides, **(extra or {}), "train.seed": seed, "train.progress_bar": False}
    cfg = load_config(site.config, overrides=overrides)
    data = load_data(cfg)
    windows = read_dataset_meta(site.dataset).schema.item_availability
    plan = make_plan(site, Base(cfg, data, windows))
    fitted = SeedModels(work).fit(cfg, data)
    # after the fit: Lightning leaves gradients on
    with torch_threads(cfg.train.threads), torch.no_grad():
        req, _, _ = test_requests(fitted, cfg.ranker, plan, plan.windows)
        logits = np.concatenate(
            [
                task_logits(fitted.ranker.model, fitted.tables.batch(b)).numpy()
                for b in req.batches(256)
            ]
        )

    def figures(top: np.ndarray) -> dict[str, float]:
        return row_metrics(top, plan, data)

    order = -np.arange(req.candidates.shape[1], dtype=np.float32)
    return {
        "seed": seed,
        "retrieval": figures(
            rerank(np.broadcast_to(order, req.candidates.shape), req.candidates, K)
        ),
        "penalised": {
            _label(b, m): figures(
                rerank(
                    popularity_penalized(logits, req.dense, req.candidates, b, m),
                    req.candidates,
                    K,
                )
            )
            for m in below
            for b in betas
        },
        "reach_penalised": {
            str(b): figures(rerank(reach_penalized(logits, req.candidates, b), req.candidates, K))
            for b in reach_betas or []
        },
    }


def _label(beta: float, below: int) -> str:
    """A penalty's key in the JSON: its beta, and the places it leaves above it."""
    return f"{beta} below {below}" if below else str(beta)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=("movielens", "synthetic"), default="movielens")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--betas", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5, 0.8])
    p.add_argument(
        "--reach-betas",
        type=float,
        nargs="*",
        default=[],
        help="penalties on how many of the lists hold the item (reach_penalized)",
    )
    p.add_argument(
        "--below",
        type=int,
        nargs="+",
        default=[0],
        help="each penalty also with the ranker's first this many kept in its order "
        "([ranker] popularity_penalty_below; 0: the whole list penalised)",
    )
    add_set_argument(p)
    p.add_argument("--out", type=Path, default=OUT)
    add_site_arguments(p)
    args = p.parse_args(argv)
    if min(args.below) < 0:
        p.error(f"--below: places must be >= 0, got {min(args.below)}")
    extra = dict(args.set)
    with tempfile.TemporaryDirectory(prefix="tailored-coverage-") as tmp:
        site = movielens_site() if args.dataset == "movielens" else synthetic_site(args, Path(tmp))
        runs = [
            _seed(
                site,
                s,
                args.betas,
                Path(tmp) / f"seed{s}",
                extra,
                args.reach_betas,
                tuple(args.below),
            )
            for s in args.seeds
        ]
    out = {
        "machine": machine(),
        "dataset": args.dataset,
        "site": site.info,
        "betas": args.betas,
        "reach_betas": args.reach_betas,
        "below": args.below,
        "overrides": extra,
        "runs": runs,
    }
    write_json_atomic(args.out, out)
    for run in runs:
        print(f"seed {run['seed']}: retrieval {run['retrieval']}")
        for b, f in run["penalised"].items():
            print(f"  beta {b}: {f}")
        for b, f in run["reach_penalised"].items():
            print(f"  reach beta {b}: {f}")
    return out


if __name__ == "__main__":
    main()
