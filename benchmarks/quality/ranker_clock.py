"""MovieLens-100k, split (a): two-stage quality when requests are stamped as a server stamps
them, for rankers trained on requests made at the user's next event, as serving makes them,
and on both (``[ranker] request_time``: next_event, serving, mixed), per seed (issue 20,
item 9).

``python -m benchmarks.quality.ranker_clock --seeds 0 1 2``: for each seed, train the shipped
configuration once; for each ``--modes`` value, build a bundle through valid whose ranker
was trained with that ``request_time``; evaluate it on the test split (live history: train
and valid items) with requests stamped

* ``next_event``: at each user's first test event, item activity as of then (what
  ``tailored evaluate BUNDLE`` reports);
* ``bundle+Dd``: at the bundle clock (one second after the bundle's last event, where
  ``tailored serve --clock bundle`` starts) plus D days, with the bundle's item activity
  snapshot (frozen at its build), as the server computes the features.

Retrieval alone does not read the clock (the user tower reads no time), so its figures are
the same at every clock. JSON to ``benchmarks/results/ranker_clock.json`` with every run and
the mean / min / max over seeds; ``--work DIR`` keeps the trained runs (reused when their
configuration is the same) and bundles.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._machine import machine
from benchmarks._overrides import add_set_argument
from benchmarks._paths import RESULTS, ROOT
from tailored.bundle.build import build_bundle
from tailored.bundle.evaluate import evaluate_bundle, rank_requests, rerank, two_stage_requests
from tailored.bundle.runtime import LoadedBundle
from tailored.config import Config, load_config
from tailored.data.interactions import Interactions
from tailored.data.movielens import fetch_movielens_100k
from tailored.data.splits import TEST, TRAIN, VALID
from tailored.train.evaluate import KS, eval_plan, user_csr
from tailored.train.metrics import aggregate_metrics
from tailored.train.ranker.data import Requests, history_cut
from tailored.train.runs import load_data
from tailored.train.two_tower.fit import train

__all__ = ["clock_metrics", "main"]

KEYS = ("ndcg@10", "recall@10")
_DAY = 86_400


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def _requests(
    bundle: LoadedBundle, data: Interactions, users: np.ndarray, cfg: Config, days: float
) -> Requests:
    """The test requests of ``users`` (live history) at the bundle clock plus ``days``, their
    features as the server computes them (item activity: the bundle's snapshot)."""
    clock = int(bundle.manifest.data["last_event_time"]) + 1  # the server's bundle clock
    if clock != history_cut(data, (TRAIN, VALID)):
        raise RuntimeError("the bundle's clock is not where its data (train and valid) ends")
    return two_stage_requests(
        bundle,
        data,
        users,
        (TRAIN, VALID),
        TEST,
        max(cfg.ranker.candidates, max(KS)),
        cfg.ranker,
        now=np.full(len(users), clock + round(days * _DAY), np.int64),
        activity_at=clock,
    )


def clock_metrics(
    path: Path, data: Interactions, cfg: Config, days: list[float]
) -> dict[str, dict[str, dict[str, float]]]:
    """``{"bundle+Dd": {"two_stage": {...}, "retrieval": {...}}}``: test NDCG@10 and
    Recall@10 of the bundle at ``path`` with its requests stamped at the bundle clock plus
    each of ``days``."""
    bundle = LoadedBundle.load(path)
    target, _, _, users = eval_plan(data, "test", "all", 0, 0)
    relevant = user_csr(data, (target,), users)
    pop = data.item_popularity((TRAIN,))[1:]
    k = max(KS)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for d in days:
        req = _requests(bundle, data, users, cfg, d)
        ranked = rank_requests(bundle, data, req, k)
        order = -np.arange(req.candidates.shape[1], dtype=np.float32)
        retrieval = rerank(np.broadcast_to(order, req.candidates.shape), req.candidates, k)
        two = aggregate_metrics(ranked, relevant, KS, pop, data.n_items)
        ret = aggregate_metrics(retrieval, relevant, KS, pop, data.n_items)
        out[f"bundle+{d:g}d"] = {
            "two_stage": {m: two[m] for m in KEYS},
            "retrieval": {m: ret[m] for m in KEYS},
        }
    return out


def _run(cfg: Config, data: Interactions, work: Path, seed: int) -> tuple[Path, float]:
    """The trained run of ``cfg`` in ``work/run{seed}``: reused if one with the same
    configuration (the ranker's aside) is there, else trained; (its path, seconds spent)."""
    out = work / f"run{seed}"
    want = {k: v for k, v in cfg.to_dict().items() if k != "ranker"}
    if (out / "model.pt").is_file() and (out / "config.json").is_file():
        have = json.loads((out / "config.json").read_text())
        have.pop("ranker", None)
        if json.loads(json.dumps(want)) == have:
            return out, 0.0
        shutil.rmtree(out)
    elif out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    train(cfg, out=out, data=data)
    return out, time.perf_counter() - start


def _variant(run: Path, cfg: Config, dest: Path) -> Path:
    """A view of ``run`` whose configuration is ``cfg`` (its ranker section differs): links
    to the run's files, its own config.json, for the bundle build to read."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in run.iterdir():
        if f.name != "config.json":
            (dest / f.name).symlink_to(f.resolve())
    (dest / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    return dest


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "movielens-100k.toml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--modes", nargs="+", default=["next_event", "serving", "mixed"])
    # 0, 1, 7 and 30 are the delays serving requests are drawn from by default; 3 and 90
    # are not among them
    p.add_argument("--days", type=float, nargs="+", default=[0, 1, 3, 7, 30, 90])
    p.add_argument("--work", type=Path, default=None, help="keep runs and bundles here")
    add_set_argument(p)
    p.add_argument("--out-json", type=Path, default=RESULTS / "ranker_clock.json")
    args = p.parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    fetch_movielens_100k()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work if args.work is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:
            base = {**dict(args.set), "train.seed": seed, "train.progress_bar": False}
            cfg = load_config(args.config, overrides=base)
            data = load_data(cfg)
            run, train_s = _run(cfg, data, work, seed)
            entry: dict[str, Any] = {"seed": seed, "train_seconds": round(train_s, 1)}
            for mode in args.modes:
                mcfg = load_config(args.config, overrides={**base, "ranker.request_time": mode})
                view = _variant(run, mcfg, work / f"run{seed}-{mode}")
                start = time.perf_counter()
                built = build_bundle(
                    view, work / f"bundles{seed}-{mode}", progress_bar=False, through="valid"
                )
                bundled = time.perf_counter()
                nxt = evaluate_bundle(built.path, split="test", history="all", data=data)
                clocks = {
                    "next_event": {
                        "two_stage": {m: nxt["metrics"][m] for m in KEYS},
                        "retrieval": {m: nxt["retrieval"][m] for m in KEYS},
                    },
                    **clock_metrics(built.path, data, mcfg, args.days),
                }
                manifest = json.loads((built.path / "manifest.json").read_text())
                entry[mode] = {
                    "bundle_seconds": round(bundled - start, 1),
                    "ranker": manifest["metrics"].get("ranker"),
                    "clocks": clocks,
                }
                print(json.dumps({"seed": seed, "mode": mode, **entry[mode]}), flush=True)
            runs.append(entry)
    clock_names = list(runs[0][args.modes[0]]["clocks"])
    summary = {
        mode: {
            clock: {
                name: {m: _summary([r[mode]["clocks"][clock][name][m] for r in runs]) for m in KEYS}
                for name in ("two_stage", "retrieval")
            }
            for clock in clock_names
        }
        for mode in args.modes
    }
    out = {
        "machine": machine(),
        "config": str(args.config),
        "overrides": dict(args.set),
        "modes": args.modes,
        "days": args.days,
        "runs": runs,
        "summary": summary,
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(out, indent=2) + "\n")
    print(_table(summary))
    return out


def _table(summary: dict[str, Any]) -> str:
    """A markdown table of the means: one row per (ranker mode, clock)."""
    lines = [
        "| ranker trained at | request clock | two-stage NDCG@10 | retrieval NDCG@10 "
        "| two-stage Recall@10 | retrieval Recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for mode, clocks in summary.items():
        for clock, v in clocks.items():
            lines.append(
                f"| {mode} | {clock} | {v['two_stage']['ndcg@10']['mean']:.4f} "
                f"| {v['retrieval']['ndcg@10']['mean']:.4f} "
                f"| {v['two_stage']['recall@10']['mean']:.4f} "
                f"| {v['retrieval']['recall@10']['mean']:.4f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
