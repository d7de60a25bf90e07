"""Faults under load: Recommend and Track traffic while the online state and the server fail.

``tailored serve`` with its online state in a Redis server this benchmark starts itself on a
free loopback port (never the machine's shared one; append-only file, fsync on every write,
as a site that acknowledges events must run it), watching a bundles directory (every 0.5 s),
on the serving benchmark's small cached bundle (:mod:`benchmarks.serving._bundle`; 5,000
items by default, so that it runs in minutes). Client threads in this process call
Recommend and Track (5 new events a call) back to back the whole time; every call's start,
end, status and ``degraded`` flag is kept. The phases, in order, each after a few seconds of
normal traffic:

(a) ``redis_restart``: Redis stopped (SIGTERM) for ``--outage`` seconds, then started again
    on the same port and file;
(b) ``redis_pause``: Redis paused (SIGSTOP) for ``--pause`` seconds (10), then SIGCONT;
(c) ``bundles``: 5 bad bundle versions and 5 good ones dropped into the watched directory,
    alternately (bad: a byte altered, item embeddings short by a row and resealed, a NaN
    embedding resealed, a manifest that is not JSON, a file missing);
(d) ``kill9``: the server killed with SIGKILL, then started again on the same port.

Per phase: calls by outcome (OK, degraded: answered from what the bundle knows, refused:
RESOURCE_EXHAUSTED, failed: any other status), for each method; Recommend p50 / p99 during
the fault; the time to recover (from the end of the fault to the end of the last call after
it that was not a plain OK); for the bundles, the reloads and failed reloads the server
counted. At the end every acknowledged event is looked up in Redis: lost acknowledged events
must be 0. Writes ``results/faults.json``.

    python -m benchmarks.serving.faults
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.serving._bundle import KEY, Sizes, ensure_bundle, env, raw_user_id
from benchmarks.serving._procs import ServerProcess, _serving_port, free_port
from tailored.paths import write_json_atomic
from tests.helpers import reseal
from tests.serve.helpers import PrivateRedis

__all__ = ["main"]

_CALL_TIMEOUT = 5.0
# clients reconnect quickly to a restarted server (gRPC's default backoff starts at 1 s and
# grows to 2 minutes, which would measure the client, not the server)
_CHANNEL = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 300),
]
_TOKEN = "faults-admin-token"


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving.faults", description=__doc__)
    p.add_argument("--items", type=int, default=5000, help="the cached bundle's catalogue")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--recommenders", type=int, default=4, help="Recommend client threads")
    p.add_argument("--trackers", type=int, default=2, help="Track client threads")
    p.add_argument("--steady", type=float, default=3.0, help="seconds of traffic around faults")
    p.add_argument("--outage", type=float, default=5.0, help="seconds Redis is stopped")
    p.add_argument("--pause", type=float, default=10.0, help="seconds Redis is paused")
    p.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    return p.parse_args(argv)


@dataclass
class _Call:
    method: str
    start: float
    end: float
    code: str
    degraded: bool = False


@dataclass
class _Traffic:
    """The client threads and everything they saw."""

    target: str
    users: list[str]
    recommenders: int
    trackers: int
    calls: list[_Call] = field(default_factory=list)
    acked: set[tuple[str, str]] = field(default_factory=set)
    sent: set[tuple[str, str]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for t in range(self.recommenders):
            self._threads.append(threading.Thread(target=self._recommend, args=(t,)))
        for t in range(self.trackers):
            self._threads.append(threading.Thread(target=self._track, args=(t,)))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _loop(self, call: Callable[[], tuple[str, bool]], method: str) -> None:
        while not self._stop.is_set():
            t0 = time.time()
            try:
                degraded = call()[1]
                code = "OK"
            except grpc.RpcError as e:
                code, degraded = e.code().name, False
            record = _Call(method, t0, time.time(), code, degraded)
            with self._lock:
                self.calls.append(record)
            if code != "OK":
                time.sleep(0.01)  # a refusal comes back at once: no busy loop on a dead server

    def _recommend(self, t: int) -> None:
        from tailored.serve.v1 import personalization_pb2 as pb
        from tailored.serve.v1 import personalization_pb2_grpc as pb_grpc

        channel = grpc.insecure_channel(self.target, options=_CHANNEL)
        stub = pb_grpc.PersonalizationStub(channel)
        rng = np.random.default_rng(t)

        def call() -> tuple[str, bool]:
            user = self.users[int(rng.integers(len(self.users)))]
            req = pb.RecommendRequest(user_id=user, k=10, surface="home")
            resp = stub.Recommend(req, timeout=_CALL_TIMEOUT)
            return "OK", bool(resp.degraded)

        try:
            self._loop(call, "Recommend")
        finally:
            channel.close()

    def _track(self, t: int) -> None:
        from tailored.serve.v1 import personalization_pb2 as pb
        from tailored.serve.v1 import personalization_pb2_grpc as pb_grpc

        channel = grpc.insecure_channel(self.target, options=_CHANNEL)
        stub = pb_grpc.PersonalizationStub(channel)
        rng = np.random.default_rng(1000 + t)
        seq = [0]

        def call() -> tuple[str, bool]:
            pairs = []
            for _ in range(5):
                seq[0] += 1
                pairs.append((self.users[int(rng.integers(len(self.users)))], f"flt-{t}-{seq[0]}"))
            with self._lock:
                self.sent.update(pairs)
            events = [
                pb.Event(user_id=u, item_id=i, type=pb.CLICK, surface="home") for u, i in pairs
            ]
            resp = stub.Track(pb.TrackRequest(events=events), timeout=_CALL_TIMEOUT)
            if resp.accepted == len(pairs):
                with self._lock:
                    self.acked.update(pairs)
            return "OK", False

        try:
            self._loop(call, "Track")
        finally:
            channel.close()

    def window(self, start: float, end: float) -> list[_Call]:
        """The calls that started in ``[start, end)``."""
        with self._lock:
            return [c for c in self.calls if start <= c.start < end]


def _outcome(c: _Call) -> str:
    if c.code == "OK":
        return "degraded" if c.degraded else "ok"
    return "refused" if c.code == "RESOURCE_EXHAUSTED" else "failed"


def _summary(traffic: _Traffic, fault: tuple[float, float], end: float) -> dict[str, Any]:
    """Outcomes by method over the whole phase and during the fault, Recommend latency during
    the fault, the statuses of the failed calls, and the time to recover after it."""
    start_fault, end_fault = fault
    out: dict[str, Any] = {"fault_seconds": round(end_fault - start_fault, 2)}
    for name, (a, b) in {"during_fault": fault, "after_fault": (end_fault, end)}.items():
        calls = traffic.window(a, b)
        table: dict[str, dict[str, int]] = {}
        codes: dict[str, int] = {}
        for c in calls:
            row = table.setdefault(c.method, {"ok": 0, "degraded": 0, "refused": 0, "failed": 0})
            row[_outcome(c)] += 1
            if c.code != "OK":
                codes[f"{c.method} {c.code}"] = codes.get(f"{c.method} {c.code}", 0) + 1
        out[name] = {"calls": table, "not_ok_codes": codes}
    answered = [
        (c.end - c.start) * 1e3
        for c in traffic.window(*fault)
        if c.method == "Recommend" and c.code == "OK"
    ]
    out["recommend_answered_during_fault"] = len(answered)
    out["recommend_p50_ms_during_fault"] = (
        round(float(np.percentile(answered, 50)), 1) if answered else None
    )
    out["recommend_p99_ms_during_fault"] = (
        round(float(np.percentile(answered, 99)), 1) if answered else None
    )
    bad_after = [c.end for c in traffic.window(end_fault, end) if _outcome(c) != "ok"]
    out["recover_seconds"] = round(max(bad_after) - end_fault, 2) if bad_after else 0.0
    out["recovered"] = not any(
        _outcome(c) != "ok" for c in traffic.window(end - 1.0, end)
    )  # the last second of the phase: all plain OK
    return out


def _status(target: str) -> Any:
    from tailored.serve.client import Client

    with Client(target, token=_TOKEN) as c:
        return c.status()


def _altered_byte(p: Path) -> None:
    f = p / "items" / "embeddings.npy"
    blob = bytearray(f.read_bytes())
    blob[-1] ^= 0xFF
    f.write_bytes(bytes(blob))


def _short_embeddings(p: Path) -> None:
    f = p / "items" / "embeddings.npy"
    np.save(f, np.load(f)[:-1], allow_pickle=False)
    reseal(p)


def _nan_embedding(p: Path) -> None:
    f = p / "items" / "embeddings.npy"
    emb = np.load(f)
    emb[1, 0] = np.nan
    np.save(f, emb, allow_pickle=False)
    reseal(p)


def _manifest_not_json(p: Path) -> None:
    (p / "manifest.json").write_text("{ not json")


def _missing_file(p: Path) -> None:
    (p / "users" / "embeddings.npy").unlink()


_BAD = (
    (_altered_byte, "a byte altered"),
    (_short_embeddings, "item embeddings a row short, resealed"),
    (_nan_embedding, "a NaN item embedding, resealed"),
    (_manifest_not_json, "a manifest that is not JSON"),
    (_missing_file, "a file missing"),
)


def _drop(staged: Path, root: Path) -> Path:
    """Move a version prepared next to the watched directory into it (one rename)."""
    target = root / staged.name
    staged.rename(target)
    return target


def _lost(url: str, users: list[str], acked: set[tuple[str, str]]) -> dict[str, int]:
    """Every acknowledged event looked up in Redis (the users' kept events)."""
    from tailored.data.pseudonym import Pseudonymizer
    from tailored.serve.redis_state import RedisState

    pseudo = Pseudonymizer(bytes.fromhex(KEY))
    found: set[tuple[str, str]] = set()
    state = RedisState.from_url(url)
    try:
        for u in users:
            found |= {
                (u, ev.item_id)
                for ev in state.user(pseudo(u), 1000).events
                if ev.item_id.startswith("flt-")
            }
    finally:
        state.close()
    return {
        "acknowledged": len(acked),
        "stored": len(found),
        "acknowledged_lost": len(acked - found),
        "stored_not_acknowledged": len(found - acked),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _args(argv)
    sizes = Sizes(a.users, a.items, 30.0, 1, 2.0, 500, 2, batch_size=1024)
    built = ensure_bundle(sizes, versions=1)
    users = [raw_user_id(i, built.n_users) for i in range(built.n_users)]
    phases: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="faults.") as d:
        tmp = Path(d)
        root = tmp / "bundles"
        root.mkdir()
        shutil.copytree(built.versions[0], root / "v000001")
        (tmp / "redis").mkdir()
        redis_server = PrivateRedis(tmp / "redis", durable=True)
        redis_server.start()
        config = tmp / "serve.toml"
        config.write_text("[serve]\nwatch_seconds = 0.5\n")
        port = free_port()
        cmd = [sys.executable, "-m", "tailored.cli", "serve", str(root), "--port", str(port)]
        cmd += ["--state", redis_server.url, "--clock", "bundle", "--config", str(config)]
        e = {**env(), "TAILORED_ADMIN_TOKEN": _TOKEN}

        def start_server() -> ServerProcess:
            return ServerProcess(cmd, tmp / "server.log", e, _serving_port).wait_ready(600)

        server = start_server()
        traffic = _Traffic(server.target, users, a.recommenders, a.trackers)
        traffic.start()
        try:
            time.sleep(a.steady)
            steady = _summary(traffic, (time.time() - a.steady, time.time()), time.time())
            phases["steady"] = {  # no fault: the same figures, for comparison
                "seconds": steady["fault_seconds"],
                "calls": steady["during_fault"]["calls"],
                "recommend_p50_ms": steady["recommend_p50_ms_during_fault"],
                "recommend_p99_ms": steady["recommend_p99_ms_during_fault"],
            }
            print(f"  steady: {phases['steady']}", flush=True)

            t0 = time.time()
            redis_server.stop()
            time.sleep(a.outage)
            redis_server.start()
            t1 = time.time()
            time.sleep(a.steady)
            phases["redis_restart"] = _summary(traffic, (t0, t1), time.time())
            print(f"  redis restart: {_line(phases['redis_restart'])}", flush=True)

            t0 = time.time()
            redis_server.pause(True)
            time.sleep(a.pause)
            redis_server.pause(False)
            t1 = time.time()
            time.sleep(a.steady)
            phases["redis_pause"] = _summary(traffic, (t0, t1), time.time())
            print(f"  redis pause: {_line(phases['redis_pause'])}", flush=True)

            phases["bundles"] = _bundle_phase(traffic, server.target, root, a.steady)
            print(f"  bundles: {_line(phases['bundles'])}", flush=True)

            t0 = time.time()
            server.kill()
            server = start_server()
            t1 = time.time()
            time.sleep(a.steady)
            phases["kill9"] = _summary(traffic, (t0, t1), time.time())
            phases["kill9"]["server_startup_seconds"] = round(server.startup_seconds, 2)
            print(f"  kill -9: {_line(phases['kill9'])}", flush=True)
        finally:
            traffic.stop()
            server.stop()
        durability = _lost(redis_server.url, users, traffic.acked)
        redis_server.stop()
    print(
        f"  acknowledged {durability['acknowledged']}, lost {durability['acknowledged_lost']}",
        flush=True,
    )
    result = {
        "benchmark": "faults",
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "bundle": {"items": a.items, "users": built.n_users},
        "phases": phases,
        "durability": durability,
        "calls": len(traffic.calls),
    }
    write_json_atomic(a.out, result)
    print(f"wrote {a.out}")
    return result


def _line(p: dict[str, Any]) -> str:
    return (
        f"during {p['during_fault']['calls']}, p99 {p['recommend_p99_ms_during_fault']} ms, "
        f"recovered in {p['recover_seconds']} s"
    )


def _bundle_phase(traffic: _Traffic, target: str, root: Path, steady: float) -> dict[str, Any]:
    """Bad and good versions alternately (v000002 bad, v000003 good, ...), each prepared next
    to the watched directory, moved in with one rename, and waited for in Status (reloads or
    failed_reloads moves) before the next."""
    before = _status(target)
    good, staging = root / "v000001", root.parent / "staging"
    drops: list[dict[str, Any]] = []
    t0 = time.time()
    number = 2
    for break_it, what in _BAD:
        for kind in ("bad", "good"):
            staged = staging / f"v{number:06d}"
            number += 1
            shutil.copytree(good, staged)
            if kind == "bad":
                break_it(staged)
            s0 = _status(target)
            staged.rename(root / staged.name)
            waited = time.time()
            s = s0
            while time.time() - waited < 15:
                s = _status(target)
                if (s.reloads, s.failed_reloads) != (s0.reloads, s0.failed_reloads):
                    break
                time.sleep(0.1)
            drops.append(
                {
                    "version": staged.name,
                    "kind": kind,
                    "what": what if kind == "bad" else "a copy of the first version",
                    "reloaded": s.reloads - s0.reloads,
                    "failed": s.failed_reloads - s0.failed_reloads,
                    "serving": Path(s.bundle_path).name,
                    "seconds_to_notice": round(time.time() - waited, 2),
                }
            )
    t1 = time.time()
    time.sleep(steady)
    out = _summary(traffic, (t0, t1), time.time())
    after = _status(target)
    out["reloads"] = after.reloads - before.reloads
    out["failed_reloads"] = after.failed_reloads - before.failed_reloads
    out["serving_at_end"] = Path(after.bundle_path).name
    out["drops"] = drops
    return out


if __name__ == "__main__":
    out = main()
    print(json.dumps(out["durability"]))
