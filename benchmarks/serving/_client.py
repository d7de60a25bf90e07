"""The load client of ``benchmarks/serving/serve_load.py``: a separate process (multiprocessing,
spawn) that takes commands over a pipe and drives a server on loopback from threads, each
making blocking stub calls in a closed loop for a fixed time.

Latencies are ``time.perf_counter`` around each call, in the client; a call counts when it
started after the warm-up and before the end. Errors are counted by gRPC status code.
No raw user id leaves this process except inside the acknowledged-events list that the
durability phase hands back to its parent (which compares, never logs them).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Self

__all__ = ["LoadClient", "LoadClients", "summarize"]

_CALL_TIMEOUT = 10.0


def summarize(
    latencies: list[float], window: float, errors: Counter[str], units: int
) -> dict[str, Any]:
    """Throughput and latency figures from per-call seconds (successful calls only)."""
    import numpy as np

    ms = np.asarray(latencies) * 1000
    out: dict[str, Any] = {
        "calls": len(ms),
        "window_seconds": round(window, 3),
        "qps": round(len(ms) / window, 1) if window > 0 else None,
        "errors": dict(errors),
        "error_total": int(sum(errors.values())),
    }
    if units != len(ms):
        out["units_per_second"] = round(units / window, 1) if window > 0 else None
    if len(ms):
        for name, q in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99)):
            out[name] = round(float(np.percentile(ms, q)), 3)
        out["mean_ms"] = round(float(ms.mean()), 3)
        out["max_ms"] = round(float(ms.max()), 3)
    return out


class _Loop:
    """``concurrency`` threads calling ``call(rng, thread)`` until the end or a stop; the call
    returns (units done, a tag to count, e.g. the response's strategy)."""

    def __init__(
        self, conn: Connection, concurrency: int, seconds: float, warmup: float, raw: bool = False
    ) -> None:
        self.conn = conn
        self.raw = raw
        self.concurrency = concurrency
        self.seconds = seconds
        self.warmup = warmup
        self.stop = threading.Event()

    def run(self, call: Callable[[random.Random, int], tuple[int, str]]) -> dict[str, Any]:
        import grpc

        start = time.perf_counter()
        warm_end = start + self.warmup
        end = warm_end + self.seconds
        lat: list[list[float]] = [[] for _ in range(self.concurrency)]
        errs: list[Counter[str]] = [Counter() for _ in range(self.concurrency)]
        tags: list[Counter[str]] = [Counter() for _ in range(self.concurrency)]
        units = [0] * self.concurrency

        def worker(t: int) -> None:
            rng = random.Random(1000 + t)
            while not self.stop.is_set():
                t0 = time.perf_counter()
                if t0 >= end:
                    break
                try:
                    n, tag = call(rng, t)
                except grpc.RpcError as e:
                    if t0 >= warm_end:
                        errs[t][e.code().name] += 1
                    time.sleep(0.01)  # a dead server refuses at once: do not spin
                    continue
                if t0 >= warm_end:
                    lat[t].append(time.perf_counter() - t0)
                    units[t] += n
                    tags[t][tag] += 1

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(self.concurrency)]
        for th in threads:
            th.start()
        stopped = end
        while time.perf_counter() < end:
            if self.conn.poll(0.05) and self.conn.recv() == "stop":
                stopped = time.perf_counter()
                self.stop.set()
                break
        self.stop.set()
        for th in threads:
            th.join()
        flat = [x for xs in lat for x in xs]
        out = summarize(flat, stopped - warm_end, sum(errs, Counter()), sum(units))
        out["concurrency"] = self.concurrency
        out["tags"] = dict(sum(tags, Counter()))
        if self.raw:  # for merging several client processes' loads (LoadClients)
            out["latencies_s"] = flat
            out["units"] = sum(units)
        return out


def _recommend(conn: Connection, cmd: dict[str, Any]) -> dict[str, Any]:
    import grpc

    from tailored.serve.v1 import personalization_pb2 as pb
    from tailored.serve.v1 import personalization_pb2_grpc as pb_grpc

    # connections > 1: that many connections (gRPC otherwise shares one per target), thread t
    # on connection t % n, as many site front-ends would; a server of several processes
    # gets each connection to one of them
    n_conn = max(1, int(cmd.get("connections", 1)))
    options = [("grpc.use_local_subchannel_pool", 1)] if n_conn > 1 else []
    channels = [grpc.insecure_channel(cmd["target"], options=options) for _ in range(n_conn)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=30)
    stubs = [pb_grpc.PersonalizationStub(channel) for channel in channels]
    users, k, surface = cmd["users"], cmd["k"], cmd.get("surface", "home")

    def call(rng: random.Random, t: int) -> tuple[int, str]:
        req = pb.RecommendRequest(user_id=rng.choice(users), k=k, surface=surface)
        resp = stubs[t % n_conn].Recommend(req, timeout=_CALL_TIMEOUT)
        return 1, f"{resp.strategy}:{resp.bundle_version}" if cmd.get(
            "tag_version"
        ) else resp.strategy

    try:
        loop = _Loop(conn, cmd["concurrency"], cmd["seconds"], cmd["warmup"], cmd.get("raw", False))
        return loop.run(call)
    finally:
        for channel in channels:
            channel.close()


def _track(conn: Connection, cmd: dict[str, Any]) -> dict[str, Any]:
    """Track load (``batch`` events per call), or with ``unique`` the durability load: every
    event's item id is new, and each call's (user, item) pairs are kept as acknowledged or
    not (failed: the server may or may not have stored them)."""
    import grpc

    from tailored.serve.v1 import personalization_pb2 as pb
    from tailored.serve.v1 import personalization_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(cmd["target"])
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = pb_grpc.PersonalizationStub(channel)
    users, items, batch, unique = cmd["users"], cmd["items"], cmd["batch"], cmd.get("unique")
    n = cmd["concurrency"]
    acked: list[list[tuple[str, str]]] = [[] for _ in range(n)]
    sent: list[list[tuple[str, str]]] = [[] for _ in range(n)]
    seq = [0] * n

    def call(rng: random.Random, t: int) -> tuple[int, str]:
        pairs = []
        for _ in range(batch):
            seq[t] += 1
            item = f"dur-{t}-{seq[t]}" if unique else rng.choice(items)
            pairs.append((rng.choice(users), item))
        req = pb.TrackRequest(
            events=[pb.Event(user_id=u, item_id=i, type=pb.CLICK, surface="home") for u, i in pairs]
        )
        if unique:
            sent[t].extend(pairs)
        resp = stub.Track(req, timeout=_CALL_TIMEOUT)
        if unique:
            acked[t].extend(pairs)
        return resp.accepted, "dropped" if resp.dropped else "accepted"

    try:
        out = _Loop(conn, n, cmd["seconds"], cmd["warmup"]).run(call)
    finally:
        channel.close()
    out["batch"] = batch
    if unique:
        out["acked"] = [p for ps in acked for p in ps]
        out["sent"] = [p for ps in sent for p in ps]
    return out


def _freshness(conn: Connection, cmd: dict[str, Any]) -> dict[str, Any]:
    """Per user: Recommend, Track a click on its first item X, then Recommend until X is no
    longer returned; the seconds from the click's acknowledgement to that answer."""
    import grpc

    from tailored.serve.v1 import personalization_pb2 as pb
    from tailored.serve.v1 import personalization_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(cmd["target"])
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = pb_grpc.PersonalizationStub(channel)
    k, give_up = cmd["k"], cmd["give_up_seconds"]
    seconds: list[float] = []
    attempts: list[int] = []
    changed = 0
    failed = 0
    strategies: Counter[str] = Counter()
    for user in cmd["users"]:
        before = stub.Recommend(pb.RecommendRequest(user_id=user, k=k, surface="home"))
        ids = [i.item_id for i in before.items]
        event = pb.Event(user_id=user, item_id=ids[0], type=pb.CLICK, surface="home")
        stub.Track(pb.TrackRequest(events=[event]), timeout=_CALL_TIMEOUT)
        acked = time.perf_counter()
        for n in range(1, 10_000):
            after = stub.Recommend(pb.RecommendRequest(user_id=user, k=k, surface="home"))
            now = time.perf_counter()
            new = [i.item_id for i in after.items]
            if ids[0] not in new:
                seconds.append(now - acked)
                attempts.append(n)
                changed += new != ids
                strategies[f"{before.strategy}->{after.strategy}"] += 1
                break
            if now - acked > give_up:
                failed += 1
                break
    channel.close()
    out = summarize(seconds, 1.0, Counter(), len(seconds))
    for name in ("calls", "window_seconds", "qps", "errors", "error_total"):
        out.pop(name, None)
    out.update(
        users=len(cmd["users"]),
        reflected=len(seconds),
        not_reflected_within_give_up=failed,
        reflected_on_first_recommend=sum(a == 1 for a in attempts),
        response_changed=changed,
        strategies=dict(strategies),
    )
    return out


_OPS: dict[str, Callable[[Connection, dict[str, Any]], dict[str, Any]]] = {
    "recommend": _recommend,
    "track": _track,
    "freshness": _freshness,
}


def _serve(conn: Connection) -> None:
    while True:
        cmd = conn.recv()
        if cmd is None:
            return
        if cmd == "stop":  # a stop that came after its load had ended
            continue
        try:
            conn.send({"ok": True, "result": _OPS[cmd["op"]](conn, cmd)})
        except Exception as e:  # reported to the parent, which raises it
            conn.send({"ok": False, "error": f"{type(e).__name__}: {e}"})


class LoadClient:
    """The client process. ``start(op, **args)`` sends a command; ``result()`` waits for it;
    ``stop()`` ends a running load early. ``call`` does both."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve, args=(child,), name="serve-load-client", daemon=True
        )
        self._proc.start()

    def start(self, op: str, **args: Any) -> None:
        self._conn.send({"op": op, **args})

    def stop(self) -> None:
        self._conn.send("stop")

    def result(self) -> dict[str, Any]:
        msg = self._conn.recv()
        if not msg["ok"]:
            raise RuntimeError(f"load client: {msg['error']}")
        result: dict[str, Any] = msg["result"]
        return result

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.start(op, **args)
        return self.result()

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send(None)
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LoadClients(LoadClient):
    """Several client processes, for machines where one Python client (one core at a time)
    would be the limit. :meth:`recommend` spreads a load's threads and connections over them,
    starts them together and merges their calls into one summary; every other command goes to
    the first, this :class:`LoadClient` itself."""

    def __init__(self, processes: int = 1) -> None:
        super().__init__()
        self.others = [LoadClient() for _ in range(processes - 1)]

    @property
    def clients(self) -> list[LoadClient]:
        return [self, *self.others]

    def recommend(self, *, concurrency: int, connections: int, **args: Any) -> dict[str, Any]:
        used = self.clients[: min(len(self.clients), concurrency)]
        n = len(used)
        threads = [concurrency // n + (i < concurrency % n) for i in range(n)]
        conns = [max(1, min(t, -(-connections // n))) for t in threads]
        for c, t, k in zip(used, threads, conns, strict=True):
            c.start("recommend", concurrency=t, connections=k, raw=n > 1, **args)
        parts = [c.result() for c in used]
        if n == 1:
            return parts[0]
        errors: Counter[str] = Counter()
        tags: Counter[str] = Counter()
        for r in parts:
            errors.update(r["errors"])
            tags.update(r["tags"])
        window = sum(r["window_seconds"] for r in parts) / n
        latencies = [x for r in parts for x in r["latencies_s"]]
        out = summarize(latencies, window, errors, sum(r["units"] for r in parts))
        out.update(concurrency=concurrency, tags=dict(tags), client_processes=n, threads=threads)
        out["qps_per_client_process"] = [r["qps"] for r in parts]
        return out

    def close(self) -> None:
        for c in self.others:
            c.close()
        super().close()
