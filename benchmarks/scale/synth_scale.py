"""Scale of ``tailored data synth``: time, events/s, peak memory and disk for a big website.

The generator runs in a child process so that the peak resident memory measured (the child's
own ``ru_maxrss``, from ``os.wait4``) is the generator's and nothing else's. A second check
(``--scaling-users N``) runs N and 2N users with the same items: if memory grows only with
the per-user arrays (ids, demographics), the extra bytes per user stay small and 10M users
fit in memory; events never accumulate.

    python -m benchmarks.scale.synth_scale             # 1M users, 100k items, ~30M events
    python -m benchmarks.scale.synth_scale --users 100000 --scaling-users 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._paths import RESULTS

__all__ = ["main", "run_generator"]

_DEFAULT_JSON = RESULTS / "synth_scale.json"
# a fixed key: the benchmark must not create or read the user's pseudonymization key
_KEY = bytes(range(32)).hex()
_CHILD = """
import json, sys
from pathlib import Path
from tailored.data.synth import generate_synthetic
p = json.loads(sys.argv[1])
s = generate_synthetic(Path(p["out"]), key=bytes.fromhex(p["key"]), **p["kw"])
Path(p["result"]).write_text(json.dumps({"n_events": s.n_events, "seconds": s.seconds,
                                         "events_by_type": s.events_by_type}))
"""


def run_generator(out: Path, **kw: Any) -> dict[str, Any]:
    """Generate a dataset into ``out`` in a child process; return its counts, wall seconds
    (process start to exit, imports included), the generator's own seconds, peak RSS (MiB)
    and size on disk (MiB)."""
    result = out.parent / f"{out.name}.result.json"
    params = json.dumps({"out": str(out), "key": _KEY, "kw": kw, "result": str(result)})
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, params])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen.wait
    if proc.returncode != 0:
        raise RuntimeError(f"generator exited with {proc.returncode} for {kw}")
    child = json.loads(result.read_text())
    result.unlink()
    files = {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    return {
        "params": kw,
        "n_events": child["n_events"],
        "events_by_type": child["events_by_type"],
        "wall_seconds": round(wall, 2),
        "generator_seconds": round(child["seconds"], 2),
        "events_per_second": round(child["n_events"] / child["seconds"]),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
        "disk_mib": round(sum(files.values()) / 2**20, 1),
        "disk_mib_by_file": {k: round(v / 2**20, 2) for k, v in sorted(files.items())},
    }


def _machine() -> dict[str, Any]:
    import numpy
    import pyarrow

    mem_kib = 0
    if Path("/proc/meminfo").is_file():
        line = Path("/proc/meminfo").read_text().splitlines()[0]  # MemTotal: N kB
        mem_kib = int(line.split()[1])
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pyarrow": pyarrow.__version__,
    }


def _scaling(
    workdir: Path, users: int, items: int, events_per_user: float, chunk_users: int
) -> dict[str, Any]:
    runs = []
    for n in (users, 2 * users):
        out = workdir / f"scaling-{n}"
        runs.append(
            run_generator(
                out,
                n_users=n,
                n_items=items,
                events_per_user=events_per_user,
                chunk_users=chunk_users,
            )
        )
        shutil.rmtree(out)
    extra = runs[1]["peak_rss_mib"] - runs[0]["peak_rss_mib"]
    per_user = extra * 2**20 / users
    return {
        "runs": runs,
        "events_ratio": round(runs[1]["n_events"] / runs[0]["n_events"], 3),
        "peak_rss_ratio": round(runs[1]["peak_rss_mib"] / runs[0]["peak_rss_mib"], 3),
        "extra_bytes_per_user": round(per_user),
        "projected_peak_rss_gib_10m_users": round(
            (runs[0]["peak_rss_mib"] * 2**20 + per_user * (10_000_000 - users)) / 2**30, 2
        ),
        # with fewer users than a few chunks, one chunk's events still grow with the users
        "meaningful": users >= 4 * chunk_users,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.scale.synth_scale", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--events-per-user", type=float, default=30.0)
    ap.add_argument("--chunk-users", type=int, default=50_000)
    ap.add_argument(
        "--scaling-users",
        type=int,
        default=200_000,
        help="also run N and 2N users to check memory per user (0: skip)",
    )
    ap.add_argument("--out-json", type=Path, default=_DEFAULT_JSON)
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where datasets are written (default: a temporary folder, deleted)",
    )
    args = ap.parse_args(argv)
    temp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="synth_scale.")) if temp else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        full = run_generator(
            workdir / "synthetic",
            n_users=args.users,
            n_items=args.items,
            events_per_user=args.events_per_user,
            chunk_users=args.chunk_users,
        )
        if temp:
            shutil.rmtree(workdir / "synthetic")
        scaling = (
            _scaling(
                workdir, args.scaling_users, args.items, args.events_per_user, args.chunk_users
            )
            if args.scaling_users > 0
            else None
        )
    finally:
        if temp:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "benchmark": "synth_scale",
        "machine": _machine(),
        "generate": full,
        "memory_scaling": scaling,
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(report, indent=2) + "\n")
    g = full
    print(
        f"{g['n_events']:,} events ({args.users:,} users, {args.items:,} items) in "
        f"{g['wall_seconds']} s ({g['events_per_second']:,} events/s), peak RSS "
        f"{g['peak_rss_mib']} MiB, {g['disk_mib']} MiB on disk -> {args.out_json}"
    )
    if scaling:
        print(
            f"memory scaling {args.scaling_users:,} -> {2 * args.scaling_users:,} users: peak "
            f"RSS x{scaling['peak_rss_ratio']} for events x{scaling['events_ratio']} "
            f"({scaling['extra_bytes_per_user']} B/user; 10M users projected "
            f"{scaling['projected_peak_rss_gib_10m_users']} GiB)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
