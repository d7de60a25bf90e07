"""What running an experiment costs Recommend: the same server with one running experiment
and with none, loaded in turn in the same run.

Two ``tailored serve`` processes on the serving benchmark's small bundle
(:mod:`benchmarks.serving._bundle`, 5,000 items), each with its own SQLite state: one with an
experiments file holding one running experiment of two variants that change nothing (so the
pages are the same and only assignment, the response's assignments and the exposure writes
differ), one without. Their loads alternate, ``--rounds`` times each (concurrency
``--concurrency``, ``--seconds`` each), so that the machine's drift falls on both alike; the
first round of each also pays every user's first exposure write. Also measured in this
process: one assignment plus the exposure check, per request, in microseconds.

    python -m benchmarks.experiments.serving_cost      # writes results/experiment_cost.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.serving._bundle import Sizes, ensure_bundle, env, raw_user_id
from benchmarks.serving._procs import ServerProcess, _serving_port
from benchmarks.serving.overload import _load
from tailored.paths import write_json_atomic
from tests.experiments.helpers import experiment_toml

__all__ = ["main"]

_EXPERIMENT = experiment_toml("cost", "cost", "cost-1", [("a", 0.5, {}), ("b", 0.5, {})])


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.experiments.serving_cost", description=__doc__
    )
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--out", type=Path, default=RESULTS / "experiment_cost.json")
    return p.parse_args(argv)


def _in_process(n_users: int) -> dict[str, float]:
    """Microseconds per request for the assignment and the exposure check alone."""
    from tailored.experiments import parse_experiments
    from tailored.serve.experiments import ServedExperiments

    served = ServedExperiments(parse_experiments(_toml(_EXPERIMENT)))
    users = [f"{i:032x}" for i in range(n_users)]
    now = time.time()
    for u in users:  # every exposure remembered, as after each user's first page
        served.exposures(u, served.assign(u, now), (), int(now * 1000), "home")
    start = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        for u in users:
            assigned = served.assign(u, now)
            served.changes(assigned)
            served.exposures(u, assigned, (), int(now * 1000), "home")
    per = (time.perf_counter() - start) / (rounds * len(users))
    return {"microseconds_per_request": round(per * 1e6, 2)}


def _toml(text: str) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(text)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    a = _args(argv)
    sizes = Sizes(2000, 5000, 30.0, 1, 2.0, 500, 2, batch_size=1024)
    built = ensure_bundle(sizes, versions=1)
    rows: dict[str, list[dict[str, Any]]] = {"none": [], "one experiment": []}
    with tempfile.TemporaryDirectory(prefix="experiment-cost.") as d:
        tmp = Path(d)
        (tmp / "exp.toml").write_text(_EXPERIMENT)
        servers = {}
        for name, extra in (
            ("none", []),
            ("one experiment", ["--experiments", str(tmp / "exp.toml")]),
        ):
            state = tmp / f"{name.replace(' ', '-')}.db"
            cmd = [sys.executable, "-m", "tailored.cli", "serve", str(built.versions[0])]
            cmd += ["--port", "0", "--state", f"sqlite:///{state}", "--clock", "bundle"]
            cmd += ["--no-watch", *extra]
            log = tmp / f"{state.stem}.log"
            servers[name] = ServerProcess(cmd, log, env(), _serving_port).wait_ready(600)
        try:
            for r in range(a.rounds):
                for name, server in servers.items():
                    row = _load(server.target, a.concurrency, a.seconds, 10, built.n_users)
                    row["round"] = r
                    rows[name].append(row)
                    print(f"  round {r} {name}: {row}", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    summary = {}
    for name, rs in rows.items():
        later = rs[1:] or rs  # after the first round every user's exposure is written
        summary[name] = {
            "p50_ms_first_round": rs[0]["answered_p50_ms"],
            "p50_ms_later_rounds": round(
                float(np.median([x["answered_p50_ms"] for x in later])), 2
            ),
            "qps_later_rounds": round(
                float(np.median([x["answered_per_second"] for x in later])), 1
            ),
        }
    base = summary["none"]["p50_ms_later_rounds"]
    summary["p50_difference_ms"] = round(summary["one experiment"]["p50_ms_later_rounds"] - base, 2)
    out = {
        "benchmark": "experiment_cost",
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "users": built.n_users,
        "example_user": raw_user_id(0, built.n_users),
        "rounds": rows,
        "summary": summary,
        "in_process": _in_process(built.n_users),
    }
    write_json_atomic(a.out, out)
    print(f"wrote {a.out}: {summary}, in process {out['in_process']}")
    return out


if __name__ == "__main__":
    main()
