"""A benchmark stage run as the user would run it: a command in its own process, with its wall
time, exit status and peak resident memory (``wait4``'s ``ru_maxrss``)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["reusable_site", "stage"]


def stage(name: str, cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd`` to completion, its output to ``log``: its wall time, exit status and peak
    RSS (an out-of-memory kill shows as a negative exit status)."""
    print(f"== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    result = {
        "command": " ".join(cmd),
        "seconds": round(time.perf_counter() - start, 1),
        "exit": code,
        "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2),
        "log": str(log),
    }
    print(f"   {json.dumps(result)}", file=sys.stderr, flush=True)
    return result


def reusable_site(dataset: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """With ``--reuse-site``, the site already in ``dataset`` if it has ``args``' sizes
    (``users``, ``items``): the generate stage's record, else None."""
    meta = dataset / "dataset.json"
    if not args.reuse_site or not meta.is_file():
        return None
    counts = json.loads(meta.read_text()).get("counts", {})
    if (counts.get("users"), counts.get("items")) != (args.users, args.items):
        return None
    print(f"== generate: reusing {dataset}", file=sys.stderr, flush=True)
    return {"reused": str(dataset), "counts": counts, "exit": 0}
