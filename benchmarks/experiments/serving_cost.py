"""What running an experiment costs Recommend, measured within one server: requests of users
in the experiment against requests of users outside it, interleaved on the same connections.

One ``tailored serve`` process on the serving benchmark's small bundle
(:mod:`benchmarks.serving._bundle`: 5,000 items, 2,000 users) with SQLite state runs one
experiment at a time, of ``traffic = 0.5`` and two variants that change nothing. A user whose
place in the layer falls in the traffic is *assigned*: the server picks a variant, returns it
in the response's ``assignments`` and writes an exposure on their first request; the other
half is *unassigned* (the assignment's layer hash alone). The pages are the same, so the
difference between the two groups' latency is what being in the experiment costs a request.

Both groups meet the same machine: the client knows each user's group beforehand (the
benchmark's pseudonymization key and :class:`tailored.experiments.Assigner`, checked against
every response's ``assignments``, which tag the request), and each of ``--concurrency``
client threads (one connection each) alternates an assigned and an unassigned user, back to
back, timing every call. Each of ``--rounds`` rounds reloads a new experiment
(``ReloadExperiments``: a new name and layer, so new groups and no exposure written yet) and
measures two phases:

- *first exposure*: every user once, the groups interleaved evenly: the assigned users'
  exposure is made and handed to the server's exposure writer, which writes it to the state
  off the request path (:class:`tailored.serve.experiments.ExposureWriter`; before it, the
  write was in the request: +4.7 ms at p50);
- *steady*: ``--seconds`` of random users of each group in turn, whose exposures are written.

Per phase and group: p50, p90 and mean (ms, client-side); the assigned minus the unassigned
p50 and mean, with bootstrap 95% intervals (each group's requests resampled), per round and
pooled over the rounds. Those intervals treat requests as independent, but the two groups
are different users, whose requests differ in cost; the headline is therefore the
within-user difference (:func:`_within_user`): each user's assigned requests against their
own unassigned ones, across rounds, with an interval from resampling users. A warm-up
round (its own experiment; 5 s steady at most) comes first and is not reported.
What the difference leaves out: the layer hash an unassigned request pays too, measured with
the assigned path in this process, in microseconds, by ``_in_process``. And the server's own
cost without the network, on the same users and requests (``_in_server``): the Recommend
handler of a service running an experiment that takes everyone against one running none,
called directly, the same request to both.

    python -m benchmarks.experiments.serving_cost      # writes results/experiment_cost.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import tomllib
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.serving._bundle import KEY, Sizes, ensure_bundle, env, raw_user_id
from benchmarks.serving._procs import ServerProcess, _serving_port
from tailored.data.pseudonym import Pseudonymizer
from tailored.experiments import Assigner, parse_experiments
from tailored.paths import write_json_atomic
from tailored.serve.client import Client
from tests.experiments.helpers import experiment_toml

__all__ = ["main"]

_TOKEN = "experiment-cost"  # the admin token the server is started with (ReloadExperiments)
_K = 10
_BOOTSTRAP = 2000  # resamples per interval
_PHASES = ("first_exposure", "steady")

# (user id, assigned?): what a client thread requests next
_Users = Iterator[tuple[str, bool]]


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.experiments.serving_cost", description=__doc__
    )
    # 6 x 30 s: about 80,000 steady requests a group on 2 cores, an interval of about
    # +-0.03 ms on the difference of p50s (4 x 5 s gave +-0.13 ms); about 5 minutes in all
    p.add_argument("--rounds", type=int, default=6, help="experiments, each measured anew")
    p.add_argument("--seconds", type=float, default=30.0, help="the steady phase of each round")
    p.add_argument("--concurrency", type=int, default=4, help="client threads")
    p.add_argument(
        "--in-server-requests", type=int, default=8000, help="paired handler calls (_in_server)"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "experiment_cost.json")
    return p.parse_args(argv)


def _experiment(name: str, traffic: float = 0.5) -> str:
    """An experiments file: one experiment (its own layer and salt) on ``traffic`` of the
    users, two variants that change nothing, running over any time a bundle's clock gives."""
    return experiment_toml(name, name, name, [("a", 0.5, {}), ("b", 0.5, {})], traffic=traffic)


def _groups(text: str, n_users: int) -> tuple[list[str], list[str]]:
    """The site's ids of the users ``text``'s experiment assigns, and of the others."""
    assigner = Assigner(parse_experiments(tomllib.loads(text)))
    pseudonym = Pseudonymizer(bytes.fromhex(KEY))
    now = time.time()
    assigned: list[str] = []
    unassigned: list[str] = []
    for i in range(n_users):
        raw = raw_user_id(i, n_users)
        (assigned if assigner.assign(pseudonym(raw), now) else unassigned).append(raw)
    return assigned, unassigned


def _interleaved(assigned: list[str], unassigned: list[str], seed: int) -> list[tuple[str, bool]]:
    """Every user once, each group shuffled and the two spread evenly through the order."""
    rng = np.random.default_rng(seed)
    rows = []
    for users, flag in ((assigned, True), (unassigned, False)):
        order = rng.permutation(len(users))
        rows += [((j + 0.5) / len(users), users[o], flag) for j, o in enumerate(order)]
    rows.sort(key=lambda r: r[0])
    return [(user, flag) for _, user, flag in rows]


def _drive(
    target: str, concurrency: int, users: Callable[[int], _Users], experiment: str
) -> dict[str, Any]:
    """``concurrency`` threads, one connection each, calling Recommend back to back for the
    users ``users(thread)`` yields; each answered call's latency (ms), by the group the
    response's ``assignments`` say."""
    from tailored.serve.v1 import personalization_pb2 as pb
    from tailored.serve.v1 import personalization_pb2_grpc as pb_grpc

    ms: dict[bool, list[float]] = {True: [], False: []}
    who: dict[bool, list[str]] = {True: [], False: []}
    counts = {"errors": 0, "mispredicted": 0, "other_experiment": 0}
    lock = threading.Lock()
    start = threading.Event()

    def client(i: int) -> None:
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb_grpc.PersonalizationStub(channel)
        mine: dict[bool, list[float]] = {True: [], False: []}
        mine_who: dict[bool, list[str]] = {True: [], False: []}
        bad = dict.fromkeys(counts, 0)
        start.wait()
        for user, predicted in users(i):
            req = pb.RecommendRequest(user_id=user, k=_K, surface="home")
            t0 = time.perf_counter()
            try:
                resp = stub.Recommend(req, timeout=30)
            except grpc.RpcError:
                bad["errors"] += 1
                continue
            took = (time.perf_counter() - t0) * 1000
            names = [a.experiment for a in resp.assignments]
            bad["mispredicted"] += bool(names) != predicted
            bad["other_experiment"] += any(n != experiment for n in names)
            mine[bool(names)].append(took)
            mine_who[bool(names)].append(user)
        channel.close()
        with lock:
            for group, xs in mine.items():
                ms[group] += xs
                who[group] += mine_who[group]
            for key, n in bad.items():
                counts[key] += n

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # the channels connect
    started = time.perf_counter()
    start.set()
    for t in threads:
        t.join()
    return {
        "assigned": np.array(ms[True]),
        "unassigned": np.array(ms[False]),
        "assigned_users": who[True],
        "unassigned_users": who[False],
        "seconds": time.perf_counter() - started,
        **counts,
    }


def _first_pass(order: list[tuple[str, bool]]) -> Callable[[int], _Users]:
    """Every thread takes the next user of one shared ``order`` until none is left."""
    shared = iter(order)
    lock = threading.Lock()

    def users(_: int) -> _Users:
        while True:
            with lock:
                nxt = next(shared, None)
            if nxt is None:
                return
            yield nxt

    return users


def _steady(
    assigned: list[str], unassigned: list[str], seconds: float, seed: int
) -> Callable[[int], _Users]:
    """Each thread alternates a random assigned and a random unassigned user (even threads
    start with the assigned, odd with the unassigned) until ``seconds`` after its first."""

    def users(i: int) -> _Users:
        rng = np.random.default_rng([seed, i])
        deadline = time.perf_counter() + seconds
        turn = i % 2 == 0
        while time.perf_counter() < deadline:
            group = assigned if turn else unassigned
            yield group[int(rng.integers(len(group)))], turn
            turn = not turn

    return users


def _stats(x: np.ndarray) -> dict[str, Any]:
    return {
        "n": len(x),
        "p50_ms": round(float(np.median(x)), 3),
        "p90_ms": round(float(np.percentile(x, 90)), 3),
        "mean_ms": round(float(np.mean(x)), 3),
    }


def _interval(
    a: np.ndarray, b: np.ndarray, stat: Callable[..., Any], rng: np.random.Generator
) -> list[float]:
    """Bootstrap 95% interval of ``stat(a) - stat(b)``, each sample resampled on its own."""
    diffs = []
    chunk = max(1, min(_BOOTSTRAP, 4_000_000 // max(len(a), len(b), 1)))  # bounded memory
    for done in range(0, _BOOTSTRAP, chunk):
        n = min(chunk, _BOOTSTRAP - done)
        ra = stat(a[rng.integers(len(a), size=(n, len(a)))], axis=1)
        rb = stat(b[rng.integers(len(b), size=(n, len(b)))], axis=1)
        diffs.append(ra - rb)
    lo, hi = np.percentile(np.concatenate(diffs), [2.5, 97.5])
    return [round(float(lo), 3), round(float(hi), 3)]


def _compare(a: np.ndarray, b: np.ndarray, seed: int) -> dict[str, Any]:
    """The assigned group ``a`` against the unassigned ``b``: each one's figures and the
    differences (a - b, ms) of p50 and mean, with their intervals."""
    if not len(a) or not len(b):
        return {"assigned": len(a), "unassigned": len(b), "note": "a group had no answers"}
    rng = np.random.default_rng(seed)
    return {
        "assigned": _stats(a),
        "unassigned": _stats(b),
        "p50_difference_ms": round(float(np.median(a) - np.median(b)), 3),
        "p50_difference_95ci_ms": _interval(a, b, np.median, rng),
        "mean_difference_ms": round(float(np.mean(a) - np.mean(b)), 3),
        "mean_difference_95ci_ms": _interval(a, b, np.mean, rng),
    }


def _in_process(n_users: int) -> dict[str, float]:
    """Microseconds per request for the assignment and the exposure check alone, for a user
    the experiment takes (exposure remembered, as after their first page) and one it does
    not."""
    from tailored.serve.experiments import ServedExperiments

    served = ServedExperiments(parse_experiments(tomllib.loads(_experiment("in-process"))))
    now = time.time()
    users: dict[bool, list[str]] = {True: [], False: []}
    for i in range(n_users):
        u = f"{i:032x}"
        users[bool(served.assign(u, now))].append(u)
    out = {}
    for group, name in ((True, "assigned"), (False, "unassigned")):
        for u in users[group]:
            served.exposures(u, served.assign(u, now), (), int(now * 1000), "home")
        start = time.perf_counter()
        repeats = 20
        for _ in range(repeats):
            for u in users[group]:
                assigned = served.assign(u, now)
                served.changes(assigned)
                served.exposures(u, assigned, (), int(now * 1000), "home")
        per = (time.perf_counter() - start) / (repeats * len(users[group]))
        out[f"{name}_microseconds_per_request"] = round(per * 1e6, 2)
    return out


class _Context:
    """What the Recommend handler asks of gRPC's ServicerContext when called directly: no
    deadline, no metadata."""

    def time_remaining(self) -> None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def abort(self, code: object, message: str) -> None:
        raise RuntimeError(f"{code}: {message}")


def _in_server(version: Path, n_users: int, requests: int) -> dict[str, Any]:
    """The server's own cost, without the network: two services in this process on one
    bundle and one SQLite state, one running an experiment that takes every user, one
    running none; the same request (a random user) goes to both, in alternating order, and
    each handler call is timed. The paired differences' mean has a 95% interval from
    resampling requests."""
    from tailored.config import load_serve_config
    from tailored.data.pseudonym import Pseudonymizer
    from tailored.serve.bundles import LiveBundle
    from tailored.serve.server import Service, _Personalization
    from tailored.serve.sqlite_state import SQLiteState
    from tailored.serve.v1 import personalization_pb2 as pb

    with tempfile.TemporaryDirectory(prefix="experiment-cost-in-server.") as d:
        tmp = Path(d)
        (tmp / "all.toml").write_text(_experiment("in-server", traffic=1.0))
        on = load_serve_config(overrides={"clock": "bundle", "experiments": str(tmp / "all.toml")})
        off = load_serve_config(overrides={"clock": "bundle"})
        bundle = LiveBundle(version, off)
        state = SQLiteState(tmp / "state.db")
        key = Pseudonymizer(bytes.fromhex(KEY))
        with_exp = Service(bundle, state, key, on, admin_token=_TOKEN)
        without = Service(bundle, state, key, off, admin_token=_TOKEN)
        handlers = (_Personalization(with_exp), _Personalization(without))
        users = [raw_user_id(i, n_users) for i in range(n_users)]
        ctx = _Context()
        for u in users:  # every first exposure written first: the steady state
            handlers[0].Recommend(pb.RecommendRequest(user_id=u, k=_K, surface="home"), ctx)
        with_exp.exposures.flush()
        rng = np.random.default_rng(7)
        ms = np.zeros((requests, 2))
        for r in range(requests):
            req = pb.RecommendRequest(
                user_id=users[int(rng.integers(n_users))], k=_K, surface="home"
            )
            for h in (0, 1) if r % 2 else (1, 0):
                t0 = time.perf_counter()
                resp = handlers[h].Recommend(req, ctx)
                ms[r, h] = (time.perf_counter() - t0) * 1000
                assert len(resp.assignments) == (h == 0)
        with_exp.close()
        without.close()
    diff = ms[:, 0] - ms[:, 1]
    boot = diff[rng.integers(len(diff), size=(_BOOTSTRAP, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "requests": requests,
        "with_experiment": _stats(ms[:, 0]),
        "without": _stats(ms[:, 1]),
        "paired_mean_difference_ms": round(float(diff.mean()), 4),
        "paired_mean_difference_95ci_ms": [round(float(lo), 4), round(float(hi), 4)],
        "paired_median_difference_ms": round(float(np.median(diff)), 4),
    }


def _round(
    client: Client, target: str, tmp: Path, name: str, n_users: int, seconds: float, threads: int
) -> dict[str, Any]:
    """Reload experiment ``name`` and measure its two phases."""
    path = tmp / f"{name}.toml"
    path.write_text(_experiment(name))
    t0 = time.perf_counter()
    client.reload_experiments(str(path))
    reload_s = time.perf_counter() - t0
    assigned, unassigned = _groups(path.read_text(), n_users)
    seed = zlib.crc32(name.encode())
    phases = {
        "first_exposure": _first_pass(_interleaved(assigned, unassigned, seed)),
        "steady": _steady(assigned, unassigned, seconds, seed),
    }
    row: dict[str, Any] = {"experiment": name, "reload_seconds": round(reload_s, 3)}
    row["users"] = {"assigned": len(assigned), "unassigned": len(unassigned)}
    for phase, users in phases.items():
        got = _drive(target, threads, users, name)
        row[phase] = {
            "raw": got,  # the latencies, dropped from the JSON once pooled
            "seconds": round(got["seconds"], 2),
            "errors": got["errors"],
            "mispredicted": got["mispredicted"],
            "other_experiment": got["other_experiment"],
            **_compare(got["assigned"], got["unassigned"], seed),
        }
    return row


def _pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each phase over all rounds: every round's requests of a group together, and the
    within-user difference (:func:`_within_user`)."""
    out = {}
    for i, phase in enumerate(_PHASES):
        a = np.concatenate([r[phase]["raw"]["assigned"] for r in rows])
        b = np.concatenate([r[phase]["raw"]["unassigned"] for r in rows])
        out[phase] = {**_compare(a, b, i), "within_user": _within_user(rows, phase, i)}
    return out


def _within_user(rows: list[dict[str, Any]], phase: str, seed: int) -> dict[str, Any]:
    """The cost measured on the same users: each round draws a new split, so most users are
    assigned in some rounds and not in others. Per user, the mean latency of their assigned
    requests minus that of their unassigned ones (each round's latencies less that round's
    median, so that the machine's drift between rounds cancels); the mean over users, with
    a 95% interval from resampling users. Users differ in cost (their histories), and a
    random half of them can be 0.1 ms slower than the other half: comparing a user with
    themselves removes that, which the request-level intervals above do not."""
    sums: dict[str, list[float]] = {}
    for r in rows:
        raw = r[phase]["raw"]
        centre = float(np.median(np.concatenate([raw["assigned"], raw["unassigned"]])))
        for group, col in ((0, "assigned"), (1, "unassigned")):
            for user, ms in zip(raw[f"{col}_users"], raw[col].tolist(), strict=True):
                acc = sums.setdefault(user, [0.0, 0.0, 0.0, 0.0])
                acc[2 * group] += ms - centre
                acc[2 * group + 1] += 1
    diffs = np.array([a / na - u / nu for a, na, u, nu in sums.values() if na and nu])
    if len(diffs) < 2:
        return {"users": len(diffs), "note": "too few users seen in both groups"}
    rng = np.random.default_rng(seed)
    boot = diffs[rng.integers(len(diffs), size=(_BOOTSTRAP, len(diffs)))].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "users": len(diffs),
        "mean_difference_ms": round(float(diffs.mean()), 4),
        "mean_difference_95ci_ms": [round(float(lo), 4), round(float(hi), 4)],
        "median_of_user_differences_ms": round(float(np.median(diffs)), 4),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    a = _args(argv)
    sizes = Sizes(2000, 5000, 30.0, 1, 2.0, 500, 2, batch_size=1024)
    built = ensure_bundle(sizes, versions=1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="experiment-cost.") as d:
        tmp = Path(d)
        (tmp / "warmup.toml").write_text(_experiment("warmup"))
        cmd = [sys.executable, "-m", "tailored.cli", "serve", str(built.versions[0])]
        cmd += ["--port", "0", "--state", f"sqlite:///{tmp / 'state.db'}", "--clock", "bundle"]
        cmd += ["--no-watch", "--experiments", str(tmp / "warmup.toml")]
        server_env = {**env(), "TAILORED_ADMIN_TOKEN": _TOKEN}
        server = ServerProcess(cmd, tmp / "server.log", server_env, _serving_port)
        server.wait_ready(600)
        client = Client(server.target, token=_TOKEN)
        n, c = built.n_users, a.concurrency
        try:
            warm = _round(client, server.target, tmp, "warmup", n, min(a.seconds, 5), c)
            print(f"  warm-up: {warm['steady']['assigned']}", flush=True)
            for r in range(a.rounds):
                row = _round(client, server.target, tmp, f"cost-{r}", n, a.seconds, c)
                row["round"] = r
                rows.append(row)
                for phase in _PHASES:
                    p = row[phase]
                    print(
                        f"  round {r} {phase}: p50 {p['assigned']['p50_ms']} vs "
                        f"{p['unassigned']['p50_ms']} ms, difference {p['p50_difference_ms']} "
                        f"{p['p50_difference_95ci_ms']}; mean difference "
                        f"{p['mean_difference_ms']} {p['mean_difference_95ci_ms']}",
                        flush=True,
                    )
        finally:
            client.channel.close()
            server.stop()
    summary = _pooled(rows)
    for row in rows:
        for phase in _PHASES:
            del row[phase]["raw"]
    out = {
        "benchmark": "experiment_cost",
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "config": {
            "bundle": str(built.versions[0]),
            "users": built.n_users,
            "k": _K,
            "traffic": 0.5,
            "variants": "a, b: 0.5 each, changing nothing",
            "bootstrap_resamples": _BOOTSTRAP,
            "experiment": _experiment("cost-ROUND"),
        },
        "method": "one server; per round a new experiment (ReloadExperiments); client threads "
        "alternate assigned and unassigned users; latency = perf_counter around each call, "
        "grouped by the response's assignments; differences are assigned - unassigned",
        "example_user": raw_user_id(0, built.n_users),
        "rounds": rows,
        "summary": summary,
        "in_process": _in_process(built.n_users),
        "in_server": _in_server(built.versions[0], built.n_users, a.in_server_requests),
    }
    write_json_atomic(a.out, out)
    print(f"wrote {a.out}")
    for phase, s in summary.items():
        print(f"  {phase}: {s}")
    print(f"  in process: {out['in_process']}")
    print(f"  in server: {out['in_server']}")
    return out


if __name__ == "__main__":
    main()
