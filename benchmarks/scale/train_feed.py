"""Training steps per second of the synthetic configuration, and where a step's time goes: the
input pipeline against the step's forward and backward passes, for this tree and, in the same
run, for a checkout of an earlier one (``--baseline-tree``: today's path before a change).

    git worktree add /tmp/tailored-before <commit>
    python -m benchmarks.scale.train_feed --users 1000000 --batch-sizes 1024 8192 \\
        --baseline-tree /tmp/tailored-before

For each tree and batch size, Lightning's real loop trains the synthetic configuration for
``--warmup`` steps and then ``--steps`` timed steps (no validation). A callback splits each
step's wall time into: *input* (from the end of one step to the start of the next: fetching and
assembling the batch, its copy to the device, the loop's own work), *forward* (the training
step up to the loss), *backward*, and *optimizer* (the optimizer step and the hooks after it).
The shares come from a second, shorter run under the torch profiler, where the same four
phases are ``record_function`` ranges (the op table of each is in the JSON); samples/s from
the unprofiled run. On a GPU every phase boundary synchronises, so its time is its own.

A tree is measured in a subprocess (``--worker``) with that tree first on the import path; the
worker uses only what both trees share (``load_config``, ``load_data``, the fit module's
``_data_module`` and ``_task``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("input", "forward", "backward", "optimizer")


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    import pytorch_lightning as pl
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from tailored.config import load_config
    from tailored.train.runs import load_data
    from tailored.train.two_tower import fit
    from tailored.train.two_tower.model import build_model, tower_spec

    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()

    class Clock(pl.Callback):
        """Wall time of each phase of the steps after ``skip``; with ``ranges``, each phase
        is also a profiler range."""

        def __init__(self, skip: int, ranges: bool) -> None:
            self.skip, self.ranges = skip, ranges
            self.seconds = dict.fromkeys(PHASES, 0.0)
            self.samples = 0
            self._phase: str | None = None
            self._t = 0.0
            self._range: Any = None
            self._step = -1

        def _switch(self, phase: str | None) -> None:
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            if self._phase is not None and self._step >= self.skip:
                self.seconds[self._phase] += now - self._t
            if self._range is not None:
                self._range.__exit__(None, None, None)
                self._range = None
            self._phase, self._t = phase, now
            if phase is not None and self.ranges:
                self._range = record_function(phase)
                self._range.__enter__()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._switch("forward")
            self._step += 1
            if self._step >= self.skip:
                self.samples += int(batch.examples)

        def on_before_backward(self, trainer, pl_module, loss):
            self._switch("backward")

        def on_after_backward(self, trainer, pl_module):
            self._switch("optimizer")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._switch("input")

        def on_train_end(self, trainer, pl_module):
            self._phase = None  # the time after the last step is no step's
            self._switch(None)

    overrides: dict[str, Any] = {"data.dataset": str(args.dataset), "train.seed": 0}
    overrides.update(dict(json.loads(args.set_json)))
    base = load_config(ROOT / "configs" / "synthetic.toml", overrides=overrides)
    start = time.perf_counter()
    data = load_data(base)
    out: dict[str, Any] = {"load_seconds": time.perf_counter() - start, "runs": []}

    def trainer(steps: int, clock: Clock) -> pl.Trainer:
        return pl.Trainer(
            accelerator="auto",
            devices=1,
            precision="bf16-mixed" if cuda else "32-true",
            max_steps=steps,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[clock],
        )

    def setup(batch_size: int) -> tuple[Any, Any]:
        cfg = load_config(
            ROOT / "configs" / "synthetic.toml",
            overrides={**overrides, "train.batch_size": batch_size},
        )
        pl.seed_everything(0, verbose=False)
        spec = tower_spec(data)
        model = build_model(
            spec, cfg.model, data.items.categorical, data.items.multi, data.items.numeric
        )
        return fit._task(cfg, model, data), fit._data_module(cfg, data)

    cost = _model_cost(setup) if args.cost else None
    if cost is not None:
        out["model_cost"] = cost
    for batch_size in args.batch_sizes:
        task, dm = setup(batch_size)
        clock = Clock(args.warmup, ranges=False)
        t0 = time.perf_counter()
        trainer(args.warmup + args.steps, clock).fit(task, datamodule=dm)
        wall = time.perf_counter() - t0
        step_seconds = sum(clock.seconds.values())
        run: dict[str, Any] = {
            "batch_size": batch_size,
            "steps": args.steps,
            "samples": clock.samples,
            "samples_per_second": clock.samples / step_seconds,
            "ms_per_step": {k: 1e3 * v / args.steps for k, v in clock.seconds.items()},
            "fit_wall_seconds": wall,
        }
        # the shares, from the torch profiler: the same phases as ranges over a short run
        task, dm = setup(batch_size)
        clock = Clock(args.profile_warmup, ranges=True)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            trainer(args.profile_warmup + args.profile_steps, clock).fit(task, datamodule=dm)
        events = prof.key_averages()
        ranges = {e.key: e.cpu_time_total / 1e6 for e in events if e.key in PHASES}
        total = sum(ranges.values())
        run["profiler"] = {
            "steps": args.profile_warmup + args.profile_steps,
            "range_seconds": ranges,
            "share": {k: v / total for k, v in ranges.items()} if total else {},
            "outside_forward_backward": (
                1.0 - (ranges.get("forward", 0.0) + ranges.get("backward", 0.0)) / total
                if total
                else None
            ),
            "input_share": ranges.get("input", 0.0) / total if total else None,
            "top_ops": [
                {"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count}
                for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
                if e.key not in PHASES
            ],
        }
        if cost is not None:
            run["vs_peak"] = _vs_peak(cost, batch_size, run["samples_per_second"], cuda)
        out["runs"].append(run)
        print(
            f"  batch {batch_size}: {run['samples_per_second']:,.0f} samples/s; input "
            f"{100 * (run['profiler']['input_share'] or 0):.1f}% of step time, outside forward "
            f"and backward {100 * (run['profiler']['outside_forward_backward'] or 0):.1f}%",
            file=sys.stderr,
            flush=True,
        )
    return out


# dense bf16 tensor FLOP/s and HBM bytes/s of the GPUs this may run on (the vendors' figures)
PEAKS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12)}


def _model_cost(setup: Any) -> dict[str, float]:
    """FLOPs of one training step per example (torch's FlopCounterMode over the forward and
    backward passes, on the CPU), as ``a + c * B``: the towers' per-example work and the
    in-batch softmax's, which grows with the batch B (fitted from batches of 512 and 1,024);
    and the optimizer's HBM traffic per step (AdamW reads parameter, gradient and both
    moments and writes three: 28 bytes a parameter), a lower bound on the bytes moved."""
    from torch.utils.flop_counter import FlopCounterMode

    counts = {}
    for b in (512, 1024):
        task, dm = setup(b)
        task.log = lambda *a, **k: None
        batch = next(iter(dm.train_dataloader()))
        with FlopCounterMode(display=False) as fc:
            task.training_step(batch, 0).backward()
        counts[b] = fc.get_total_flops() / batch.examples
    c = (counts[1024] - counts[512]) / 512
    params = sum(p.numel() for p in task.parameters())
    return {
        "flops_per_example_fixed": counts[512] - 512 * c,
        "flops_per_example_per_batch_row": c,
        "parameters": float(params),
        "optimizer_bytes_per_step": 28.0 * params,
    }


def _vs_peak(cost: dict[str, float], batch: int, samples_per_second: float, cuda: bool) -> dict:
    """The run's achieved FLOP/s and optimizer bytes/s, and their shares of the GPU's peaks."""
    import torch

    flops = cost["flops_per_example_fixed"] + batch * cost["flops_per_example_per_batch_row"]
    out: dict[str, Any] = {
        "flops_per_example": flops,
        "achieved_flops_per_second": flops * samples_per_second,
        "optimizer_bytes_per_second": cost["optimizer_bytes_per_step"] * samples_per_second / batch,
    }
    name = torch.cuda.get_device_name(0) if cuda else ""
    for gpu, (peak_flops, peak_bytes) in PEAKS.items():
        if gpu in name:
            out["gpu"] = gpu
            out["share_of_bf16_peak"] = out["achieved_flops_per_second"] / peak_flops
            out["share_of_hbm_peak_optimizer"] = out["optimizer_bytes_per_second"] / peak_bytes
            # the examples/s each peak alone would allow
            out["examples_per_second_at_flop_peak"] = peak_flops / flops
    return out


def _measure_tree(tree: Path, args: argparse.Namespace, *, compile_: bool) -> dict[str, Any]:
    """Run the worker in a subprocess with ``tree`` first on the import path."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "--dataset",
        str(args.dataset),
        "--threads",
        str(args.threads),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--profile-steps",
        str(args.profile_steps),
        "--profile-warmup",
        str(args.profile_warmup),
        "--set-json",
        json.dumps(args.set),
        "--batch-sizes",
        *map(str, args.batch_sizes),
    ]
    if args.cost and tree == ROOT:
        cmd.append("--cost")
    if compile_:  # this tree's [train] compile
        cmd[cmd.index("--set-json") + 1] = json.dumps([*args.set, ["train.compile", True]])
    env = {**os.environ, "PYTHONPATH": str(tree)}
    print(f"{tree}{' (compiled)' if compile_ else ''}:", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, check=True, cwd=tree)
    report = json.loads(done.stdout)
    commit = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    )
    report["tree"] = {
        "path": str(tree),
        "commit": commit.stdout.strip() or None,
        "uncommitted_changes": bool(dirty.stdout.strip()),
        "compiled": compile_,
    }
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dataset", type=Path, default=None)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1024, 8192])
    p.add_argument("--steps", type=int, default=60, help="timed steps per batch size")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--profile-steps", type=int, default=8)
    p.add_argument("--profile-warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch's intra-op threads")
    p.add_argument(
        "--baseline-tree", type=Path, default=None, help="a checkout of the path to compare with"
    )
    p.add_argument(
        "--compile", action="store_true", help="also measure this tree with torch.compile"
    )
    p.add_argument(
        "--cost",
        action="store_true",
        help="count the model's FLOPs and compare with the GPU's peaks",
    )
    p.add_argument("--set-json", default="[]", help=argparse.SUPPRESS)  # the worker's overrides
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out-json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.worker:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON alone
            measured = _worker(args)
        print(json.dumps(measured))
        return measured

    from benchmarks._machine import machine
    from benchmarks._paths import RESULTS
    from tailored.data.synth import generate_synthetic
    from tailored.paths import tailored_home

    args.set = []
    args.dataset = args.dataset or tailored_home() / "datasets" / f"synthetic-{args.users}"
    if not (args.dataset / "dataset.json").is_file():
        generate_synthetic(args.dataset, n_users=args.users, n_items=args.items, seed=0)
    report: dict[str, Any] = {
        "benchmark": "train_feed",
        "machine": machine(),
        "dataset": str(args.dataset),
        "users": args.users,
        "threads": args.threads,
        "trees": [],
    }
    if args.baseline_tree is not None:
        report["trees"].append(_measure_tree(args.baseline_tree.resolve(), args, compile_=False))
    report["trees"].append(_measure_tree(ROOT, args, compile_=False))
    if args.compile:
        report["trees"].append(_measure_tree(ROOT, args, compile_=True))
    if args.baseline_tree is not None:
        before = {r["batch_size"]: r for r in report["trees"][0]["runs"]}
        report["speedup"] = {
            f"{t['tree']['path']}{' compiled' if t['tree']['compiled'] else ''}": {
                str(r["batch_size"]): r["samples_per_second"]
                / before[r["batch_size"]]["samples_per_second"]
                for r in t["runs"]
                if r["batch_size"] in before
            }
            for t in report["trees"][1:]
        }
    out = args.out_json or RESULTS / "train_feed.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report.get("speedup", {}), indent=2))
    return report


if __name__ == "__main__":
    main()
