"""Where a Recommend's time goes: the server's servicer (``_Personalization.Recommend``, the
whole request path below gRPC: edge checks, pseudonym, online state, towers, index, ranker,
diversity, the response message) called in-process under cProfile for ``--requests`` users;
and the recall of the index as served (its ``[serve] index_search`` settings) on those
requests' own user vectors: the candidates it returned against an exact search of the same
depth over the bundle's item vectors.

    python -m benchmarks.serving._profile BUNDLE STATE USERS.json OUT.json [--requests 300]

Run in its own process by ``benchmarks/serving/serve_load.py`` (the bundle is loaded once more
there); the pseudonymization key comes from ``TAILORED_PSEUDONYM_KEY``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]


class _Context:
    """The part of ``grpc.ServicerContext`` the servicer uses on a successful call."""

    def time_remaining(self) -> float:
        return 10.0

    def abort(self, code: Any, message: str) -> None:
        raise RuntimeError(f"{code}: {message}")


def in_process_service(bundle: Path, state: Path, cfg: Any) -> Any:
    """The server's ``Service`` over ``bundle`` in this process, with ``[serve]`` settings
    ``cfg`` and its online state in the SQLite file ``state``; the pseudonymization key
    comes from ``TAILORED_PSEUDONYM_KEY``. The caller closes it."""
    from tailored.data.pseudonym import Pseudonymizer, load_key
    from tailored.serve.bundles import LiveBundle
    from tailored.serve.server import Service
    from tailored.serve.sqlite_state import SQLiteState

    return Service(LiveBundle(bundle, cfg), SQLiteState(state), Pseudonymizer(load_key()), cfg)


def known_user_requests(n_users: int, requests: int, seed: int = 0) -> list[Any]:
    """``requests`` Recommend requests (k 10, surface home), each for another known user
    of the synthetic site of ``n_users`` (seeded)."""
    import numpy as np

    from benchmarks.serving._bundle import raw_user_id
    from tailored.serve.v1 import personalization_pb2 as pb

    users = np.random.default_rng(seed).choice(n_users, requests, replace=False)
    return [
        pb.RecommendRequest(user_id=raw_user_id(int(u), n_users), k=10, surface="home")
        for u in users
    ]


def _top(stats: pstats.Stats, key: str, n: int, calls: int) -> list[dict[str, Any]]:
    rows = []
    for (file, line, fn), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append(
            {
                "function": f"{Path(file).name}:{line}:{fn}",
                "calls_per_request": round(ncalls / calls, 2),
                "tottime_ms_per_request": round(tottime * 1000 / calls, 4),
                "cumtime_ms_per_request": round(cumtime * 1000 / calls, 4),
            }
        )
    rows.sort(key=lambda r: -r[f"{key}_ms_per_request"])
    return rows[:n]


def record_user_vectors(service: Any, servicer: Any, reqs: list[Any], ctx: _Context) -> Any:
    """The user vectors these requests search the index with, float32 [R, d]: their
    Recommend calls again, with the bundle's ``retrieve`` wrapped to record its queries."""
    import numpy as np

    bundle = service.bundle.current.bundle
    vectors: list[Any] = []
    retrieve = bundle.retrieve

    def recording(emb: Any, n: int, exclude: Any = None) -> Any:
        vectors.append(np.array(emb, np.float32))
        return retrieve(emb, n, exclude)

    bundle.retrieve = recording
    try:
        for r in reqs:
            servicer.Recommend(r, ctx)
    finally:
        bundle.retrieve = retrieve
    if not vectors:
        raise RuntimeError("no request reached the index (all popular or cold start?)")
    return np.concatenate(vectors)


class ExactTruth:
    """The exact top ``depth`` of queries ``q`` over the bundle's item vectors, and the
    recall of any index's answers against it: strict (the exact top ids found) and tolerant
    (ann-benchmarks: a hit scores within 1e-3 of the exact ``depth``-th best)."""

    def __init__(self, bundle: Any, q: Any, depth: int) -> None:
        import numpy as np

        from tailored.retrieval import ExactIndex

        self.items = np.ascontiguousarray(bundle.item_embeddings[1:], np.float32)
        self.ids = np.arange(1, len(self.items) + 1, dtype=np.int64)
        self.q, self.depth = q, depth
        self.index = ExactIndex(self.items.shape[1])
        self.index.build(self.items, self.ids)
        self.scores, self.found = self.index.search(q, depth)

    def recall(self, index: Any) -> dict[str, float]:
        import numpy as np

        from tailored.retrieval import tolerant_recall

        found = index.search(self.q, self.depth)[1]
        strict = np.mean(
            [np.isin(t[t >= 0], f).mean() for t, f in zip(self.found, found, strict=True)]
        )
        tolerant = tolerant_recall(found, self.scores, self.items, self.ids, self.q)
        return {"recall": round(float(strict), 4), "recall_tolerant": round(tolerant, 4)}


def _served_recall(
    service: Any, servicer: Any, reqs: list[Any], ctx: _Context, depth: int
) -> dict[str, Any]:
    """Recall@``depth`` of the index as served, on the user vectors these requests searched
    with, without exclusions on either side (:class:`ExactTruth`)."""
    bundle = service.bundle.current.bundle
    q = record_user_vectors(service, servicer, reqs, ctx)
    return {
        **bundle.index.describe(),
        "queries": len(q),
        "depth": depth,
        **ExactTruth(bundle, q, depth).recall(bundle.index),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("state", type=Path)
    p.add_argument("users", type=Path, help="JSON list of raw user ids")
    p.add_argument("out", type=Path)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--config", type=Path, help="a TOML file with a [serve] table")
    args = p.parse_args(argv)

    from tailored.config import load_serve_config
    from tailored.serve.server import _Personalization
    from tailored.serve.v1 import personalization_pb2 as pb

    cfg = load_serve_config(args.config, overrides={"clock": "bundle"})
    service = in_process_service(args.bundle, args.state, cfg)
    servicer = _Personalization(service)
    users = json.loads(args.users.read_text())
    reqs = [
        pb.RecommendRequest(user_id=users[i % len(users)], k=args.k, surface="home")
        for i in range(args.requests)
    ]
    ctx = _Context()
    for r in reqs[:20]:  # warm: first calls of each stage
        servicer.Recommend(r, ctx)
    start = time.perf_counter()
    for r in reqs:
        servicer.Recommend(r, ctx)
    plain = (time.perf_counter() - start) / len(reqs)
    served = _served_recall(service, servicer, reqs, ctx, cfg.candidates)
    prof = cProfile.Profile()
    prof.enable()
    for r in reqs:
        servicer.Recommend(r, ctx)
    prof.disable()
    stats = pstats.Stats(prof)
    out = {
        "requests": len(reqs),
        "servicer_ms_per_request_unprofiled": round(plain * 1000, 3),
        "served_index": served,
        "top_by_cumtime": _top(stats, "cumtime", 30, len(reqs)),
        "top_by_tottime": _top(stats, "tottime", 20, len(reqs)),
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    service.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
