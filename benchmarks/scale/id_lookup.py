"""Mapping an event log's user ids to rows: ``pyarrow.compute.index_in`` per batch (what the
log reader did before, hashing every user id again for each batch) against
:class:`tailored.data.ids.IdLookup` (hashed once, then a sorted binary search a batch), on the
same random 32-hex-digit ids (pseudonyms' shape), in the same run.

    python -m benchmarks.scale.id_lookup --users 1000000 10000000

For each user count: the build of the lookup once, and the median over ``--batches`` batches of
``--batch-rows`` ids drawn from the users (the reader's batch of 2^20 events) of each way; the
two must give the same rows, which the script checks. JSON to
``benchmarks/results/id_lookup.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from tailored.data.ids import IdLookup

__all__ = ["main"]


def _one(users: int, batch_rows: int, batches: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    hexes = np.char.mod("%016x", rng.integers(0, 2**63, size=(users, 2), dtype=np.int64))
    ids = pa.array(np.char.add(hexes[:, 0], hexes[:, 1]).astype(object), pa.string())
    start = time.perf_counter()
    lookup = IdLookup(ids)
    build = time.perf_counter() - start
    old, new = [], []
    for _ in range(batches):
        batch = ids.take(pa.array(rng.integers(0, users, batch_rows)))
        t = time.perf_counter()
        want = pc.index_in(batch, value_set=ids).to_numpy(zero_copy_only=False)
        old.append(time.perf_counter() - t)
        t = time.perf_counter()
        got = lookup.rows(batch)
        new.append(time.perf_counter() - t)
        if not np.array_equal(got, want):
            raise SystemExit(f"{users} users: IdLookup and index_in disagree")
    per_old, per_new = statistics.median(old), statistics.median(new)
    return {
        "users": users,
        "batch_rows": batch_rows,
        "batches": batches,
        "index_in_seconds_per_batch": round(per_old, 4),
        "id_lookup_build_seconds": round(build, 3),
        "id_lookup_seconds_per_batch": round(per_new, 4),
        "speedup_per_batch": round(per_old / per_new, 2),
        # a log of 10 events a user read in batches: the whole mapping both ways
        "log_of_10_per_user": {
            "batches": -(-10 * users // batch_rows),
            "index_in_seconds": round(-(-10 * users // batch_rows) * per_old, 1),
            "id_lookup_seconds": round(build + -(-10 * users // batch_rows) * per_new, 1),
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--users", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--batch-rows", type=int, default=1 << 20)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-json", default=str(RESULTS / "id_lookup.json"))
    args = p.parse_args(argv)
    runs = [_one(n, args.batch_rows, args.batches, args.seed) for n in args.users]
    report = {"benchmark": "id_lookup", "machine": machine(), "config": vars(args), "runs": runs}
    with open(args.out_json, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    for r in runs:
        print(json.dumps(r))
    return report


if __name__ == "__main__":
    main()
