"""A synthetic site end to end on one machine, each stage the command a user would run, with
its wall time and peak memory: generate the site, train the two-tower model for one epoch,
build the bundle (ranker, every user embedded, the index), and serve it (start until the
first ``Recommend`` is answered, then ``Recommend`` for known users).

    python -m benchmarks.scale.site_e2e --users 10000000 --events-per-user 10

Each stage is a child process; its peak resident memory is the child's own maximum
(``wait4``'s ``ru_maxrss``; for the server, ``VmHWM`` while it serves). A stage that fails
(an out-of-memory kill included) is recorded with its exit status and the stages after it
are skipped. JSON to ``benchmarks/results/site_e2e_<users>.json``; the logs beside the run
in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._child import reusable_site
from benchmarks._child import stage as run_stage
from benchmarks._machine import machine
from benchmarks._paths import RESULTS, ROOT

__all__ = ["main"]

BIN = Path(sys.executable).parent


def _config(dataset: Path, path: Path) -> Path:
    """The shipped synthetic configuration on ``dataset``, for a run that reports on a sample
    (validation on 5,000 users, the final report on 2,000), logging lines not bars."""
    text = (ROOT / "configs" / "synthetic.toml").read_text()
    text = re.sub(r"^dataset = .*$", f'dataset = "{dataset}"', text, count=1, flags=re.M)
    text += "final_eval_users = 2000\nprogress_bar = false\n"  # [train] is the last table
    path.write_text(text)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(bundles: Path, users: int, calls: int, log: Path) -> dict[str, Any]:
    """Start the server on ``bundles``, wait until it answers, then ``calls`` Recommend calls
    for random known users (the generator's raw ids), one at a time."""
    import grpc
    import numpy as np

    from tailored.serve.v1 import personalization_pb2 as pb
    from tailored.serve.v1 import personalization_pb2_grpc as pb_grpc

    port = _free_port()
    cmd = [str(BIN / "tailored"), "serve", str(bundles), "--port", str(port), "--no-watch"]
    cmd += ["--metrics-port", "-1"]
    print(f"== serve: {' '.join(cmd)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    out = log.open("w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    result: dict[str, Any] = {"command": " ".join(cmd), "log": str(log)}
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.PersonalizationStub(channel)
        width = max(7, len(str(users - 1)))
        first = pb.RecommendRequest(user_id=f"u{0:0{width}d}", k=10, surface="home")
        while True:  # up once a Recommend is answered (Status is an admin call, with a token)
            if proc.poll() is not None:
                result["exit"] = proc.returncode
                return result
            try:
                stub.Recommend(first, timeout=5)
                break
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:  # up, but refusing: say why
                    result["exit"], result["error"] = str(e.code()), e.details()
                    return result
                time.sleep(1.0)
        result["start_seconds"] = round(time.perf_counter() - start, 1)
        rng = random.Random(0)
        ms: list[float] = []
        strategies: dict[str, int] = {}
        for _ in range(calls):
            user = f"u{rng.randrange(users):0{width}d}"
            t = time.perf_counter()
            req = pb.RecommendRequest(user_id=user, k=10, surface="home")
            resp = stub.Recommend(req, timeout=30)
            ms.append(1e3 * (time.perf_counter() - t))
            strategies[resp.strategy] = strategies.get(resp.strategy, 0) + 1
        result["recommend_ms"] = {
            "calls": calls,
            "p50": round(float(np.percentile(ms, 50)), 2),
            "p99": round(float(np.percentile(ms, 99)), 2),
        }
        result["strategies"] = strategies
        hwm = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{proc.pid}/status").read_text())
        result["peak_rss_gib"] = round(int(hwm.group(1)) / 2**20, 2) if hwm else None
        result["exit"] = 0
        channel.close()
        return result
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.close()
        print(f"   {json.dumps(result)}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, default=10_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--events-per-user", type=float, default=10.0)
    p.add_argument("--work", type=Path, default=None, help="default runs/site-e2e-<users>")
    p.add_argument("--calls", type=int, default=500, help="Recommend calls once serving")
    p.add_argument(
        "--reuse-site",
        action="store_true",
        help="keep the site a run before generated in --work (same sizes) instead of a new one",
    )
    p.add_argument("--out-json", type=Path, default=None)
    args = p.parse_args(argv)
    work = (args.work or ROOT / "runs" / f"site-e2e-{args.users}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    dataset, run, bundles = work / "dataset", work / "run", work / "bundles"
    tailored = str(BIN / "tailored")
    report: dict[str, Any] = {
        "benchmark": "site_e2e",
        "machine": machine(),
        "users": args.users,
        "items": args.items,
        "events_per_user": args.events_per_user,
        "stages": {},
    }
    stages = report["stages"]
    plan = [
        (
            "generate",
            [tailored, "data", "synth", "--users", str(args.users), "--items", str(args.items),
             "--events-per-user", str(args.events_per_user), "--out", str(dataset)],
        ),
        (
            "train",
            [tailored, "train", "--config", str(_config(dataset, work / "train.toml")),
             "--out", str(run), "--max-epochs", "1"],
        ),
        ("bundle", [tailored, "bundle", "build", str(run), "--out", str(bundles), "--no-progress"]),
    ]  # fmt: skip
    for name, cmd in plan:
        if name == "generate" and (reused := reusable_site(dataset, args)):
            stages[name] = reused  # the same site, generated before: its figures are its own
            continue
        stages[name] = run_stage(name, cmd, work / f"{name}.log")
        if stages[name]["exit"] != 0:
            break
    else:
        stages["serve"] = _serve(bundles, args.users, args.calls, work / "serve.log")
    metrics = run / "metrics.json"
    if metrics.is_file():
        m = json.loads(metrics.read_text())
        report["train"] = {
            k: m.get(k) for k in ("samples_per_second", "train_seconds", "epochs", "threads")
        }
        report["train"]["test"] = m.get("test", {}).get("metrics")
    out = args.out_json or RESULTS / f"site_e2e_{args.users}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(stages, indent=2))
    return report


if __name__ == "__main__":
    main()
