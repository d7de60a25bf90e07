"""The gRPC service under load: ``tailored serve`` on a 1M-item bundle (the ranker scoring 200
candidates per request) against a no-op server's ceiling, in one run.

Phases (``--phases``, each a fixed number of seconds, ``--seconds``):

* ``recommend``: QPS, p50/p99 (ms) and errors by status code at concurrency 1, 8 and 32
  (threads of a separate client process, blocking calls in a loop, loopback), known users of
  the synthetic site and a few unknown ones; the same client against the no-op servicer
  (:mod:`benchmarks.serving._noop`) gives the ceiling, and the figure is the ratio.
* ``track``: events durably acknowledged per second (SQLite state, or Redis with
  ``--redis``; batches of 1 and 20, concurrency 8), and the time from a click's
  acknowledgement to the first Recommend that no longer returns the clicked item.
* ``swap``: ReloadBundle 10 times (alternating two versions) under a concurrency-8 load;
  failed requests, each swap's load seconds.
* ``kill``: Track load, SIGKILL to the server after ~3 s; every acknowledged event must be in
  the SQLite file, whatever ``--redis`` says (events stored whose acknowledgement was lost
  are allowed).
* ``profile``: cProfile over the servicer's Recommend in-process
  (:mod:`benchmarks.serving._profile`).

The bundle is built by the real pipeline on synthetic data and cached
(:mod:`benchmarks.serving._bundle`); ``--smoke`` uses a small one and 1-2 s phases.

    python -m benchmarks.serving.serve_load                 # 1M items, 10 s phases
    python -m benchmarks.serving.serve_load --smoke --out /tmp/serve_load_smoke.json

JSON to ``benchmarks/results/serve_load.json`` (atomically).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._machine import machine
from benchmarks._paths import RESULTS, ROOT
from benchmarks.serving._bundle import (
    KEY,
    BuiltBundle,
    Sizes,
    ensure_bundle,
    env,
    item_id,
    raw_user_id,
)
from benchmarks.serving._client import LoadClients
from benchmarks.serving._procs import ServerProcess, noop_server, tailored_server
from tailored.paths import write_json_atomic

__all__ = ["main"]

OUT = RESULTS / "serve_load.json"
PHASES = ("recommend", "track", "swap", "kill", "profile")
GOALS = {"p99_ms_at_concurrency_8": 15.0, "qps_fraction_of_noop": 0.35, "swap_failed": 0}


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serving.serve_load", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {PHASES}")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=50_000, help="users of the synthetic site")
    p.add_argument("--events-per-user", type=float, default=60.0)
    p.add_argument("--epochs", type=int, default=1, help="two-tower training epochs at most")
    p.add_argument("--train-minutes", type=float, default=8.0, help="training time cap")
    p.add_argument("--batch-size", type=int, default=4096, help="two-tower training batch")
    p.add_argument("--ranker-users", type=int, default=5000, help="ranker training requests")
    p.add_argument("--ranker-epochs", type=int, default=3)
    p.add_argument(
        "--final-eval-users",
        type=int,
        default=0,
        help="users of the training run's final evaluation (0: the config's)",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per load")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--swaps", type=int, default=10)
    p.add_argument("--freshness-repeats", type=int, default=50)
    p.add_argument("--kill-after", type=float, default=3.0)
    p.add_argument("--profile-requests", type=int, default=300)
    p.add_argument("--rebuild", action="store_true", help="build the cached bundle again")
    p.add_argument("--smoke", action="store_true", help="small catalog, 1-2 s phases")
    p.add_argument(
        "--connections",
        type=int,
        default=1,
        help="recommend phase: connections per client (at most one per thread); a server of "
        "several processes ([serve] processes) gets each connection to one of them",
    )
    p.add_argument(
        "--client-processes",
        type=int,
        default=1,
        help="recommend phase: client processes sharing each load's threads and connections "
        "(one Python client drives about one core; more for a machine with spare cores)",
    )
    p.add_argument(
        "--noop-processes",
        type=int,
        help="processes of the no-op ceiling on one port (default: [serve] processes of "
        "--server-config, so that both servers have the same layout)",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the server processes, e.g. OPENBLAS_NUM_THREADS=1",
    )
    p.add_argument(
        "--server-config",
        type=Path,
        help="a TOML file whose [serve] table the servers (and the profile) run with, e.g. "
        "index_search = { nprobe = 64 }",
    )
    p.add_argument(
        "--redis",
        metavar="URL",
        help="the recommend, track and swap phases' server keeps its online state in this "
        "Redis (redis://HOST:PORT/DB), under a fresh key prefix deleted afterwards",
    )
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument(
        "--serve-version",
        help="serve this version of the cached bundles (e.g. one refreshed after a change to "
        "index tuning) instead of the first; the swap phase alternates it with the last",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.items, args.users, args.events_per_user = 5000, 2000, 30.0
        args.epochs, args.train_minutes, args.ranker_users, args.ranker_epochs = 1, 2.0, 500, 2
        args.batch_size = 1024
        args.seconds, args.warmup, args.swaps = 1.5, 0.3, 4
        args.freshness_repeats, args.kill_after, args.profile_requests = 10, 1.0, 50
    args.phases = [x for x in args.phases.split(",") if x]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error(f"--phases: unknown {sorted(unknown)}; known: {PHASES}")
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    bad = [x for x in args.server_env if "=" not in x]
    if bad:
        p.error(f"--server-env: expected NAME=VALUE, got {bad}")
    return args


def _pools(n_users: int, seed: int = 0) -> dict[str, list[str]]:
    """Disjoint samples of the site's users per phase, so one phase's clicks do not change
    another's users; the recommend pool also has unknown users (5%)."""
    sizes = {"recommend": 2000, "track": 2000, "freshness": 200, "kill": 200}
    total = min(sum(sizes.values()), n_users)
    picked = random.Random(seed).sample(range(n_users), total)
    pools: dict[str, list[str]] = {}
    at = 0
    for name, size in sizes.items():
        size = max(1, size * total // sum(sizes.values()))
        pools[name] = [raw_user_id(i, n_users) for i in picked[at : at + size]]
        at += size
    pools["recommend"] += [f"bench-new-{j}" for j in range(len(pools["recommend"]) // 19)]
    return pools


def _status(target: str, token: str, items: int) -> dict[str, Any]:
    from tailored.serve.client import Client

    with Client(target, token=token) as c:
        s = c.status()
    out = {
        "bundle_version": s.bundle_version,
        "items": s.items,
        "users": s.users,
        "index_kind": s.index_kind,
        "ranker": s.ranker,
        "state_backend": s.state_backend,
        "index_search": dict(s.index_search),
        "index_recall": s.index_recall,
        "index_search_ms": s.index_search_ms,
        "index_search_source": s.index_search_source,
    }
    if not s.ranker or s.items != items:
        raise RuntimeError(f"the server is not serving the bundle meant: {out}")
    return out


def _recommend_phase(
    a: argparse.Namespace,
    client: LoadClients,
    server: ServerProcess,
    tmp: Path,
    e: dict[str, str],
    pools: dict[str, list[str]],
) -> dict[str, Any]:
    from tailored.config import load_serve_config
    from tailored.serve.client import Client

    with Client(server.target) as c:  # the no-op's template: a real answer, real sizes
        known = next(
            u for u in pools["recommend"] if c.recommend(u, a.k).strategy == "personalized"
        )
        (tmp / "template.pb").write_bytes(c.recommend(known, a.k).SerializeToString())
    cfg = load_serve_config(a.server_config)
    noop = noop_server(
        tmp / "template.pb",
        e,
        workers=cfg.workers,
        max_rpcs=cfg.admitted_rpcs,
        processes=a.noop_processes or cfg.processes,
    )
    runs: dict[str, Any] = {}
    try:
        for conc in a.concurrency:
            row: dict[str, Any] = {}
            for name, target in (("tailored", server.target), ("noop", noop.target)):
                row[name] = client.recommend(
                    target=target,
                    concurrency=conc,
                    seconds=a.seconds,
                    warmup=a.warmup,
                    users=pools["recommend"],
                    k=a.k,
                    connections=min(conc, a.connections),
                )
            row["qps_fraction_of_noop"] = round(row["tailored"]["qps"] / row["noop"]["qps"], 3)
            runs[str(conc)] = row
            t, n = row["tailored"], row["noop"]
            print(
                f"  recommend c={conc}: {t['qps']} qps p50 {t.get('p50_ms')} "
                f"p99 {t.get('p99_ms')} ms errors {t['errors']} | noop {n['qps']} qps "
                f"-> {row['qps_fraction_of_noop']:.0%}",
                flush=True,
            )
    finally:
        noop.stop()
    return {
        "k": a.k,
        "users_known": sum(not u.startswith("bench-new") for u in pools["recommend"]),
        "users_unknown": sum(u.startswith("bench-new") for u in pools["recommend"]),
        "noop_startup_seconds": round(noop.startup_seconds, 2),
        "noop_processes": len(noop.members),
        "client_processes": len(client.clients),
        "by_concurrency": runs,
    }


def _track_phase(
    a: argparse.Namespace, client: LoadClients, server: ServerProcess, pools: dict[str, list[str]]
) -> dict[str, Any]:
    rng = random.Random(1)
    items = [item_id(rng.randrange(a.items), a.items) for _ in range(5000)]
    out: dict[str, Any] = {}
    for batch in (1, 20):
        r = client.call(
            "track",
            target=server.target,
            concurrency=8,
            seconds=a.seconds,
            warmup=a.warmup,
            users=pools["track"],
            items=items,
            batch=batch,
        )
        r["events_per_second"] = r.pop("units_per_second", r["qps"])
        out[f"batch_{batch}"] = r
        print(
            f"  track batch {batch}: {r['events_per_second']} events/s ({r['qps']} calls/s, "
            f"p50 {r.get('p50_ms')} p99 {r.get('p99_ms')} ms) errors {r['errors']}",
            flush=True,
        )
    f = client.call(
        "freshness",
        target=server.target,
        users=pools["freshness"][: a.freshness_repeats],
        k=a.k,
        give_up_seconds=5.0,
    )
    out["click_to_recommend"] = f
    print(
        f"  click ack -> reflecting Recommend: p50 {f.get('p50_ms')} p99 {f.get('p99_ms')} ms, "
        f"{f['reflected']}/{f['users']} reflected "
        f"({f['reflected_on_first_recommend']} on the first)",
        flush=True,
    )
    return out


def _swap_phase(
    a: argparse.Namespace,
    client: LoadClients,
    server: ServerProcess,
    token: str,
    built: BuiltBundle,
    pools: dict[str, list[str]],
) -> dict[str, Any]:
    from tailored.serve.client import Client

    client.start(
        "recommend",
        target=server.target,
        concurrency=8,
        seconds=3600.0,
        warmup=a.warmup,
        users=pools["recommend"],
        k=a.k,
        tag_version=True,
    )
    time.sleep(a.warmup + 0.5)
    swaps: list[dict[str, Any]] = []
    start = time.perf_counter()
    with Client(server.target, token=token, timeout=600) as c:
        for i in range(a.swaps):
            path = built.versions[(i + 1) % 2]
            t = time.perf_counter()
            r = c.reload(str(path))
            swaps.append(
                {
                    "to": r.bundle_version,
                    "from": r.previous_version,
                    "load_seconds": round(r.load_seconds, 3),
                    "call_seconds": round(time.perf_counter() - t, 3),
                }
            )
            time.sleep(0.2)
    swapping = time.perf_counter() - start
    time.sleep(min(2.0, a.seconds))
    client.stop()
    load = client.result()
    load_s = [s["load_seconds"] for s in swaps]
    print(
        f"  swap: {len(swaps)} swaps in {swapping:.1f} s "
        f"(load {min(load_s):.2f}-{max(load_s):.2f} s); recommend under swaps {load['qps']} qps "
        f"p99 {load.get('p99_ms')} ms, failed {load['error_total']} {load['errors']}",
        flush=True,
    )
    return {
        "swaps_done": len(swaps),
        "swaps": swaps,
        "swapping_seconds": round(swapping, 2),
        "load_seconds_mean": round(sum(load_s) / len(load_s), 3),
        "load_seconds_max": max(load_s),
        "recommend_during": load,
        "failed_requests": load["error_total"],
    }


def _kill_phase(
    a: argparse.Namespace,
    client: LoadClients,
    built: BuiltBundle,
    tmp: Path,
    e: dict[str, str],
    pools: dict[str, list[str]],
) -> dict[str, Any]:
    from tailored.data.pseudonym import Pseudonymizer
    from tailored.serve.sqlite_state import SQLiteState

    db = tmp / "kill.db"
    server = tailored_server(built.versions[0], db, e, config=a.server_config)
    client.start(
        "track",
        target=server.target,
        concurrency=8,
        seconds=a.kill_after + 2.0,
        warmup=0.0,
        users=pools["kill"],
        items=[],
        batch=1,
        unique=True,
    )
    time.sleep(a.kill_after)
    server.kill()
    load = client.result()
    acked = {tuple(p) for p in load.pop("acked")}
    sent = {tuple(p) for p in load.pop("sent")}
    pseudo = Pseudonymizer(bytes.fromhex(KEY))
    found: set[tuple[str, str]] = set()
    with SQLiteState(db) as state:  # opening it recovers the WAL, as a restart would
        for u in pools["kill"]:
            found |= {
                (u, ev.item_id)
                for ev in state.user(pseudo(u), 1_000_000).events
                if ev.item_id.startswith("dur-")
            }
    out = {
        "acknowledged": len(acked),
        "found": len(found),
        "acknowledged_found": len(acked & found),
        "acknowledged_lost": len(acked - found),
        "stored_ack_lost": len(found - acked),
        "stored_never_sent": len(found - sent),
        "calls_failed_after_kill": load["error_total"],
        "acked_events_per_second_before_kill": round(len(acked) / a.kill_after, 1),
        "errors": load["errors"],
        "server_startup_seconds": round(server.startup_seconds, 1),
    }
    print(
        f"  kill -9: {out['acknowledged']} acknowledged, {out['acknowledged_lost']} of them lost, "
        f"{out['stored_ack_lost']} stored with the ack lost",
        flush=True,
    )
    return out


def _profile_phase(
    a: argparse.Namespace,
    built: BuiltBundle,
    tmp: Path,
    e: dict[str, str],
    pools: dict[str, list[str]],
) -> dict[str, Any]:
    users = tmp / "profile_users.json"
    users.write_text(json.dumps(pools["recommend"]))
    out = tmp / "profile.json"
    root = str(ROOT)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.serving._profile",
            str(built.versions[0]),
            str(tmp / "state.db"),
            str(users),
            str(out),
            "--requests",
            str(a.profile_requests),
            "--k",
            str(a.k),
            *(["--config", str(a.server_config)] if a.server_config else []),
        ],
        check=True,
        # the repo first, and whatever the caller's path held (the device machine's wheels)
        env={**e, "PYTHONPATH": os.pathsep.join(x for x in (root, e.get("PYTHONPATH")) if x)},
        stdout=subprocess.DEVNULL,
    )
    prof: dict[str, Any] = json.loads(out.read_text())
    print(
        f"  profile: servicer {prof['servicer_ms_per_request_unprofiled']} ms/request "
        "in-process; top by cumulative time:",
        flush=True,
    )
    for row in prof["top_by_cumtime"][:12]:
        print(f"    {row['cumtime_ms_per_request']:8.3f} ms  {row['function']}", flush=True)
    return prof


def _goals(result: dict[str, Any], concurrency: list[int]) -> dict[str, Any]:
    goals: dict[str, Any] = {}
    rec = result.get("recommend", {}).get("by_concurrency", {})
    if "8" in rec:
        p99 = rec["8"]["tailored"].get("p99_ms")
        goals["p99_ms_at_concurrency_8"] = {
            "goal": "<= 15",
            "value": p99,
            "met": p99 is not None and p99 <= GOALS["p99_ms_at_concurrency_8"],
        }
    for c in concurrency:
        if str(c) in rec:
            frac = rec[str(c)]["qps_fraction_of_noop"]
            goals[f"qps_fraction_of_noop_at_{c}"] = {
                "goal": ">= 0.35",
                "value": frac,
                "met": frac >= GOALS["qps_fraction_of_noop"],
            }
    if "swap" in result:
        failed = result["swap"]["failed_requests"]
        goals["swap_failed_requests"] = {"goal": "0", "value": failed, "met": failed == 0}
    if "kill" in result:
        lost = result["kill"]["acknowledged_lost"]
        goals["kill_acknowledged_lost"] = {"goal": "0", "value": lost, "met": lost == 0}
    return goals


def _dirty() -> list[str]:
    """Files that differ from the recorded commit (what ran is not only that commit)."""
    out = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout
    return [line[3:] for line in out.splitlines() if line[3:] and not line.startswith("??")]


def sizes_of(a: argparse.Namespace) -> Sizes:
    """The bundle's sizes from the command line (``_args``; its defaults: the 1M-item one)."""
    return Sizes(
        a.users,
        a.items,
        a.events_per_user,
        a.epochs,
        a.train_minutes,
        a.ranker_users,
        a.ranker_epochs,
        a.batch_size,
        a.final_eval_users,
    )


def _state_of(redis_url: str | None) -> dict[str, Any]:
    """The online state the phases' server used, for the JSON (no password)."""
    if not redis_url:
        return {"backend": "sqlite", "synchronous": "FULL"}
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        info = client.info("persistence")
        server = client.info("server")
        try:  # what "acknowledged" means there: the operator's AOF settings
            fsync = client.config_get("appendfsync").get("appendfsync")
        except redis.RedisError:  # CONFIG may be disabled
            fsync = None
    finally:
        client.close()
    return {
        "backend": "redis",
        "redis_version": server.get("redis_version"),
        "appendonly": bool(info.get("aof_enabled")),
        "appendfsync": fsync,
    }


def _drop_redis_prefix(redis_url: str | None, prefix: str) -> None:
    if not redis_url:
        return
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
    finally:
        client.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _args(argv)
    sizes = sizes_of(a)
    start = time.perf_counter()
    # a second version (a refresh of the first) only for the swap phase
    built = ensure_bundle(sizes, rebuild=a.rebuild, versions=2 if "swap" in a.phases else 1)
    if a.serve_version:
        chosen = built.root / a.serve_version
        if not (chosen / "manifest.json").is_file():
            raise SystemExit(f"--serve-version: no committed bundle {chosen}")
        # the swap phase alternates it with another version: the last, or else the first
        other = built.versions[-1] if built.versions[-1] != chosen else built.versions[0]
        built = dataclasses.replace(built, versions=(chosen, other))
    pools = _pools(a.users)
    token = secrets.token_hex(16)
    e = {**env(), "TAILORED_ADMIN_TOKEN": token}
    e |= dict(x.split("=", 1) for x in a.server_env)
    result: dict[str, Any] = {
        "benchmark": "serve_load",
        "machine": machine(),
        "uncommitted_files": _dirty(),
        "smoke": a.smoke,
        "phases": a.phases,
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items() if k != "phases"
        },
        "server_config": a.server_config.read_text() if a.server_config else None,
        "bundle": {
            "root": str(built.root),
            "versions": [p.name for p in built.versions],
            **built.info,
            # the served version's index as built: kind, search parameters, recall@100
            "served_index": json.loads((built.versions[0] / "manifest.json").read_text())
            .get("metrics", {})
            .get("index"),
        },
        "client": f"{a.client_processes} process(es) (multiprocessing spawn) sharing each "
        "recommend load's threads and connections (other loads: one), N threads of blocking "
        "calls; latency = perf_counter around each call; loopback",
    }
    with (
        contextlib.ExitStack() as stack,
        tempfile.TemporaryDirectory(prefix="serve_load.") as d,
        LoadClients(a.client_processes) as client,
    ):
        tmp = Path(d)
        if {"recommend", "track", "swap"} & set(a.phases):
            prefix = f"serve-load-{secrets.token_hex(6)}"
            state_url = (
                f"{a.redis}{'&' if '?' in a.redis else '?'}prefix={prefix}" if a.redis else None
            )
            result["state"] = _state_of(a.redis)
            stack.callback(_drop_redis_prefix, a.redis, prefix)  # once the server has stopped
            server = tailored_server(
                built.versions[0], tmp / "state.db", e, config=a.server_config, state_url=state_url
            )
            result["server"] = {"startup_seconds": round(server.startup_seconds, 1)}
            print(f"server up in {server.startup_seconds:.1f} s on {server.target}", flush=True)
            try:
                result["server"]["status"] = _status(server.target, token, a.items)
                if "recommend" in a.phases:
                    result["recommend"] = _recommend_phase(a, client, server, tmp, e, pools)
                if "track" in a.phases:
                    result["track"] = _track_phase(a, client, server, pools)
                if "swap" in a.phases:
                    result["swap"] = _swap_phase(a, client, server, token, built, pools)
            finally:
                server.stop()
        if "kill" in a.phases:
            result["kill"] = _kill_phase(a, client, built, tmp, e, pools)
        if "profile" in a.phases:
            result["profile"] = _profile_phase(a, built, tmp, e, pools)
    result["goals"] = _goals(result, a.concurrency)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_json_atomic(a.out, result)
    print(json.dumps(result["goals"], indent=1))
    print(f"-> {a.out}")
    return result


if __name__ == "__main__":
    main()
