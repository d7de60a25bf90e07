"""Would batching concurrent Recommend calls pay? The request path's three native calls (the
user tower and the ranker in onnxruntime, the index search in FAISS), each timed on the
inputs of R real requests at once against one request at a time, per request.

The inputs are those of ``--requests`` Recommend calls for known users of the synthetic
site, recorded from the servicer called in-process (as :mod:`benchmarks.serving._profile`
does) on the serving benchmark's cached 1M-item bundle, with the ``[serve]`` settings of
``--server-config`` (one onnxruntime and one FAISS thread, as each server process has).
Each time is the best of 3 passes of ``--calls`` calls; the index searches as deep as the
requests did (the ranker's 200 candidates and room for the user's exclusions).

    python -m benchmarks.serving.serve_batching

JSON to ``benchmarks/results/serve_batching.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.serving._bundle import KEY, ensure_bundle
from benchmarks.serving._profile import _Context, in_process_service, known_user_requests
from benchmarks.serving.serve_load import _args as serve_load_args
from benchmarks.serving.serve_load import sizes_of

__all__ = ["main"]

OUT = RESULTS / "serve_batching.json"
CONFIG = Path(__file__).resolve().parent / "configs" / "processes2.toml"


def _ms(call: Callable[[], Any], calls: int) -> float:
    for _ in range(5):  # warm
        call()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1000


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--server-config", type=Path, default=CONFIG)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    if max(a.batches) > a.requests:
        p.error("--batches: each at most --requests")
    os.environ["TAILORED_PSEUDONYM_KEY"] = KEY  # the benchmark's key, as serve_load's
    from tailored.config import load_serve_config
    from tailored.data.features import MAX_MULTI, FeatureTable
    from tailored.paths import write_json_atomic
    from tailored.serve.server import _Personalization

    start = time.perf_counter()
    built = ensure_bundle(sizes_of(serve_load_args([])), versions=1)  # serve_load's bundle
    cfg = load_serve_config(a.server_config, overrides={"clock": "bundle"})
    with tempfile.TemporaryDirectory(prefix="serve_batching.") as tmp:
        service = in_process_service(built.versions[0], Path(tmp) / "state.db", cfg)
        try:
            bundle: Any = service.bundle.current.bundle  # its methods are wrapped below
            towers: list[dict[str, Any]] = []
            ranks: list[dict[str, Any]] = []
            depths: list[int] = []
            user_embeddings, rank, search = bundle.user_embeddings, bundle.rank, bundle.index.search

            def tower_in(**kw: Any) -> Any:
                towers.append(kw)
                return user_embeddings(**kw)

            def rank_in(**kw: Any) -> Any:
                ranks.append(kw)
                return rank(**kw)

            def search_in(q: Any, k: int, exclude: Any = None) -> Any:
                depths.append(k + max(len(e) for e in exclude) if exclude else k)
                return search(q, k, exclude)

            bundle.user_embeddings, bundle.rank, bundle.index.search = tower_in, rank_in, search_in
            servicer = _Personalization(service)
            try:
                for req in known_user_requests(built.n_users, a.requests):
                    servicer.Recommend(req, _Context())
            finally:
                bundle.user_embeddings, bundle.rank, bundle.index.search = (
                    user_embeddings,
                    rank,
                    search,
                )
            if len(towers) < a.requests or len(ranks) < a.requests:
                raise SystemExit("some requests did not reach the towers (cold or popular)")
            queries = np.concatenate([user_embeddings(**t) for t in towers])
            depth = int(np.median(depths))
            width = min(r["candidates"].shape[1] for r in ranks)

            def stack(rows: list[dict[str, Any]], key: str) -> np.ndarray:
                return np.concatenate([r[key] for r in rows])

            runs = []
            for b in a.batches:
                tower = {k: stack(towers[:b], k) for k in towers[0]}
                chosen = ranks[:b]
                ranked = {
                    "users": FeatureTable(
                        np.concatenate([r["users"].categorical for r in chosen]),
                        np.zeros((b, 0, MAX_MULTI), np.int64),
                        np.concatenate([r["users"].numeric for r in chosen]),
                    ),
                    "context": stack(chosen, "context"),
                    "candidates": np.concatenate([r["candidates"][:, :width] for r in chosen]),
                    "dense": np.concatenate([r["dense"][:, :width] for r in chosen]),
                    "user_emb": stack(chosen, "user_emb"),
                }
                q = queries[:b]
                runs.append(
                    {
                        "batch": b,
                        "user_tower_ms_per_request": round(
                            _ms(partial(user_embeddings, **tower), a.calls) / b, 4
                        ),
                        "ranker_ms_per_request": round(
                            _ms(partial(rank, **ranked), a.calls) / b, 4
                        ),
                        "index_ms_per_request": round(
                            _ms(partial(search, q, depth), a.calls) / b, 4
                        ),
                    }
                )
                print(runs[-1], flush=True)
        finally:
            service.close()
    result = {
        "benchmark": "serve_batching",
        "settings": vars(a) | {"out": str(a.out), "server_config": str(a.server_config)},
        "server_config": a.server_config.read_text(),
        "machine": machine(),
        "bundle": str(built.versions[0]),
        "index": bundle.index.describe(),
        "index_depth": depth,
        "ranker_candidates": width,
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomic(a.out, result)
    print(f"-> {a.out}")
    return result


if __name__ == "__main__":
    main()
