"""The index at serving depth on the serving benchmark's own embeddings: recall against
exact search, and the time of one search, as nprobe varies, for the bundle's IVF-Flat index
and for an IVF-PQ index with exact re-scoring (the previous default) built in the same run
over the same item vectors.

The queries are the user vectors of ``--requests`` Recommend calls for known users of the
synthetic site (the servicer called in-process, as :mod:`benchmarks.serving._profile` does),
so they are what serving searches with. Searches are batch 1 on one FAISS thread at depth
``--depth`` (the ranker's candidates), through the public ``ItemIndex.search``; each time is
the best of ``--rounds`` passes over the queries. Exact search is the baseline.
``--hnsw-ef-search`` adds an HNSW index (built on two threads: minutes at 1M items), and
``--fastscan-nprobe`` an IVF-PQ fast-scan index (4-bit codes, ``--fastscan-m`` of them,
scanned with SIMD) with exact re-scoring of ``k * k_factor`` (FAISS's
``IndexRefineFlat(IndexIVFPQFastScan)``; not a kind tailored builds, measured here to see
whether it would pay).

    python -m benchmarks.serving.serve_index_sweep            # the cached 1M-item bundle

JSON to ``benchmarks/results/serve_index_sweep.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.serving._bundle import KEY, ensure_bundle
from benchmarks.serving._profile import (
    ExactTruth,
    _Context,
    in_process_service,
    known_user_requests,
    record_user_vectors,
)
from benchmarks.serving.serve_load import _args as serve_load_args
from benchmarks.serving.serve_load import sizes_of
from tailored.paths import write_json_atomic

__all__ = ["main"]

OUT = RESULTS / "serve_index_sweep.json"


def _ms_per_search(index: Any, q: np.ndarray, depth: int, rounds: int) -> float:
    for row in q[:10]:  # warm
        index.search(row[None], depth)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for row in q:
            index.search(row[None], depth)
        best = min(best, (time.perf_counter() - start) / len(q))
    return round(best * 1000, 4)


class _Positions:
    """A raw FAISS index searched as an ``ItemIndex`` is (ids = position + 1, as the
    bundle's item rows)."""

    def __init__(self, index: Any) -> None:
        self.index = index

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, pos = self.index.search(np.ascontiguousarray(q, np.float32), k)
        return scores, np.where(pos >= 0, pos + 1, -1)


def _fastscan(
    a: argparse.Namespace, truth: Any, q: np.ndarray, nlist: int, build_seconds: dict[str, float]
) -> list[dict[str, Any]]:
    import faiss

    from tailored.retrieval import set_num_threads

    d = q.shape[1]
    ivf = faiss.IndexIVFPQFastScan(
        faiss.IndexFlatIP(d), d, nlist, a.fastscan_m, 4, faiss.METRIC_INNER_PRODUCT
    )
    sample = np.random.default_rng(1).choice(
        len(truth.items), min(len(truth.items), 200_000), replace=False
    )
    set_num_threads(2)  # the build on both cores, the searches on one
    built_at = time.perf_counter()
    ivf.train(truth.items[np.sort(sample)])
    refine = faiss.IndexRefineFlat(ivf)  # trained first: it takes is_trained from ivf
    refine.add(truth.items)
    build_seconds["ivfpq_fastscan"] = round(time.perf_counter() - built_at, 1)
    set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for nprobe in a.fastscan_nprobe:
        for k_factor in a.fastscan_k_factor:
            ivf.nprobe, refine.k_factor = nprobe, float(k_factor)
            index = _Positions(refine)
            rows.append(
                {
                    "kind": "ivfpq_fastscan",
                    "m": a.fastscan_m,
                    "nbits": 4,
                    "nprobe": nprobe,
                    "k_factor": k_factor,
                    **truth.recall(index),
                    "ms": _ms_per_search(index, q, a.depth, a.rounds),
                }
            )
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--depth", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--nprobe", type=int, nargs="*", default=[16, 32, 64, 128, 256, 512, 2048])
    p.add_argument("--ivfpq-nprobe", type=int, nargs="*", default=[128, 512, 2048])
    p.add_argument("--ivfpq-k-factor", type=int, default=16)
    p.add_argument(
        "--hnsw-ef-search",
        type=int,
        nargs="*",
        default=[],
        help="also build HNSW (M 32, minutes at 1M items) and search with these efSearch",
    )
    p.add_argument("--hnsw-ef-construction", type=int, default=80)
    p.add_argument("--fastscan-nprobe", type=int, nargs="*", default=[])
    p.add_argument("--fastscan-k-factor", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--fastscan-m", type=int, default=32, help="4-bit codes per vector")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    os.environ["TAILORED_PSEUDONYM_KEY"] = KEY  # the benchmark's key, as serve_load's
    from tailored.config import load_serve_config
    from tailored.retrieval import HNSWIndex, IVFFlatIndex, IVFPQIndex, set_num_threads
    from tailored.serve.server import _Personalization

    start = time.perf_counter()
    built = ensure_bundle(sizes_of(serve_load_args([])), versions=1)  # serve_load's bundle
    set_num_threads(1)
    cfg = load_serve_config(None, overrides={"clock": "bundle"})
    with tempfile.TemporaryDirectory(prefix="serve_index_sweep.") as tmp:
        service = in_process_service(built.versions[0], Path(tmp) / "state.db", cfg)
        try:
            reqs = known_user_requests(built.n_users, a.requests)
            q = record_user_vectors(service, _Personalization(service), reqs, _Context())
            bundle = service.bundle.current.bundle
            truth = ExactTruth(bundle, q, a.depth)
            rows: list[dict[str, Any]] = [
                {"kind": "exact", "ms": _ms_per_search(truth.index, q[:30], a.depth, 1)}
            ]
            print(rows[-1], flush=True)
            flat = bundle.index
            if not isinstance(flat, IVFFlatIndex):
                raise SystemExit(f"{built.versions[0]}: a {flat.kind} index, not ivfflat")
            for nprobe in a.nprobe:
                flat.set_search_params(nprobe=nprobe)
                rows.append(
                    {
                        "kind": "ivfflat",
                        "nprobe": nprobe,
                        **truth.recall(flat),
                        "ms": _ms_per_search(flat, q, a.depth, a.rounds),
                    }
                )
                print(rows[-1], flush=True)
            sizes_bytes = {"ivfflat": flat.describe()["bytes"]}
            build_seconds: dict[str, float] = {}
            pq = IVFPQIndex(q.shape[1], nlist=int(flat.params["nlist"]), m=16, nbits=8)
            if a.ivfpq_nprobe:
                built_at = time.perf_counter()
                pq.build(truth.items, truth.ids)
                build_seconds["ivfpq"] = round(time.perf_counter() - built_at, 1)
                sizes_bytes["ivfpq"] = pq.describe()["bytes"]
            for nprobe in a.ivfpq_nprobe:
                pq.set_search_params(nprobe=nprobe, k_factor=a.ivfpq_k_factor)
                rows.append(
                    {
                        "kind": "ivfpq",
                        "nprobe": nprobe,
                        "k_factor": a.ivfpq_k_factor,
                        **truth.recall(pq),
                        "ms": _ms_per_search(pq, q, a.depth, a.rounds),
                    }
                )
                print(rows[-1], flush=True)
            if a.fastscan_nprobe:
                rows += _fastscan(a, truth, q, int(flat.params["nlist"]), build_seconds)
            if a.hnsw_ef_search:
                hnsw = HNSWIndex(q.shape[1], M=32, efConstruction=a.hnsw_ef_construction)
                set_num_threads(2)  # the build on both cores, the searches on one
                built_at = time.perf_counter()
                hnsw.build(truth.items, truth.ids)
                build_seconds["hnsw"] = round(time.perf_counter() - built_at, 1)
                set_num_threads(1)
                for ef in a.hnsw_ef_search:
                    hnsw.set_search_params(efSearch=ef)
                    rows.append(
                        {
                            "kind": "hnsw",
                            "efSearch": ef,
                            **truth.recall(hnsw),
                            "ms": _ms_per_search(hnsw, q, a.depth, a.rounds),
                        }
                    )
                    print(rows[-1], flush=True)
                sizes_bytes["hnsw"] = hnsw.describe()["bytes"]
        finally:
            service.close()
    result = {
        "benchmark": "serve_index_sweep",
        "settings": vars(a) | {"out": str(a.out)},
        "machine": machine(),
        "bundle": str(built.versions[0]),
        "queries": len(q),
        "build_seconds": build_seconds,
        "index_bytes": sizes_bytes,
        "runs": rows,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(a.out, result)
    print(f"-> {a.out}")
    return result


if __name__ == "__main__":
    main()
