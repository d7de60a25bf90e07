"""A candidate bundle against the current one, through the loop: the experiment's verdict
beside the two bundles' offline evaluation.

Two bundles of the serving benchmark's small synthetic site (2,000 users, 5,000 items; the
same dataset and key, :mod:`benchmarks.serving._bundle`), trained differently: the current
one for ``--current-epochs`` epochs, the candidate for ``--candidate-epochs``. The candidate
is copied beside the current one as version v000002, and ``tailored serve`` runs one
experiment from the first simulated day: half the users get the current bundle, half the
candidate. ``tailored simulate`` sends every user for ``--days`` days; the analysis gives the
verdict. Offline, each bundle's manifest holds its test NDCG@10 from training.

    python -m benchmarks.experiments.candidate      # writes results/experiment_candidate.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.experiments._loop import serve_and_simulate
from benchmarks.serving._bundle import BuiltBundle, Sizes, ensure_bundle
from tailored.paths import write_json_atomic
from tests.experiments.helpers import experiment_toml

__all__ = ["main"]


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.experiments.candidate", description=__doc__
    )
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--days", type=float, default=7.0)
    p.add_argument("--current-epochs", type=int, default=20)
    p.add_argument("--candidate-epochs", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS / "experiment_candidate.json")
    return p.parse_args(argv)


def _file(start: dt.datetime) -> str:
    return experiment_toml(
        "candidate",
        "model",
        "candidate-1",
        [("current", 0.5, {}), ("candidate", 0.5, {"bundle": "v000002"})],
        control="current",
        start=start.strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def _offline(version: Path) -> dict[str, float]:
    m = json.loads((version / "manifest.json").read_text())["metrics"]["two_tower"]["test"]
    return {
        "two_tower_ndcg@10": m["metrics"]["ndcg@10"],
        "two_tower_recall@10": m["metrics"]["recall@10"],
        "popularity_ndcg@10": m["popularity"]["ndcg@10"],
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from tailored.experiments import load_experiments
    from tailored.experiments.analysis import analyze

    a = _args(argv)
    started = time.perf_counter()

    def bundle(epochs: int) -> BuiltBundle:
        sizes = Sizes(2000, 5000, 30.0, epochs, 6.0, 500, 2, batch_size=1024)
        return ensure_bundle(sizes, versions=1)

    built = bundle(a.current_epochs)  # the same site and key as the candidate's
    current, candidate = built.versions[0], bundle(a.candidate_epochs).versions[0]
    manifest = json.loads((current / "manifest.json").read_text())
    present = int(manifest["data"]["last_event_time"])
    start = dt.datetime.fromtimestamp(present - a.days * 86_400 - 3_600, dt.UTC)
    with tempfile.TemporaryDirectory(prefix="candidate.") as d:
        tmp = Path(d)
        root = tmp / "bundles"
        shutil.copytree(current, root / "v000001")
        shutil.copytree(candidate, root / "v000002")
        doc = json.loads((root / "v000002" / "manifest.json").read_text())
        (root / "v000002" / "manifest.json").write_text(json.dumps({**doc, "version": "v000002"}))
        path = tmp / "experiments.toml"
        path.write_text(_file(start))
        events, sim = serve_and_simulate(
            root / "v000001", built.dataset, path, tmp, users=a.users, days=a.days
        )
        experiment = load_experiments(path).get("candidate")
    result = analyze(experiment, events, now_ms=sim.end_unix_ms, pre_days=0)
    out = {
        "benchmark": "experiment_candidate",
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "offline": {"current": _offline(current), "candidate": _offline(candidate)},
        "simulation": sim.to_dict(),
        "users": result["users"],
        "variants": result["variants"],
        "srm": result["srm"],
        "clicks_per_user": result["metrics"]["clicks"]["candidate"],
        "ctr": result["metrics"]["ctr"]["candidate"],
        "verdicts": result["verdicts"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(a.out, out)
    print(json.dumps(out["offline"]))
    print("\n".join(result["verdicts"]))
    print(f"wrote {a.out}")
    return out


if __name__ == "__main__":
    main()
