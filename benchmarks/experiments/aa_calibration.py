"""A/A calibration of the experiment statistics, through the real server and simulator.

An A/A experiment's two variants change nothing, so any "significant" difference is a false
positive, and a calibrated system finds them at the rate it promises (alpha = 0.05). On the
serving benchmark's small synthetic bundle (:mod:`benchmarks.serving._bundle`, 2,000 users,
5,000 items, its planted truth kept), ``tailored serve`` runs an A/A experiment and
``tailored simulate`` sends its users for ``--days`` simulated days. Then:

1. **Re-salted analyses**: since the outcome does not depend on the assignment in an A/A
   test, the one simulation's users are re-assigned with ``--salts`` different salts (their
   exposures rewritten) and each assignment analyzed: the share of significant results per
   metric for the fixed-horizon test at the end (Welch, and with CUPED), the always-valid
   sequential test at the end, the sequential test looked at every simulated day (clicks per
   user), and the naive fixed-horizon test looked at every day (the inflation the sequential
   test prevents);
2. **Independent simulations**: ``--runs`` fresh servers and simulations (other seeds and
   salts), each analyzed once.

Writes ``results/aa_calibration.json``.

    python -m benchmarks.experiments.aa_calibration
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.experiments._loop import serve_and_simulate
from benchmarks.serving._bundle import Sizes, ensure_bundle
from tailored.experiments import Assigner, Experiments, parse_experiments
from tailored.experiments.analysis import EXPOSURE, MEAN_METRICS, Event, analyze
from tailored.paths import write_json_atomic
from tests.experiments.helpers import experiment_toml

__all__ = ["main"]

_METRICS = [*MEAN_METRICS, "ctr"]


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.experiments.aa_calibration", description=__doc__
    )
    p.add_argument("--users", type=int, default=2000, help="simulated users (the site's)")
    p.add_argument("--days", type=float, default=7.0)
    p.add_argument("--salts", type=int, default=500, help="re-salted analyses of one run")
    p.add_argument("--runs", type=int, default=20, help="independent simulations")
    p.add_argument("--run-users", type=int, default=1000, help="users of each independent run")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--out", type=Path, default=RESULTS / "aa_calibration.json")
    return p.parse_args(argv)


def _experiment(name: str, salt: str) -> str:
    return experiment_toml(name, "aa", salt, [("a", 0.5, {}), ("b", 0.5, {})])


def _simulate_once(
    built: Any, tmp: Path, name: str, salt: str, users: int, days: float, seed: int
) -> tuple[list[Event], int, dict[str, Any]]:
    """A fresh server with the A/A experiment, one simulation, its events and present."""
    work = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=tmp))
    (work / "aa.toml").write_text(_experiment(name, salt))
    events, report = serve_and_simulate(
        built.versions[0], built.dataset, work / "aa.toml", work, users=users, days=days, seed=seed
    )
    return events, report.end_unix_ms, report.to_dict()


def _resalted(experiment: Experiments, name: str, salt: str, events: list[Event]) -> list[Event]:
    """The same events with every exposure's variant drawn again under ``salt``."""
    e = experiment.get(name)
    again = dataclasses.replace(e, salt=salt)
    assigner = Assigner(Experiments((again,)))
    variant: dict[str, str] = {}
    out = []
    for user, kind, item, t, value in events:
        if kind == EXPOSURE and item.startswith(f"{name}:"):
            if user not in variant:
                (a,) = assigner.assign(user, t / 1000)
                variant[user] = a.variant
            item = f"{name}:{variant[user]}"
        out.append((user, kind, item, t, value))
    return out


def _outcomes(result: dict[str, Any]) -> dict[str, Any]:
    """Which tests called the A/A difference significant."""
    out: dict[str, Any] = {}
    for metric in _METRICS:
        r = result["metrics"][metric].get("b", {})
        if "error" in r:
            continue
        out[f"{metric}:fixed"] = bool(r.get("plain", r["fixed"])["significant"])
        if "plain" in r:
            out[f"{metric}:cuped"] = bool(r["fixed"]["significant"])
        out[f"{metric}:sequential"] = bool(r["sequential"]["significant"])
    daily = [row["b"] for row in result["daily"] if "b" in row]
    out["clicks:sequential_daily_ever"] = any(d["significant"] for d in daily)
    out["clicks:fixed_daily_ever"] = any(d["fixed_significant"] for d in daily)
    out["srm"] = bool(result["srm"] and result["srm"]["mismatch"])
    return out


def _rates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per test: share significant, with a 95% Wilson interval, over ``rows``."""
    out: dict[str, Any] = {}
    for key in sorted({k for r in rows for k in r}):
        hits = [r[key] for r in rows if key in r]
        n, k = len(hits), sum(hits)
        p, z = k / n, 1.959964
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        low, high = round(centre - half, 4), round(centre + half, 4)
        out[key] = {"rate": round(p, 4), "n": n, "wilson95": [low, high]}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    a = _args(argv)
    started = time.perf_counter()
    sizes = Sizes(2000, 5000, 30.0, 1, 2.0, 500, 2, batch_size=1024)
    built = ensure_bundle(sizes, versions=1)
    with tempfile.TemporaryDirectory(prefix="aa.") as d:
        tmp = Path(d)
        events, now_ms, sim = _simulate_once(built, tmp, "aa", "aa-0", a.users, a.days, 0)
        exps = _load("aa", "aa-0")
        tracked = sum(sim["events"].values())
        print(f"  simulation: {sim['requests']} pages, {tracked} events", flush=True)
        resalted = []
        for j in range(a.salts):
            salt = f"aa-resalt-{j}"
            result = analyze(
                dataclasses.replace(exps.get("aa"), salt=salt),
                _resalted(exps, "aa", salt, events),
                now_ms=now_ms,
                alpha=a.alpha,
            )
            resalted.append(_outcomes(result))
            if (j + 1) % 100 == 0:
                print(f"  {j + 1} re-salted analyses", flush=True)
        runs = []
        for r in range(a.runs):
            name, salt = f"aa{r}", f"aa-run-{r}"
            ev, now, _ = _simulate_once(built, tmp, name, salt, a.run_users, a.days, 100 + r)
            result = analyze(_load(name, salt).get(name), ev, now_ms=now, alpha=a.alpha)
            runs.append(_outcomes(result))
            print(f"  independent run {r + 1}: {runs[-1]}", flush=True)
    out = {
        "benchmark": "aa_calibration",
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "simulation": sim,
        "resalted": _rates(resalted),
        "independent_runs": _rates(runs),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(a.out, out)
    print(f"wrote {a.out}")
    return out


def _load(name: str, salt: str) -> Experiments:
    return parse_experiments(tomllib.loads(_experiment(name, salt)), f"{name} (A/A)")


if __name__ == "__main__":
    main()
