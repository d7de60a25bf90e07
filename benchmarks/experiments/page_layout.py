"""The page's layout as an experiment, through the real server and simulator: the site's
fixed order of modules against a random one, by module and by position.

On the serving benchmark's small synthetic site (2,000 users, 5,000 items, trained 20
epochs; its planted truth kept), ``tailored serve`` runs one experiment, 50/50: ``fixed``
(the order the site sends: the recommended row first) against ``random`` (a uniform order,
each module's propensity logged). ``tailored simulate`` sends every user for ``--days``
simulated days in page mode: five modules of ``--k`` items (recommended, trending, because
you watched, similar to the most popular item, the largest category), scanned top down
with position bias. The analysis gives the lift in clicks per user; the simulation report
gives each module's click-through (clicks per page it was shown on) per variant, and the
click-through by position under the random order, which shows what a position is worth.

This is the baseline a learned layout (the contextual bandit, not built yet) is to beat.

    python -m benchmarks.experiments.page_layout     # writes results/experiment_page_layout.json
"""

from __future__ import annotations

import argparse
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
from tests.experiments.helpers import experiment_toml

__all__ = ["main"]


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.experiments.page_layout", description=__doc__
    )
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--days", type=float, default=14.0)
    p.add_argument("--k", type=int, default=5, help="items per module")
    p.add_argument("--out", type=Path, default=RESULTS / "experiment_page_layout.json")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from tailored.config import load_serve_config
    from tailored.experiments import load_experiments
    from tailored.experiments.analysis import analyze
    from tailored.serve.bundles import load_recommender
    from tailored.serve.v1 import personalization_pb2 as pb

    a = _args(argv)
    started = time.perf_counter()
    built = ensure_bundle(Sizes(2000, 5000, 30.0, 20, 6.0, 500, 2, batch_size=1024), versions=1)
    version = built.versions[0]
    rec = load_recommender(version, load_serve_config(overrides={"clock": "bundle"}))
    popular = str(rec.bundle.item_ids[int(rec.popular[0]) - 1])
    sizes = {v: len(rows) for v, rows in rec.by_value.items()}
    biggest = max(sizes, key=lambda v: sizes[v])
    del rec
    modules = [
        pb.PageModule(id="for-you", type="recommended"),
        pb.PageModule(id="trending", type="trending"),
        pb.PageModule(id="because", type="because_you_watched"),
        pb.PageModule(id="similar", type="similar", param=popular),
        pb.PageModule(id="category", type="category", param=biggest),
    ]
    variants = [
        ("fixed", 0.5, {"page_policy": "fixed"}),
        ("random", 0.5, {"page_policy": "random"}),
    ]
    with tempfile.TemporaryDirectory(prefix="page-layout.") as d:
        tmp = Path(d)
        path = tmp / "experiments.toml"
        path.write_text(experiment_toml("layout", "page", "layout-1", variants, control="fixed"))
        events, sim = serve_and_simulate(
            version,
            built.dataset,
            path,
            tmp,
            users=a.users,
            days=a.days,
            serve_toml="[serve]\nhide_after_impressions = 3\n",
            modules=modules,
            k=a.k,
        )
        experiment = load_experiments(path).get("layout")
    result = analyze(experiment, events, now_ms=sim.end_unix_ms, pre_days=0)
    ctr: dict[str, dict[str, float]] = {}
    for variant in ("fixed", "random"):
        tag = f"layout:{variant}"
        ctr[variant] = {
            m.id: round(
                sim.module_clicks_by_variant.get(f"{tag}|{m.id}", 0)
                / max(1, sim.module_pages_by_variant.get(f"{tag}|{m.id}", 0)),
                4,
            )
            for m in modules
        }
    out = {
        "benchmark": "experiment_page_layout",
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "modules": [{"id": m.id, "type": m.type, "param": m.param} for m in modules],
        "simulation": sim.to_dict(),
        "users": result["users"],
        "srm": result["srm"],
        "clicks_per_user": result["metrics"]["clicks"]["random"],
        "module_ctr": ctr,
        "verdicts": result["verdicts"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(a.out, out)
    print("\n".join(result["verdicts"]))
    print(json.dumps(ctr, indent=1))
    print(f"wrote {a.out}")
    return out


if __name__ == "__main__":
    main()
