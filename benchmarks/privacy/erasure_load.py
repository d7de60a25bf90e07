"""Erasing users while the server answers: ``Forget`` for 100 users during a Recommend and
Track load.

``tailored serve`` (a subprocess, SQLite online state by default, or a private Redis with
``--redis``) on a copy of the serving benchmark's small cached bundle
(:mod:`benchmarks.serving._bundle`: 2,000 users, 5,000 items). Client threads call Recommend
and Track (5 new events a call, for users drawn from all of them: the erased ones too) back
to back the whole time. After ``--steady`` seconds of plain traffic, the admin ``Forget`` is
called for ``--forget`` users (those with the most events tracked so far, one call after the
other), then ``--steady`` seconds more.

Reported: calls by outcome during the erasures and around them (failed must be 0), Recommend
p50 / p99 before and during (the same run), Forget's own latency, what each erasure removed,
and afterwards the proof that the erased users are gone: none of their pseudonyms in the
bundle's user table (decoded) or the online state (SQLite's files' bytes, or every Redis key
and value), the audit's chain intact with one record per erasure. Writes
``results/erasure_load.json``.

    python -m benchmarks.privacy.erasure_load
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.serving._bundle import KEY, Sizes, ensure_bundle, env, raw_user_id
from benchmarks.serving._procs import ServerProcess, _serving_port, free_port
from benchmarks.serving.faults import _outcome, _Traffic
from tailored.paths import write_json_atomic
from tests.privacy.helpers import holding_files, holding_redis

__all__ = ["main"]

_TOKEN = "erasure-admin-token"


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.privacy.erasure_load", description=__doc__
    )
    p.add_argument("--items", type=int, default=5000, help="the cached bundle's catalogue")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--forget", type=int, default=100, help="users erased during the load")
    p.add_argument("--recommenders", type=int, default=4, help="Recommend client threads")
    p.add_argument("--trackers", type=int, default=2, help="Track client threads")
    p.add_argument("--steady", type=float, default=5.0, help="seconds of traffic around")
    p.add_argument("--redis", action="store_true", help="the online state in a private Redis")
    p.add_argument("--out", type=Path, default=RESULTS / "erasure_load.json")
    return p.parse_args(argv)


def _window(traffic: _Traffic, start: float, end: float) -> dict[str, Any]:
    calls = traffic.window(start, end)
    table: dict[str, dict[str, int]] = {}
    for c in calls:
        row = table.setdefault(c.method, {"ok": 0, "degraded": 0, "refused": 0, "failed": 0})
        row[_outcome(c)] += 1
    ms = [(c.end - c.start) * 1e3 for c in calls if c.method == "Recommend" and c.code == "OK"]
    return {
        "seconds": round(end - start, 2),
        "calls": table,
        "not_ok_codes": sorted({f"{c.method} {c.code}" for c in calls if c.code != "OK"}),
        "recommend_p50_ms": round(float(np.percentile(ms, 50)), 2) if ms else None,
        "recommend_p99_ms": round(float(np.percentile(ms, 99)), 2) if ms else None,
    }


def _left(root: Path, needles: set[str]) -> dict[str, int]:
    """Files under ``root`` still holding any needle, by path relative to it, and how many."""
    return {
        str(Path(p).relative_to(root)): len(hits)
        for p, hits in holding_files([root], needles).items()
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _args(argv)
    from tailored.data.pseudonym import Pseudonymizer
    from tailored.privacy.audit import AuditLog
    from tailored.serve.client import Client

    sizes = Sizes(a.users, a.items, 30.0, 1, 2.0, 500, 2, batch_size=1024)
    built = ensure_bundle(sizes, versions=1)
    users = [raw_user_id(i, built.n_users) for i in range(built.n_users)]
    pseudo = Pseudonymizer(bytes.fromhex(KEY))
    with tempfile.TemporaryDirectory(prefix="erasure-load.") as d:
        tmp = Path(d)
        root = tmp / "bundles"
        root.mkdir()
        shutil.copytree(built.versions[0], root / "v000001")
        privacy = tmp / "privacy"
        redis_server = None
        if a.redis:
            from tests.serve.helpers import PrivateRedis

            (tmp / "redis").mkdir()
            redis_server = PrivateRedis(tmp / "redis", durable=True)
            redis_server.start()
            state = redis_server.url
        else:
            (tmp / "state").mkdir()
            state = f"sqlite:///{tmp / 'state' / 'state.db'}"
        port = free_port()
        cmd = [sys.executable, "-m", "tailored.cli", "serve", str(root), "--port", str(port)]
        cmd += ["--state", state, "--clock", "bundle", "--no-watch"]
        e = {**env(), "TAILORED_ADMIN_TOKEN": _TOKEN, "TAILORED_PRIVACY_DIR": str(privacy)}
        server = ServerProcess(cmd, tmp / "server.log", e, _serving_port).wait_ready(600)
        traffic = _Traffic(server.target, users, a.recommenders, a.trackers)
        traffic.start()
        forgets: list[dict[str, Any]] = []
        try:
            time.sleep(a.steady)
            t0 = time.time()
            # the users with the most events tracked so far: the most to erase
            with traffic._lock:
                counts: dict[str, int] = {}
                for u, _ in traffic.sent:
                    counts[u] = counts.get(u, 0) + 1
            chosen = sorted(counts, key=lambda u: (-counts[u], u))[: a.forget]
            # no new events of theirs from here on (what they did after being erased would
            # be theirs again, and the search below would find it): calls in flight finish
            traffic.users = [u for u in users if u not in set(chosen)]
            time.sleep(0.5)
            with Client(server.target, token=_TOKEN, timeout=120) as c:
                for u in chosen:
                    s = time.perf_counter()
                    resp = c.forget(u)
                    forgets.append(
                        {
                            "ms": (time.perf_counter() - s) * 1e3,
                            "held": resp.held,
                            "removed": dict(resp.removed),
                        }
                    )
            t1 = time.time()
            time.sleep(a.steady)
            t2 = time.time()
        finally:
            traffic.stop()
            server.stop()
        gone = {pseudo(u) for u in chosen} | set(chosen)
        # what was left of them, once the server stopped (no traffic writes their new events:
        # their events after the erasure are theirs again, so Track is stopped first)
        bundle_left = _left(root, gone)
        if redis_server is not None:
            state_left = {k: len(v) for k, v in holding_redis(redis_server.url, gone).items()}
            redis_server.stop()
        else:
            state_left = _left(tmp / "state", gone)
        audit = AuditLog(privacy)
        records = [r for r in audit.records() if r["action"] == "erasure"]
        ms = [f["ms"] for f in forgets]
        removed_rows = sum(
            n for f in forgets for k, n in f["removed"].items() if k.endswith("user_rows")
        )
        removed_events = sum(
            n for f in forgets for k, n in f["removed"].items() if k.endswith(": events")
        )
        out = {
            "benchmark": "erasure_load",
            "command": "python -m benchmarks.privacy.erasure_load "
            + " ".join(argv or sys.argv[1:]),
            "machine": machine(),
            "bundle": built.info.get("name", str(built.root)),
            "state": "redis (private, AOF fsync always)" if a.redis else "sqlite",
            "users": a.users,
            "items": a.items,
            "forgotten": len(forgets),
            "forget_ms": {
                "p50": round(float(np.percentile(ms, 50)), 1),
                "p99": round(float(np.percentile(ms, 99)), 1),
                "max": round(max(ms), 1),
            },
            "held": sum(f["held"] for f in forgets),
            "bundle_rows_removed": removed_rows,
            "online_events_removed": removed_events,
            "before": _window(traffic, t0 - a.steady, t0),
            "during": _window(traffic, t0, t1),
            "after": _window(traffic, t1, t2),
            "failed_calls": sum(_outcome(c) == "failed" for c in traffic.window(t0 - a.steady, t2)),
            "left_in_bundle_files": bundle_left,
            "left_in_state": state_left,
            "audit_records": len(records),
            "audit_chain_verified": audit.verify(),
        }
    write_json_atomic(a.out, out)
    print(
        json.dumps(
            {
                k: out[k]
                for k in (
                    "forgotten",
                    "forget_ms",
                    "failed_calls",
                    "before",
                    "during",
                    "left_in_bundle_files",
                )
            },
            indent=1,
        )
    )
    return out


if __name__ == "__main__":
    main()
