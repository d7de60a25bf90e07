"""What a page of six modules costs against one Recommend, on the 1M-item bundle.

One ``tailored serve`` process on the serving benchmark's 1M-item bundle
(:mod:`benchmarks.serving._bundle`, built as ``serve_load`` builds it) with a SQLite state.
Each of ``--concurrency`` client threads (one connection each) alternates, for random users
of the site, a ``Recommend`` of ``--k`` items and a ``Page`` of six modules of ``--k`` items
each (recommended, trending, because you watched, similar to a popular item, and two
categories: the largest attribute value and a middling one), for ``--seconds`` after a
warm-up. The server runs an experiment that orders half the users' pages by the site's
order (``fixed``) and half by the contextual bandit (``bandit``, epsilon-greedy over the
user's segment), so that a page's ordering policy is timed beside the other in the same run;
during the warm-up each page's first module gets a click through ``Track``, which gives the
bandit statistics to solve. All RPCs meet the same machine at the same time; their latencies
are reported side by side (pages by the policy that answered). In process, each module's
source is also timed alone (the Recommender's calls, no gRPC), and the bandit's ordering of
six modules, to say where a page's time goes.

    python -m benchmarks.serving.page_latency        # writes results/page_latency.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.serving._bundle import KEY, ensure_bundle, env, raw_user_id
from benchmarks.serving._procs import ServerProcess, _serving_port
from benchmarks.serving.serve_load import _args as serve_load_args
from benchmarks.serving.serve_load import sizes_of
from tailored.paths import write_json_atomic
from tests.experiments.helpers import experiment_toml

__all__ = ["main"]

# the serve_load defaults run of RESULTS.md: the bundle this benchmark reuses
_BUNDLE_ARGS = ["--train-minutes", "1", "--final-eval-users", "2000"]
_BUNDLE_ARGS += ["--ranker-users", "3000", "--ranker-epochs", "2"]


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serving.page_latency", description=__doc__
    )
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--k", type=int, default=10, help="items per module, and Recommend's k")
    p.add_argument("--out", type=Path, default=RESULTS / "page_latency.json")
    return p.parse_args(argv)


def _modules(values: dict[str, np.ndarray], popular_item: str) -> list[Any]:
    from tailored.serve.v1 import personalization_pb2 as pb

    by_size = sorted(values, key=lambda v: -len(values[v]))
    big, middling = by_size[0], by_size[len(by_size) // 2]
    return [
        pb.PageModule(id="for-you", type="recommended"),
        pb.PageModule(id="trending", type="trending"),
        pb.PageModule(id="because", type="because_you_watched"),
        pb.PageModule(id="similar", type="similar", param=popular_item),
        pb.PageModule(id="big-category", type="category", param=big),
        pb.PageModule(id="middling-category", type="category", param=middling),
    ]


def _in_process(version: Path, users: list[str], modules: list[Any], k: int) -> dict[str, Any]:
    """Each module source's time alone (ms, median over users), and a whole page's."""
    from tailored.config import load_serve_config
    from tailored.data.pseudonym import Pseudonymizer
    from tailored.serve.bundles import load_recommender
    from tailored.serve.page import ModuleSpec, _fill, build_page
    from tailored.serve.recommender import Request

    rec = load_recommender(version, load_serve_config(overrides={"clock": "bundle"}))
    key = Pseudonymizer(bytes.fromhex(KEY))
    now = float(rec.bundle.last_event_time)
    specs = [ModuleSpec(m.id, m.type, m.param) for m in modules]
    times: dict[str, list[float]] = {name: [] for name in [s.id for s in specs]}
    times["page"], times["recommend"], times["bandit_order"] = [], [], []
    bandit = _taught_bandit(specs)
    rng = np.random.default_rng(0)
    pairs = [(s.id, s.type) for s in specs]
    for u in users:
        req = Request(user=key(u), k=k, surface="home", time=now, personalized=True)
        for spec in specs:
            t0 = time.perf_counter()
            _fill(rec, req, spec, ())
            times[spec.id].append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        build_page(rec, req, specs, policy="fixed")
        times["page"].append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        rec.recommend(replace(req))
        times["recommend"].append((time.perf_counter() - t0) * 1000)
        context = {"bias": 1.0, f"segment=x:{rec.segment(req)}": 1.0}
        t0 = time.perf_counter()
        bandit.order(pairs, context, rng)
        times["bandit_order"].append((time.perf_counter() - t0) * 1000)
    return {name: round(float(np.median(v)), 3) for name, v in times.items()}


def _taught_bandit(specs: Sequence[Any]) -> Any:
    """A bandit over the modules with statistics from 20,000 random pages of 8 segments."""
    from tailored.experiments.bandit import (
        ArmStats,
        BanditSettings,
        LinearBandit,
        module_features,
    )

    rng = np.random.default_rng(1)
    observations = []
    for _ in range(20_000):
        ctx = {"bias": 1.0, f"segment=x:{int(rng.integers(8))}": 1.0}
        for pos, j in enumerate(rng.permutation(len(specs))):
            x = module_features((specs[j].id, specs[j].type), ctx, pos)
            observations.append((x, float(rng.random() < 0.2)))
    stats = ArmStats.of(observations)
    return LinearBandit(stats, BanditSettings(exploration="epsilon", epsilon=0.1))


def _load(
    target: str,
    users: list[str],
    modules: list[Any],
    k: int,
    seconds: float,
    threads: int,
    *,
    teach: bool = False,
) -> dict[str, np.ndarray]:
    """Recommend and Page alternated; pages timed by the policy that ordered them. With
    ``teach``, a click on each page's first module (not timed)."""
    from tailored.serve.v1 import personalization_pb2 as pb
    from tailored.serve.v1 import personalization_pb2_grpc as pb_grpc

    names = ("recommend", "page_fixed", "page_bandit")
    got: dict[str, list[float]] = {name: [] for name in names}
    lock = threading.Lock()

    def client(i: int) -> None:
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        stub = pb_grpc.PersonalizationStub(channel)
        rng = np.random.default_rng(i)
        mine: dict[str, list[float]] = {name: [] for name in names}
        deadline = time.perf_counter() + seconds
        turn = i % 2 == 0
        while time.perf_counter() < deadline:
            user = users[int(rng.integers(len(users)))]
            t0 = time.perf_counter()
            if turn:
                stub.Recommend(pb.RecommendRequest(user_id=user, k=k, surface="home"), timeout=30)
                mine["recommend"].append((time.perf_counter() - t0) * 1000)
            else:
                resp = stub.Page(
                    pb.PageRequest(user_id=user, page_type="home", modules=modules, k=k),
                    timeout=30,
                )
                mine[f"page_{resp.policy}"].append((time.perf_counter() - t0) * 1000)
                if teach and resp.modules:
                    top = resp.modules[0]
                    click = pb.Event(
                        user_id=user,
                        item_id=top.items[0].item_id,
                        type=pb.CLICK,
                        request_id=resp.request_id,
                        module=top.id,
                    )
                    stub.Track(pb.TrackRequest(events=[click]), timeout=30)
            turn = not turn
        channel.close()
        with lock:
            for name, xs in mine.items():
                got[name] += xs

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {name: np.array(xs) for name, xs in got.items()}


def _median_difference_ci(a: np.ndarray, b: np.ndarray, n: int = 2000) -> list[float]:
    """A bootstrap 95% interval of median(b) - median(a), ms."""
    if not len(a) or not len(b):
        return []
    rng = np.random.default_rng(0)
    d = [np.median(rng.choice(b, len(b))) - np.median(rng.choice(a, len(a))) for _ in range(n)]
    return [round(float(np.percentile(d, 2.5)), 3), round(float(np.percentile(d, 97.5)), 3)]


def _stats(x: np.ndarray) -> dict[str, Any]:
    return {
        "n": len(x),
        "p50_ms": round(float(np.median(x)), 3),
        "p90_ms": round(float(np.percentile(x, 90)), 3),
        "p99_ms": round(float(np.percentile(x, 99)), 3),
        "mean_ms": round(float(np.mean(x)), 3),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from tailored.config import load_serve_config
    from tailored.serve.bundles import load_recommender

    a = _args(argv)
    built = ensure_bundle(sizes_of(serve_load_args(_BUNDLE_ARGS)), versions=1)
    version = built.versions[0]
    rec = load_recommender(version, load_serve_config(overrides={"clock": "bundle"}))
    popular_item = str(rec.bundle.item_ids[int(rec.popular[0]) - 1])
    modules = _modules(rec.by_value, popular_item)
    del rec
    users = [raw_user_id(i, built.n_users) for i in range(0, built.n_users, 7)]
    in_process = _in_process(version, users[:300], modules, a.k)
    print(f"  in process (ms, median): {in_process}", flush=True)
    with tempfile.TemporaryDirectory(prefix="page-latency.") as d:
        tmp = Path(d)
        layout = tmp / "experiments.toml"
        layout.write_text(
            experiment_toml(
                "layout",
                "page",
                "latency-1",
                [
                    ("fixed", 0.5, {"page_policy": "fixed"}),
                    ("bandit", 0.5, {"page_policy": "bandit"}),
                ],
            )
        )
        cmd = [sys.executable, "-m", "tailored.cli", "serve", str(version), "--port", "0"]
        cmd += ["--state", f"sqlite:///{tmp / 'state.db'}", "--clock", "bundle", "--no-watch"]
        cmd += ["--experiments", str(layout)]
        server = ServerProcess(cmd, tmp / "server.log", env(), _serving_port).wait_ready(900)
        try:
            _load(server.target, users, modules, a.k, a.warmup, a.concurrency, teach=True)
            got = _load(server.target, users, modules, a.k, a.seconds, a.concurrency)
        finally:
            server.stop()
    out = {
        "benchmark": "page_latency",
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "bundle": str(version),
        "items": int(built.info.get("items", 0)) or None,
        "modules": [{"id": m.id, "type": m.type, "param": m.param} for m in modules],
        "recommend": _stats(got["recommend"]),
        "page": _stats(np.concatenate([got["page_fixed"], got["page_bandit"]])),
        "page_fixed": _stats(got["page_fixed"]),
        "page_bandit": _stats(got["page_bandit"]),
        "page_over_recommend_p50": round(
            float(
                np.median(np.concatenate([got["page_fixed"], got["page_bandit"]]))
                / np.median(got["recommend"])
            ),
            2,
        ),
        "bandit_over_fixed_p50_ms": round(
            float(np.median(got["page_bandit"]) - np.median(got["page_fixed"])), 3
        ),
        "bandit_over_fixed_p50_ms_ci95": _median_difference_ci(
            got["page_fixed"], got["page_bandit"]
        ),
        "in_process_ms": in_process,
    }
    write_json_atomic(a.out, out)
    print(
        f"  recommend: {out['recommend']}\n  page (fixed): {out['page_fixed']}\n"
        f"  page (bandit): {out['page_bandit']}"
    )
    print(f"wrote {a.out}")
    return out


if __name__ == "__main__":
    main()
