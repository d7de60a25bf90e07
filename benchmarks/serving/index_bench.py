"""Item index benchmark: build time, memory, recall@k against exact search, and queries/s.

``python -m benchmarks.serving.index_bench`` (1M x 64 seeded clustered unit vectors, 1,000 held-out
queries; ``--vectors items.npy`` indexes a float [N, d] array instead, holding out its last
``--queries`` rows). For each kind: the exact FAISS index (the baseline, measured in the same
run), the index :func:`choose_index` picks for this catalog ("auto"), HNSW, and the torch
top-k backend. Queries/s at batch 1 on 1 thread and at batch 256 on 2 threads go through the
public ``search`` (validation and id mapping included), best of 3 rounds. JSON to
``benchmarks/results/index_bench.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from tailored.retrieval import ItemIndex, choose_index, set_num_threads
from tailored.retrieval.synthetic import clustered_catalog

__all__ = ["main"]

OUT = RESULTS / "index_bench.json"
ROUNDS = 3


def _rss() -> int:
    """Resident set size of this process now, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _qps(index: ItemIndex, queries: np.ndarray, k: int, batch: int, threads: int) -> float:
    set_num_threads(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    index.search(queries[:batch], k)  # warm-up
    best = float("inf")
    for _ in range(ROUNDS):  # the best round: the machine is shared, slow rounds are noise
        start = time.perf_counter()
        for i in range(0, len(queries), batch):
            index.search(queries[i : i + batch], k)
        best = min(best, time.perf_counter() - start)
    return len(queries) / best


def _size(index: ItemIndex) -> int:
    info = index.describe()
    return int(info.get("bytes", len(index) * index.dim * 4 + len(index) * 8))


def run_kind(
    label: str, index: ItemIndex, data: Any, truth: np.ndarray | None, args: argparse.Namespace
) -> tuple[dict[str, Any], np.ndarray]:
    set_num_threads(args.build_threads)
    gc.collect()
    rss0, start = _rss(), time.perf_counter()
    index.build(data.vectors, data.ids)
    build_s = time.perf_counter() - start
    row: dict[str, Any] = {"label": label, **index.describe(), "build_s": round(build_s, 2)}
    row["index_bytes"] = _size(index)
    row["rss_delta_bytes"] = _rss() - rss0
    set_num_threads(2)
    _, found = index.search(data.queries, args.k)
    if truth is not None:
        hits = [np.isin(t[t >= 0], f).mean() for t, f in zip(truth, found, strict=True)]
        row[f"recall@{args.k}"] = round(float(np.mean(hits)), 4)
    single = data.queries[: args.single_queries if index.exact else len(data.queries)]
    row["qps_batch1_1thread"] = round(_qps(index, single, args.k, 1, 1), 1)
    row["qps_batch256_2threads"] = round(_qps(index, data.queries, args.k, 256, 2), 1)
    if label == "auto" or args.sweep:
        row["sweep"] = _sweep(index, data.queries, truth, args) if truth is not None else []
    print(json.dumps({k: v for k, v in row.items() if k != "sweep"}), flush=True)
    return row, found


def _sweep(index: Any, queries: np.ndarray, truth: np.ndarray, args: argparse.Namespace) -> list:
    """Recall and batch-1 speed over the search-time knob, without rebuilding."""
    knob = {"ivfflat": "nprobe", "ivfpq": "nprobe", "hnsw": "efSearch"}.get(index.kind)
    if knob is None:
        return []
    base, out = index.params[knob], []
    for value in (base // 4, base // 2, base, base * 2):
        index.set_search_params(**{knob: max(1, value)})
        _, found = index.search(queries, args.k)
        recall = np.mean([np.isin(t[t >= 0], f).mean() for t, f in zip(truth, found, strict=True)])
        qps = round(_qps(index, queries, args.k, 1, 1), 1)
        out.append({knob: max(1, value), f"recall@{args.k}": round(float(recall), 4), "qps": qps})
        print(f"  {knob}={value}: recall {recall:.4f}, {qps:.0f} q/s", flush=True)
    index.set_search_params(**{knob: base})
    return out


def _data(args: argparse.Namespace) -> Any:
    if args.vectors is None:
        clusters = args.clusters or max(10, int(np.sqrt(args.n)))
        return clustered_catalog(args.n, args.dim, args.queries, n_clusters=clusters, seed=0)
    arr = np.load(args.vectors, allow_pickle=False).astype(np.float32)
    n = arr.shape[0] - args.queries
    return argparse.Namespace(vectors=arr[:n], ids=np.arange(n, dtype=np.int64), queries=arr[n:])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="catalog size")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--clusters", type=int, default=0, help="default sqrt(n)")
    p.add_argument("--queries", type=int, default=1000, help="held-out queries")
    p.add_argument("--single-queries", type=int, default=200, help="batch-1 queries, exact")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--vectors", type=Path, help=".npy float [N, d] instead of synthetic")
    p.add_argument("--kinds", nargs="+", default=["exact", "auto", "hnsw", "torch"])
    p.add_argument("--hnsw-ef-construction", type=int, default=None)
    p.add_argument("--build-threads", type=int, default=2)
    p.add_argument("--sweep", action="store_true", help="sweep the knob of every kind")
    p.add_argument("--out", type=Path, default=OUT)
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    data = _data(args)
    n, dim = data.vectors.shape
    print(f"{n:,} x {dim} vectors, {len(data.queries):,} queries", flush=True)
    rows, truth = [], None
    for label in ["exact", *(kind for kind in args.kinds if kind != "exact")]:
        overrides: dict[str, Any] = {"kind": "auto" if label == "auto" else label}
        if label == "hnsw" and args.hnsw_ef_construction:
            overrides["efConstruction"] = args.hnsw_ef_construction
        choice = choose_index(n, dim, overrides)
        row, found = run_kind(label, choice.create(dim), data, truth, args)
        rows.append({**row, "reason": choice.reason})
        truth = found if label == "exact" else truth
        gc.collect()
    exact_qps = rows[0]["qps_batch1_1thread"]
    for row in rows:
        row["speedup_batch1_vs_exact"] = round(row["qps_batch1_1thread"] / exact_qps, 1)
    result = {
        "benchmark": "index_bench",
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(),
        "n_items": n,
        "dim": dim,
        "wall_s": round(time.perf_counter() - start, 1),
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
