"""The bundle ``benchmarks/serving/serve_load.py`` serves, built by the real pipeline and cached.

``tailored data synth`` -> ``tailored train`` (a small configuration: few epochs, a time
cap) -> ``tailored bundle build`` (ranker on, 200 candidates) -> ``tailored refresh`` (a
second version, for the hot-swap phase). Everything lands under
``$TAILORED_HOME/bench/serve_load/<sizes>/`` with ``build.json`` (the commands, how long each
took, the run's and the ranker's quality); a later run with the same sizes reuses it.

A fixed pseudonymization key (:data:`KEY`) is used throughout, so the benchmark neither
reads nor creates the user's own key; every child gets it through ``TAILORED_PSEUDONYM_KEY``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._paths import ROOT
from tailored.paths import tailored_home

__all__ = ["KEY", "BuiltBundle", "Sizes", "ensure_bundle", "env", "item_id", "raw_user_id"]

KEY = bytes(range(32)).hex()  # the benchmark's own key, never the user's


@dataclass(frozen=True)
class Sizes:
    users: int
    items: int
    events_per_user: float
    max_epochs: int
    max_minutes: float
    ranker_users: int
    ranker_epochs: int
    batch_size: int = 4096  # few optimizer steps: each updates the 1M-row id table densely
    # users of the training run's final evaluation (0: the config's 20,000); on the device
    # machine the full-catalogue evaluation, not the capped epoch, is most of the train step
    final_eval_users: int = 0

    @property
    def name(self) -> str:
        name = (
            f"items{self.items}-users{self.users}-epu{self.events_per_user:g}"
            f"-ep{self.max_epochs}-b{self.batch_size}-rk{self.ranker_users}x{self.ranker_epochs}"
        )
        return name + (f"-ev{self.final_eval_users}" if self.final_eval_users else "")


@dataclass(frozen=True)
class BuiltBundle:
    root: Path  # the bundles root (versions inside)
    versions: tuple[Path, Path]  # the built version, then the refreshed one
    dataset: Path
    n_users: int
    info: dict[str, Any]  # build.json


def env() -> dict[str, str]:
    """The environment every child runs with: the benchmark's key, no progress noise."""
    e = dict(os.environ)
    e["TAILORED_PSEUDONYM_KEY"] = KEY
    e.setdefault("PYTHONUNBUFFERED", "1")
    return e


def raw_user_id(i: int, n_users: int) -> str:
    """The site's id of synthetic user ``i`` (``tailored.data.synth_tables.pseudonyms``)."""
    return f"u{i:0{max(7, len(str(n_users - 1)))}d}"


def item_id(i: int, n_items: int) -> str:
    """The site's id of synthetic item ``i`` (``tailored.data.synth_tables.items_table``)."""
    return f"i{i:0{max(6, len(str(n_items - 1)))}d}"


def _config(dataset: Path, s: Sizes) -> str:
    base = (ROOT / "configs" / "synthetic.toml").read_text()
    base = base.replace('dataset = "synthetic"', f'dataset = "{dataset}"')
    base = base.replace("max_epochs = 5", f"max_epochs = {s.max_epochs}")
    base = base.replace("limit_val_users = 5000", "limit_val_users = 2000")
    base = base.replace("batch_size = 1024", f"batch_size = {s.batch_size}")
    if s.final_eval_users:
        base += f"final_eval_users = {s.final_eval_users}\n"
    return (
        base
        + f"max_minutes = {s.max_minutes}\nprogress_bar = false\n\n"
        + f"[ranker]\ncandidates = 200\nmax_users = {s.ranker_users}\n"
        + f"max_epochs = {s.ranker_epochs}\npatience = 2\n"
    )


def _step(log: Path, name: str, args: list[str], steps: dict[str, Any]) -> None:
    cmd = [sys.executable, "-m", "tailored.cli", *args]
    start = time.perf_counter()
    with log.open("a") as f:
        f.write(f"\n$ tailored {' '.join(args)}\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env()).returncode
    seconds = time.perf_counter() - start
    if rc != 0:
        raise RuntimeError(f"`tailored {' '.join(args)}` exited {rc}; see {log}")
    steps[name] = {"command": f"tailored {' '.join(args)}", "seconds": round(seconds, 1)}
    print(f"  {name}: {seconds:.0f} s", flush=True)


def _versions(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "manifest.json").is_file())


def ensure_bundle(
    s: Sizes, home: Path | None = None, *, rebuild: bool = False, versions: int = 2
) -> BuiltBundle:
    """The cached bundle for ``s``, built first if missing (minutes to tens of minutes).
    ``versions=1`` skips the refresh that makes the second version until one is asked for
    (the swap phase needs it)."""
    work = (home or tailored_home()) / "bench" / "serve_load" / s.name
    info_path = work / "build.json"
    if rebuild and work.exists():
        shutil.rmtree(work)
    cached = json.loads(info_path.read_text()) if info_path.is_file() else None
    if (
        cached is None
        or len(cached["versions"]) < versions
        # built from another configs/synthetic.toml (an index or model setting changed)
        or cached.get("config") != _config(work / "dataset", s)
    ):
        _build(work, s, refresh=versions >= 2)
    info = json.loads(info_path.read_text())
    root = work / "bundles"
    built = _versions(root)
    return BuiltBundle(root, (built[0], built[-1]), work / "dataset", s.users, info)


def _build(work: Path, s: Sizes, *, refresh: bool = True) -> None:
    """Each step writes its output last (the dataset's dataset.json, the run's metrics.json,
    a version's manifest.json), so a build that stopped resumes after its last whole step;
    what a step left half-done is removed and that step runs again."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "build.log"
    dataset, run, root = work / "dataset", work / "run", work / "bundles"
    cfg = work / "config.toml"
    config = _config(dataset, s)
    if cfg.is_file() and cfg.read_text() != config:  # another configuration's leftovers
        for stale in ("dataset", "run", "bundles"):
            shutil.rmtree(work / stale, ignore_errors=True)
    cfg.write_text(config)
    previous = (
        json.loads((work / "steps.json").read_text()) if (work / "steps.json").exists() else {}
    )
    steps: dict[str, Any] = {}
    print(f"building the benchmark bundle in {work} (log: {log})", flush=True)
    start = time.perf_counter()
    synth = ["data", "synth", "--users", str(s.users), "--items", str(s.items)]
    synth += ["--events-per-user", str(s.events_per_user), "--out", str(dataset)]
    plan = [
        ("synth", synth, lambda: (dataset / "dataset.json").is_file(), [dataset]),
        (
            "train",
            ["train", "--config", str(cfg), "--out", str(run)],
            lambda: (run / "metrics.json").is_file(),
            [run],
        ),
        (
            "bundle_build",
            ["bundle", "build", str(run), "--out", str(root), "--no-progress"],
            lambda: len(_versions(root)) >= 1 if root.is_dir() else False,
            [root],
        ),
        (
            "refresh",
            ["refresh", str(root / "v000001"), "--no-progress"],
            lambda: len(_versions(root)) >= 2 if root.is_dir() else False,
            [],
        ),
    ]
    for name, args, done, partial in plan if refresh else plan[:-1]:
        if done() and name in previous:
            steps[name] = {**previous[name], "resumed": True}
            print(f"  {name}: done before ({previous[name]['seconds']:.0f} s)", flush=True)
            continue
        for path in partial:
            shutil.rmtree(path, ignore_errors=True)
        _step(log, name, args, steps)
        (work / "steps.json").write_text(json.dumps(steps, indent=2) + "\n")
    info = {
        "sizes": s.__dict__,
        "config": cfg.read_text(),
        "steps": steps,
        "total_seconds": round(time.perf_counter() - start, 1),
        "quality": _quality(run, _versions(root)[0]),
        "versions": [p.name for p in _versions(root)],
    }
    tmp = work / "build.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, work / "build.json")


def _quality(run: Path, bundle: Path) -> dict[str, Any]:
    """What the model learned: the run's test metrics beside popularity, and the ranker's
    held-out NDCG@10 beside retrieval order (from the bundle's manifest)."""
    out: dict[str, Any] = {}
    metrics = json.loads((run / "metrics.json").read_text())
    out["epochs"] = metrics.get("epochs")
    for split in ("valid", "test"):
        m = metrics.get(split, {})
        out[split] = {
            "users": m.get("users"),
            "ndcg@10": (m.get("metrics") or {}).get("ndcg@10"),
            "recall@10": (m.get("metrics") or {}).get("recall@10"),
            "popularity_ndcg@10": (m.get("popularity") or {}).get("ndcg@10"),
        }
    manifest = json.loads((bundle / "manifest.json").read_text())
    out["ranker"] = (manifest.get("metrics") or {}).get("ranker")
    out["index"] = (manifest.get("metrics") or {}).get("index")
    return out
