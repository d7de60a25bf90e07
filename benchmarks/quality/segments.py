"""User segments: how well k-means over the user embeddings recovers the synthetic site's
planted tastes, and what MovieLens-100k's segments look like, with NDCG@10 per segment.

Synthetic site (the serving benchmark's small site, 2,000 users and 5,000 items, trained 20
epochs: :mod:`benchmarks.serving._bundle`; its planted truth kept). Each user's planted
*dominant category* is the category whose centroid their taste vector u(t_end) scores
highest. The bundle's user embeddings are clustered at several k
(:func:`tailored.retrieval.segments.fit_segments`), and each clustering's adjusted mutual
information (scikit-learn's AMI: 0 for chance, 1 for the same partition) with the dominant
category is reported, beside two baselines measured the same way: the category each user
engaged with most in the data (what a site could read off its logs without a model), and
the segments shuffled among users (chance). Also AMI with the planted demographic segment.

MovieLens-100k: the shipped configuration trained (seed 0), its bundle built with the
default ``[segments] k = 8``; the segments' descriptions and the test NDCG@10 of the
two-stage system per segment (``tailored evaluate``'s "segment" group).

    python -m benchmarks.quality.segments          # writes results/segments.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from benchmarks._machine import machine
from benchmarks._paths import RESULTS, ROOT
from benchmarks.serving._bundle import KEY, Sizes, ensure_bundle, raw_user_id
from tailored.paths import write_json_atomic

__all__ = ["main"]


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality.segments", description=__doc__)
    p.add_argument("--ks", type=int, nargs="+", default=[4, 8, 16, 32, 50])
    p.add_argument("--epochs", type=int, default=20, help="the synthetic bundle's")
    p.add_argument("--skip-movielens", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "segments.json")
    return p.parse_args(argv)


def _synthetic(a: argparse.Namespace) -> dict[str, Any]:
    from sklearn.metrics import adjusted_mutual_info_score as ami

    from tailored.bundle.format import BUNDLE_FILES, load_npy
    from tailored.data.pseudonym import Pseudonymizer
    from tailored.data.synth_truth import load_truth
    from tailored.retrieval.segments import fit_segments, k_quality

    built = ensure_bundle(
        Sizes(2000, 5000, 30.0, a.epochs, 6.0, 500, 2, batch_size=1024), versions=1
    )
    version = built.versions[0]
    emb = load_npy(version / BUNDLE_FILES["user_embeddings"])
    ids = pq.read_table(version / BUNDLE_FILES["user_ids"]).column("user_id").to_pylist()
    truth = load_truth(built.dataset)
    key = Pseudonymizer(bytes.fromhex(KEY))
    row_of = {key(raw_user_id(r, len(truth.user_taste_start))): r for r in range(len(ids))}
    rows = np.array([row_of[u] for u in ids], np.int64)  # each bundle user's truth row
    dominant = np.argmax(truth.taste(rows) @ truth.category_centroids.T, axis=1)
    demographic = truth.user_segment[rows]
    # the baseline a site has without a model: each user's most engaged-with category
    seen_off = load_npy(version / BUNDLE_FILES["user_seen_offsets"])
    seen = load_npy(version / BUNDLE_FILES["user_seen_items"]).astype(np.int64)
    item_ids = pq.read_table(version / BUNDLE_FILES["items"]).column("item_id").to_pylist()
    item_row = {
        str(i): r
        for r, i in enumerate(
            pq.read_table(built.dataset / "items.parquet").column("item_id").to_pylist()
        )
    }
    category = np.array([truth.item_category[item_row[str(i)]] for i in item_ids], np.int64)
    n_cat = len(truth.category_centroids)
    most = np.array(
        [
            np.bincount(category[seen[lo:hi] - 1], minlength=n_cat).argmax() if hi > lo else -1
            for lo, hi in itertools.pairwise(seen_off.tolist())
        ]
    )
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {
        "bundle": str(version),
        "users": len(ids),
        "categories": n_cat,
        "dominant_categories_present": len(np.unique(dominant)),
        "demographic_segments_present": len(np.unique(demographic)),
        "baseline_most_engaged_category_ami": round(float(ami(dominant, most)), 4),
        "by_k": [],
    }
    for k in a.ks:
        seg = fit_segments(emb, k, seed=0)
        out["by_k"].append(
            {
                "k": k,
                "ami_dominant_category": round(float(ami(dominant, seg.labels)), 4),
                "ami_shuffled": round(float(ami(dominant, rng.permutation(seg.labels))), 4),
                "ami_demographic_segment": round(float(ami(demographic, seg.labels)), 4),
            }
        )
    quality = k_quality(emb, a.ks)
    for row, q in zip(out["by_k"], quality, strict=True):
        row.update(silhouette=q["silhouette"], objective_per_user=q["objective_per_user"])
    return out


def _movielens() -> dict[str, Any]:
    from tailored.bundle.build import build_bundle
    from tailored.bundle.evaluate import evaluate_bundle
    from tailored.config import load_config
    from tailored.data.movielens import fetch_movielens_100k
    from tailored.train.runs import load_data
    from tailored.train.two_tower.fit import train

    fetch_movielens_100k()
    with tempfile.TemporaryDirectory(prefix="segments.") as d:
        cfg = load_config(
            ROOT / "configs" / "movielens-100k.toml",
            overrides={"train.seed": 0, "train.progress_bar": False},
        )
        data = load_data(cfg)
        result = train(cfg, out=Path(d) / "run", data=data)
        built = build_bundle(result.out, Path(d) / "bundles", progress_bar=False, through="valid")
        report = evaluate_bundle(built.path, split="test", history="all", data=data)
        doc = json.loads((built.path / "segments" / "segments.json").read_text())
    return {
        "test_ndcg@10": report["metrics"]["ndcg@10"],
        "per_segment": report["groups"]["segment"],
        "segments": doc["segments"],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    a = _args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    started = time.perf_counter()
    out: dict[str, Any] = {
        "benchmark": "segments",
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
    }
    out["synthetic"] = _synthetic(a)
    print(json.dumps(out["synthetic"], indent=2), flush=True)
    if not a.skip_movielens:
        out["movielens"] = _movielens()
        for s in out["movielens"]["segments"]:
            label = f"segment {s['segment']}"
            ndcg = out["movielens"]["per_segment"].get(label, {}).get("ndcg@10")
            print(f"{s['summary']} NDCG@10 {ndcg:.4f}" if ndcg is not None else s["summary"])
    out["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(a.out, out)
    print(f"wrote {a.out}")
    return out


if __name__ == "__main__":
    main()
