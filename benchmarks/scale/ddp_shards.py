"""What a DDP rank holds now that it reads only its own users' events, against a rank that
reads the whole log (what every rank did before), and a DDP run against one process:

    python -m benchmarks.scale.ddp_shards --users 1000000 --events-per-user 30

Stages, each a child process:

- ``generate``: the synthetic site (``--reuse-site`` keeps one a run before made in --work);
- ``read W/R``: rank R of a world of W reads its shard of the events as training does
  (``load_data`` of the shipped synthetic configuration, exposures unread unless
  ``--exposures``, as with ``[data] position_debias``; then the
  ``TrainFeed`` the rank trains from), for each W of ``--worlds`` (rank 0; every rank of the
  first W > 1, to show the shards are even). W = 1 is the whole read. Events held, seconds and
  peak RSS (``wait4``'s ``ru_maxrss``);
- ``train 1`` and ``train W``: ``tailored train`` for one epoch in one process and under DDP on
  W CPU processes (gloo; [train] threads auto: the CPUs shared between the processes): wall
  time, examples/s, test NDCG@10, and every process's peak RSS (``VmHWM``, sampled every 0.5 s
  from /proc for the command's process tree: the ranks the command starts are its children).

JSON to ``benchmarks/results/ddp_shards_<users>.json``; logs in --work.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._child import reusable_site, stage
from benchmarks._machine import machine
from benchmarks._paths import RESULTS, ROOT

__all__ = ["main"]

BIN = Path(sys.executable).parent


def _config(dataset: Path, path: Path, devices: int) -> Path:
    """The shipped synthetic configuration on ``dataset``, one epoch, on ``devices`` CPU
    processes (DDP where more than one); the final report on 2,000 users."""
    text = (ROOT / "configs" / "synthetic.toml").read_text()
    text = re.sub(r"^dataset = .*$", f'dataset = "{dataset}"', text, count=1, flags=re.M)
    text = re.sub(r"^max_epochs = .*$", "max_epochs = 1", text, count=1, flags=re.M)
    text += "final_eval_users = 2000\nprogress_bar = false\naccelerator = 'cpu'\n"
    if devices > 1:
        text += f'devices = {devices}\nstrategy = "ddp"\n'
    path.write_text(text)
    return path


def _read(config: Path, rank: int, world: int, exposures: bool) -> None:
    """The ``read W/R`` child: one JSON line of what the rank holds."""
    from tailored.config import load_config
    from tailored.data.interactions import UserShard
    from tailored.train.runs import load_data
    from tailored.train.two_tower.feed import TrainFeed

    cfg = load_config(config)
    start = time.perf_counter()
    data = load_data(cfg, exposures=exposures, shard=UserShard(rank, world))
    read = time.perf_counter() - start
    feed = TrainFeed.of(data, history_length=cfg.model.history_length)
    print(
        json.dumps(
            {
                "events": len(data.user),
                "train_events": feed.rows,
                "read_seconds": round(read, 1),
                "feed_gib": round(feed.nbytes / 2**30, 3),
                "exposures": len(data.exposures.user) if data.exposures is not None else 0,
            }
        )
    )


def _tree_peaks(root: int) -> dict[int, int]:
    """VmHWM in kB of ``root`` and its descendants now alive."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
                parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, grew = {root}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in tree} - tree
        grew, tree = bool(more), tree | more
    out: dict[int, int] = {}
    for pid in tree:
        try:
            m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        except OSError:
            continue
        if m:
            out[pid] = int(m.group(1))
    return out


def _train(name: str, cmd: list[str], log: Path, run: Path) -> dict[str, Any]:
    print(f"== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    peaks: dict[int, int] = {}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            for pid, kb in _tree_peaks(proc.pid).items():
                peaks[pid] = max(peaks.get(pid, 0), kb)
            time.sleep(0.5)
    result: dict[str, Any] = {
        "command": " ".join(cmd),
        "seconds": round(time.perf_counter() - start, 1),
        "exit": proc.returncode,
        # the processes that held more than 200 MiB: the ranks (not the compile helpers)
        "peak_rss_gib": sorted(
            (round(kb / 2**20, 2) for kb in peaks.values() if kb > 200 * 1024), reverse=True
        ),
        "log": str(log),
    }
    metrics = run / "metrics.json"
    if proc.returncode == 0 and metrics.is_file():
        m = json.loads(metrics.read_text())
        result["samples_per_second"] = round(m["samples_per_second"], 0)
        result["threads_per_process"] = m.get("threads")
        result["test_ndcg@10"] = round(m["test"]["metrics"]["ndcg@10"], 4)
        result["test_users"] = m["test"]["users"]
        result["popularity_ndcg@10"] = round(m["test"]["popularity"]["ndcg@10"], 4)
    print(f"   {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--events-per-user", type=float, default=30.0)
    p.add_argument("--worlds", type=int, nargs="*", default=[1, 2, 4], help="(none: no reads)")
    p.add_argument(
        "--train-world", type=int, default=2, help="DDP processes of `train W` (0: skip)"
    )
    p.add_argument("--work", type=Path, default=None, help="default runs/ddp-shards-<users>")
    p.add_argument("--reuse-site", action="store_true")
    p.add_argument(
        "--exposures",
        action="store_true",
        help="the reads read the exposures too, as training does with [data] position_debias",
    )
    p.add_argument("--out-json", type=Path, default=None)
    p.add_argument("--read", type=int, nargs=2, metavar=("RANK", "WORLD"), help=argparse.SUPPRESS)
    p.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.read:
        _read(args.config, args.read[0], args.read[1], args.exposures)
        return {}
    work = (args.work or ROOT / "runs" / f"ddp-shards-{args.users}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    dataset = work / "dataset"
    tailored = str(BIN / "tailored")
    report: dict[str, Any] = {
        "benchmark": "ddp_shards",
        "machine": machine(),
        "users": args.users,
        "items": args.items,
        "events_per_user": args.events_per_user,
        "reads_exposures": args.exposures,
        "stages": {},
    }
    stages = report["stages"]
    if reused := reusable_site(dataset, args):
        stages["generate"] = reused
    else:
        stages["generate"] = stage(
            "generate",
            [tailored, "data", "synth", "--users", str(args.users), "--items", str(args.items),
             "--events-per-user", str(args.events_per_user), "--out", str(dataset)],
            work / "generate.log",
        )  # fmt: skip
        if stages["generate"]["exit"]:
            return _write(report, args)
    cfg = _config(dataset, work / "read.toml", 1)
    spread = next((w for w in args.worlds if w > 1), 0)
    for world in args.worlds:
        for rank in range(world if world == spread else 1):
            name = f"read {world}/{rank}"
            log = work / f"read_{world}_{rank}.log"
            cmd = [sys.executable, "-m", "benchmarks.scale.ddp_shards", "--read", str(rank)]
            cmd += [str(world), "--config", str(cfg)] + (["--exposures"] if args.exposures else [])
            r = stage(name, cmd, log)
            lines = [ln for ln in log.read_text().splitlines() if ln.startswith("{")]
            if r["exit"] == 0 and lines:
                r.update(json.loads(lines[-1]))
            stages[name] = r
    worlds = [1, args.train_world] if args.train_world > 1 else []
    for world in worlds:
        run = work / f"run_{world}"
        cmd = [
            tailored,
            "train",
            "--config",
            str(_config(dataset, work / f"train_{world}.toml", world)),
        ]
        stages[f"train {world}"] = _train(
            f"train {world}", [*cmd, "--out", str(run)], work / f"train_{world}.log", run
        )
    return _write(report, args)


def _write(report: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    out = args.out_json or RESULTS / f"ddp_shards_{args.users}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
