"""Overload: Recommend at concurrencies beyond what the server admits, the answered calls'
latency and the refused calls counted by the client and by the server's /metrics.

``tailored serve`` (default ``[serve]``: ``workers`` = ``max_concurrent_rpcs`` = 8) on the
serving benchmark's cached bundle (:mod:`benchmarks.serving._bundle`; by default the small
``--smoke`` one of :mod:`benchmarks.serving.serve_load`, so that it runs in minutes), with
``--metrics-port``. For each concurrency, that many client threads (one connection each)
call Recommend back to back for ``--seconds``; the first concurrency (8, within what the
server admits) is the baseline of the same run. Per level: calls, answered, refused, the
answered calls' p50/p99 and rate, and the server's ``tailored_requests_total`` for
Recommend by code over the same interval: the refusals must be equal.

    python -m benchmarks.serving.overload                   # writes results/overload.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.serving._bundle import Sizes, ensure_bundle, env, raw_user_id
from benchmarks.serving._procs import ServerProcess, _serving_port, free_port
from tailored.paths import write_json_atomic

__all__ = ["main"]


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving.overload", description=__doc__)
    p.add_argument("--concurrency", default="8,64,128", help="comma-separated; the first: baseline")
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds per level")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--items", type=int, default=5000, help="the cached bundle's catalogue")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--server-config", type=Path, help="a TOML file with a [serve] table")
    p.add_argument("--out", type=Path, default=RESULTS / "overload.json")
    return p.parse_args(argv)


def _recommend_counts(metrics_port: int) -> dict[str, float]:
    """The server's ``tailored_requests_total`` for Recommend, by code, and the sum and count
    of its ``tailored_request_seconds`` (the time inside the servicer) as ``_sum``, ``_count``."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("method") != "Recommend":
                continue
            if s.name == "tailored_requests_total":
                out[s.labels["code"]] = float(s.value)
            elif s.name in ("tailored_request_seconds_sum", "tailored_request_seconds_count"):
                out[s.name.rsplit("_", 1)[1]] = float(s.value)
    return out


def _load(target: str, concurrency: int, seconds: float, k: int, n_users: int) -> dict[str, Any]:
    """``concurrency`` threads calling Recommend back to back; every call's code and time."""
    from tailored.serve.v1 import personalization_pb2 as pb
    from tailored.serve.v1 import personalization_pb2_grpc as pb_grpc

    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    start = threading.Event()
    deadline: list[float] = []

    def client(i: int) -> None:
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        stub = pb_grpc.PersonalizationStub(channel)
        mine: list[tuple[str, float]] = []
        rng = np.random.default_rng(i)
        start.wait()
        while time.perf_counter() < deadline[0]:
            req = pb.RecommendRequest(
                user_id=raw_user_id(int(rng.integers(n_users)), n_users), k=k, surface="home"
            )
            t0 = time.perf_counter()
            try:
                stub.Recommend(req, timeout=30)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
            mine.append((code, time.perf_counter() - t0))
        channel.close()
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # the channels connect
    deadline.append(time.perf_counter() + seconds)
    start.set()
    for t in threads:
        t.join()
    ok = np.array([s for c, s in results if c == "OK"]) * 1000
    codes: dict[str, int] = {}
    for c, _ in results:
        codes[c] = codes.get(c, 0) + 1
    return {
        "concurrency": concurrency,
        "calls": len(results),
        "codes": codes,
        "answered_per_second": round(len(ok) / seconds, 1),
        "answered_p50_ms": round(float(np.percentile(ok, 50)), 2) if len(ok) else None,
        "answered_p99_ms": round(float(np.percentile(ok, 99)), 2) if len(ok) else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _args(argv)
    levels = [int(c) for c in a.concurrency.split(",")]
    sizes = Sizes(a.users, a.items, 30.0, 1, 2.0, 500, 2, batch_size=1024)
    built = ensure_bundle(sizes, versions=1)
    metrics_port = free_port()
    rows = []
    with tempfile.TemporaryDirectory(prefix="overload.") as d:
        cmd = [sys.executable, "-m", "tailored.cli", "serve", str(built.versions[0]), "--port", "0"]
        cmd += ["--state", f"sqlite:///{d}/state.db", "--clock", "bundle", "--no-watch"]
        cmd += ["--metrics-port", str(metrics_port)]
        if a.server_config is not None:
            cmd += ["--config", str(a.server_config)]
        server = ServerProcess(cmd, Path(d) / "server.log", env(), _serving_port).wait_ready(900)
        try:
            for c in levels:
                before = _recommend_counts(metrics_port)
                row = _load(server.target, c, a.seconds, a.k, built.n_users)
                after = _recommend_counts(metrics_port)
                delta = {key: after.get(key, 0) - before.get(key, 0) for key in after}
                seconds, count = delta.pop("sum", 0.0), delta.pop("count", 0.0)
                # the answered calls' mean time inside the server: beside the client's p50,
                # what the client's own threads (on the same cores) add
                row["server_mean_ms"] = round(1000 * seconds / count, 2) if count else None
                server_codes = {code: int(v) for code, v in delta.items()}
                row["server_codes"] = {k: v for k, v in server_codes.items() if v}
                row["refusals_equal"] = row["codes"].get("RESOURCE_EXHAUSTED", 0) == (
                    server_codes.get("RESOURCE_EXHAUSTED", 0)
                )
                rows.append(row)
                print(row, flush=True)
        finally:
            server.stop()
    result = {
        "benchmark": "overload",
        "machine": machine(),
        "bundle": str(built.versions[0]),
        "items": a.items,
        "server_config": str(a.server_config) if a.server_config else "default [serve]",
        "seconds": a.seconds,
        "k": a.k,
        "levels": rows,
        "method": "one connection per client thread, Recommend back to back; latency = "
        "perf_counter around each call; the first level is the baseline",
    }
    write_json_atomic(a.out, result)
    print(f"-> {a.out}")
    return result


if __name__ == "__main__":
    main()
