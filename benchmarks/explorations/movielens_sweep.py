"""Many MovieLens-100k configuration variants at once, each a
:mod:`benchmarks.quality.two_stage` run per seed in its own process, for a machine with many
cores (or one GPU shared by several small runs). It explores; the shipped configuration's
figures come from ``two_stage`` and ``movielens`` runs of their own.

    python -m benchmarks.explorations.movielens_sweep \\
        --variants benchmarks/explorations/sweeps/movielens.toml \\
        --seeds 0 1 --jobs 16 --minutes 6 --out-json /tmp/sweep.json

The variants file maps a name to a table of overrides (``[dim128] "model.dim" = 128``).
Runs still going when the time budget ends are stopped and reported as unfinished. Output:
every finished run's two-stage, retrieval-alone and popularity test metrics, and per variant
the mean and the range over its finished seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from benchmarks._machine import machine
from benchmarks._overrides import add_set_argument
from benchmarks._paths import ROOT

__all__ = ["main"]


def _value(v: Any) -> str:
    """A Python value back to TOML, for ``--set``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs]}
    for name in ("metrics", "retrieval"):
        for key in ("ndcg@10", "recall@10"):
            values = [r["test"][name][key] for r in runs]
            out[f"{name}/{key}"] = {
                "mean": sum(values) / len(values),
                "min": min(values),
                "max": max(values),
            }
    valid = [r["valid_ndcg@10"] for r in runs if "valid_ndcg@10" in r]
    if valid:  # what a variant should be chosen by: the test figures are for reporting
        out["valid/ndcg@10"] = {"mean": sum(valid) / len(valid)}
    ratios = [r["test"]["metrics"]["ndcg@10"] / r["test"]["retrieval"]["ndcg@10"] for r in runs]
    out["ratio_ndcg@10"] = {"mean": sum(ratios) / len(ratios), "min": min(ratios)}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--variants", type=Path, required=True, help="TOML: name -> overrides")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--minutes", type=float, default=30.0, help="time budget for all runs")
    add_set_argument(p)  # applied to every variant (e.g. train.precision="32-true")
    p.add_argument("--out-json", type=Path, required=True)
    args = p.parse_args(argv)
    variants: dict[str, dict[str, Any]] = tomllib.loads(args.variants.read_text())
    common = [f"{k}={_value(v)}" for k, v in args.set]
    # seeds outermost: every variant gets its first seed before any gets its second
    queue = [(name, seed) for seed in args.seeds for name in variants]
    deadline = time.monotonic() + args.minutes * 60
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    running: dict[tuple[str, int], tuple[subprocess.Popen[bytes], Path]] = {}
    finished: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    failed: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        while queue or running:
            while queue and len(running) < args.jobs:
                name, seed = queue.pop(0)
                out = Path(tmp) / f"{name}-{seed}.json"
                sets = common + [f"{k}={_value(v)}" for k, v in variants[name].items()]
                cmd = [sys.executable, "-m", "benchmarks.quality.two_stage", "--seeds", str(seed)]
                cmd += [a for s in sets for a in ("--set", s)] + ["--out-json", str(out)]
                log = (Path(tmp) / f"{name}-{seed}.log").open("wb")
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log)
                running[(name, seed)] = (proc, Path(log.name))
            for key, (proc, log_path) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[key]
                out = Path(tmp) / f"{key[0]}-{key[1]}.json"
                if proc.returncode == 0 and out.is_file():
                    run = json.loads(out.read_text())["runs"][0]
                    finished[key[0]].append(run)
                    t = run["test"]
                    print(
                        f"{key[0]} seed {key[1]}: two-stage {t['metrics']['ndcg@10']:.4f} "
                        f"retrieval {t['retrieval']['ndcg@10']:.4f} "
                        f"recall@10 {t['retrieval']['recall@10']:.4f}",
                        flush=True,
                    )
                else:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    failed.append({"variant": key[0], "seed": key[1], "log_tail": tail})
                    print(f"{key[0]} seed {key[1]}: FAILED\n{tail}", flush=True)
            if time.monotonic() > deadline:
                for proc, _ in running.values():
                    proc.kill()
                break
            time.sleep(1.0)
    report: dict[str, Any] = {
        "machine": machine(),
        "common_overrides": dict(args.set),
        "variants": variants,
        "summary": {name: _summary(runs) for name, runs in finished.items() if runs},
        "runs": finished,
        "failed": failed,
        "unfinished": [list(k) for k in running] + [list(k) for k in queue],
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(report, indent=2) + "\n")
    for name, s in report["summary"].items():
        valid = s.get("valid/ndcg@10", {}).get("mean", float("nan"))
        print(
            f"{name:14s} n={len(s['seeds'])} valid {valid:.4f} "
            f"two-stage {s['metrics/ndcg@10']['mean']:.4f} "
            f"retrieval {s['retrieval/ndcg@10']['mean']:.4f} / "
            f"{s['retrieval/recall@10']['mean']:.4f} ratio min {s['ratio_ndcg@10']['min']:.3f}"
        )
    return report


if __name__ == "__main__":
    main()
