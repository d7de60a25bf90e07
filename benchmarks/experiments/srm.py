"""A broken split is flagged: the server serves 52/48 while the analysis expects the declared
50/50, through the real server and simulator.

A synthetic site of ``--users`` users (default 20,000; :mod:`benchmarks.serving._bundle`) is
served with an A/A experiment whose file gives the variants 0.52 and 0.48: the "broken"
assignment. ``tailored simulate`` sends every user for ``--days`` days; the analysis is run
twice on the same log, once against the weights declared to the team (0.5 / 0.5), where the
sample-ratio-mismatch check must fire, and once against the weights actually served, where
it must not.

    python -m benchmarks.experiments.srm              # writes results/experiment_srm.json
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.experiments._loop import serve_and_simulate
from benchmarks.serving._bundle import Sizes, ensure_bundle
from tailored.paths import write_json_atomic
from tests.experiments.helpers import experiment_toml

__all__ = ["main"]

_FILE = experiment_toml("split", "split", "split-1", [("a", 0.52, {}), ("b", 0.48, {})])


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.experiments.srm", description=__doc__)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--days", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=RESULTS / "experiment_srm.json")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from tailored.experiments import Variant, load_experiments
    from tailored.experiments.analysis import analyze

    a = _args(argv)
    started = time.perf_counter()
    built = ensure_bundle(Sizes(a.users, 5000, 10.0, 1, 2.0, 500, 1, batch_size=4096), versions=1)
    with tempfile.TemporaryDirectory(prefix="srm.") as d:
        tmp = Path(d)
        path = tmp / "experiments.toml"
        path.write_text(_FILE)
        events, sim = serve_and_simulate(
            built.versions[0],
            built.dataset,
            path,
            tmp,
            users=a.users,
            days=a.days,
            event_types={"exposure"},
        )
        served = load_experiments(path).get("split")
    declared = dataclasses.replace(
        served, variants=tuple(Variant(v.name, 0.5, v.changes) for v in served.variants)
    )
    as_declared = analyze(declared, events, now_ms=sim.end_unix_ms, pre_days=0)
    as_served = analyze(served, events, now_ms=sim.end_unix_ms, pre_days=0)
    out = {
        "benchmark": "experiment_srm",
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "simulation": {k: v for k, v in sim.to_dict().items() if k != "clicks_by_variant"},
        "users": as_declared["variants"],
        "against_declared_50_50": as_declared["srm"],
        "against_served_52_48": as_served["srm"],
        "first_verdict_declared": as_declared["verdicts"][0],
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(a.out, out)
    print(f"users {out['users']}")
    print(f"against 50/50: {out['against_declared_50_50']}")
    print(f"against 52/48: {out['against_served_52_48']}")
    print(f"wrote {a.out}")
    return out


if __name__ == "__main__":
    main()
