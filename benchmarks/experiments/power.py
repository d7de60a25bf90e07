"""Personalization against the popularity control, through the real server: the lift, CUPED's
variance reduction, and the users an experiment needs.

On the serving benchmark's small synthetic bundle (:mod:`benchmarks.serving._bundle`: 2,000
users, 5,000 items, its planted truth kept), ``tailored serve`` runs one experiment: the
control is "popular in context" (non-personalized), the treatment the two-stage
personalized page, 50/50. ``tailored simulate`` sends the site's users for ``--days``
simulated days; the experiment starts ``--experiment-days`` before the end, so the days
before it are each user's pre-exposure period, CUPED's covariate. The analysis
(:func:`tailored.experiments.analysis.analyze`) gives the lift in clicks per user and CTR with
their intervals and CUPED's variance reduction; :func:`tailored.experiments.stats.users_needed`
the users per arm for 80% power at the lift observed and at ``--planned-lift``.

Both arms leave out what the user already engaged with and, with ``--hide-after N``
(``[serve] hide_after_impressions``, for everyone and the pre-period too), what they were
shown N times without a click: the arms differ in their ranking only.

    python -m benchmarks.experiments.power                 # writes results/experiment_power.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
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
from tests.experiments.helpers import personalization

__all__ = ["main"]


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.experiments.power", description=__doc__)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--days", type=float, default=14.0, help="simulated days in all")
    p.add_argument("--experiment-days", type=float, default=7.0, help="the last days: the test")
    p.add_argument(
        "--epochs",
        type=int,
        default=1,
        help="two-tower epochs of the bundle (1: the serving benchmark's cached smoke bundle)",
    )
    p.add_argument("--train-minutes", type=float, default=2.0)
    p.add_argument("--fatigue", type=float, default=0.5, help="the simulator's (1: none)")
    p.add_argument(
        "--hide-after",
        type=int,
        default=3,
        help="[serve] hide_after_impressions for every user, both arms (0: the old pages, "
        "never refreshed by what was passed over)",
    )
    p.add_argument(
        "--planned-lift", type=float, default=0.05, help="the lift to size an experiment for"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "experiment_power.json")
    return p.parse_args(argv)


def _file(start: dt.datetime) -> str:
    return personalization("power-1", start=start.strftime("%Y-%m-%dT%H:%M:%SZ"))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from tailored.experiments import load_experiments
    from tailored.experiments.analysis import analyze, per_user
    from tailored.experiments.stats import users_needed

    a = _args(argv)
    started = time.perf_counter()
    sizes = Sizes(2000, 5000, 30.0, a.epochs, a.train_minutes, 500, 2, batch_size=1024)
    built = ensure_bundle(sizes, versions=1)
    manifest = json.loads((built.versions[0] / "manifest.json").read_text())
    present = int(manifest["data"]["last_event_time"])  # the server's clock starts here
    start = dt.datetime.fromtimestamp(present - a.experiment_days * 86_400 + 60, dt.UTC)
    with tempfile.TemporaryDirectory(prefix="power.") as d:
        tmp = Path(d)
        path = tmp / "experiments.toml"
        path.write_text(_file(start))
        events, sim = serve_and_simulate(
            built.versions[0],
            built.dataset,
            path,
            tmp,
            users=a.users,
            days=a.days,
            fatigue=a.fatigue,
            serve_toml=f"[serve]\nhide_after_impressions = {a.hide_after}\n",
        )
        experiment = load_experiments(path).get("personalization")
    result = analyze(experiment, events, now_ms=sim.end_unix_ms, pre_days=a.days)
    clicks = result["metrics"]["clicks"]["personalized"]
    # the control's clicks per exposed user after exposure: the power calculation's baseline
    base = per_user(experiment, events, "clicks")["popular"]
    lift = clicks["plain"]["rel_lift"]
    needed = (
        users_needed(float(base.mean()), float(base.std(ddof=1)), abs(lift))
        if lift not in (None, 0.0)
        else None
    )
    out = {
        "benchmark": "experiment_power",
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "bundle_offline_test": {
            "two_tower_ndcg@10": manifest["metrics"]["two_tower"]["test"]["metrics"]["ndcg@10"],
            "popularity_ndcg@10": manifest["metrics"]["two_tower"]["test"]["popularity"]["ndcg@10"],
        },
        "simulation": sim.to_dict(),
        "users": result["users"],
        "variants": result["variants"],
        "srm": result["srm"],
        "clicks_per_user": clicks,
        "ctr": result["metrics"]["ctr"]["personalized"],
        "conversions_per_user": result["metrics"]["conversions"]["personalized"],
        "cuped_variance_reduction_clicks": clicks["fixed"].get("variance_reduction"),
        "baseline_clicks_per_user": {"mean": float(base.mean()), "sd": float(base.std(ddof=1))},
        "users_per_arm_for_80pct_power": needed,
        "users_per_arm_for_80pct_power_at_planned_lift": {
            "lift": a.planned_lift,
            "users": users_needed(float(base.mean()), float(base.std(ddof=1)), a.planned_lift),
        },
        "verdicts": result["verdicts"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(a.out, out)
    print("\n".join(result["verdicts"]))
    print(f"CUPED: {out['cuped_variance_reduction_clicks']}; users per arm for 80% power: {needed}")
    print(f"wrote {a.out}")
    return out


if __name__ == "__main__":
    main()
