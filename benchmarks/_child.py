"""A benchmark stage run as the user would run it: a command in its own process, with its wall
time, exit status and peak resident memory (``wait4``'s ``ru_maxrss``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["stage"]


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
