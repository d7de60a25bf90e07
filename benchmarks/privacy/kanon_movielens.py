"""k-anonymity of MovieLens-100k's 943 users before and after the default coarsening.

Quasi-identifiers: age, gender, occupation and zip code, all four kept by the project's
MovieLens reader (:mod:`tailored.data.movielens` stores ``zip`` as a categorical field, so
nothing is read from the raw ``u.user`` file). "Before" is the dataset as fetched (exact
values, the baseline); "after" applies the default policy of :mod:`tailored.data.coarsen`
(age in bands 18/25/35/45/55/65, zip to its first 3 characters, then values held by fewer
than 10 users -> "other", for zip, occupation and gender), through the same
:func:`tailored.privacy.kanon.privacy_report` that ``tailored privacy report --coarsen
default`` runs. For each: k and the users in groups smaller than 5 for the full combination
and every sub-combination, and what each field drives (dropped, or coarsened alone).

Utility is recorded beside privacy: how many distinct values each field keeps and how many
users lose their zip to "other". A sweep over the zip prefix length (other fields at their
default) shows the choice of 3 against 1, 2, 4, 5 and the exact zip.

    python -m benchmarks.privacy.kanon_movielens      # writes results/kanon_movielens.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from tailored.data.coarsen import Coarsening, coarsen_table, default_policy
from tailored.data.movielens import fetch_movielens_100k
from tailored.data.schema import FieldSpec, read_dataset_meta
from tailored.data.store import read_table
from tailored.paths import write_json_atomic
from tailored.privacy.kanon import GroupStats, k_anonymity, privacy_report

__all__ = ["main"]

QUASI_IDENTIFIERS = ("age", "gender", "occupation", "zip")


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.privacy.kanon_movielens", description=__doc__
    )
    p.add_argument("--dataset", type=Path, default=None, help="default: fetch movielens-100k")
    p.add_argument("--threshold", type=int, default=5, help="a group smaller than this is small")
    p.add_argument("--out", type=Path, default=RESULTS / "kanon_movielens.json")
    return p.parse_args(argv)


def _brief(s: GroupStats) -> dict[str, Any]:
    return {
        "k": s.k,
        "groups": s.groups,
        "users_below": s.users_below,
        "share_below": s.share_below,
    }


def _distinct(users: pa.Table) -> dict[str, int]:
    return {f: pc.count_distinct(users.column(f)).as_py() for f in QUASI_IDENTIFIERS}


def _zip_sweep(users: pa.Table, kinds: dict[str, Any], threshold: int) -> list[dict[str, Any]]:
    """The full combination with age, gender and occupation at their default and zip exact
    or cut to its first 1..5 characters, with and without merging rare zips (< 10 users)
    into "other"."""
    others = [r for r in _defaults(kinds) if r.field != "zip"]
    variants = [(None, 0)] + [(p, m) for p in (1, 2, 3, 4, 5) for m in (0, 10)]
    rows = []
    for prefix, min_count in variants:
        zip_rule = [Coarsening("zip", prefix=prefix or 0, min_count=min_count)] if prefix else []
        coarse, done = coarsen_table(users, [*others, *zip_rule], kinds)
        r = k_anonymity(coarse, QUASI_IDENTIFIERS, threshold=threshold)
        rows.append(
            {
                "zip_prefix": prefix,
                "zip_min_count": min_count,
                **_brief(r.full),
                "zip_values_kept": pc.count_distinct(coarse.column("zip")).as_py(),
                "users_with_zip_other": done.get("zip", {}).get("merged_users", 0),
            }
        )
    return rows


def _defaults(kinds: dict[str, Any]) -> list[Coarsening]:
    return list(default_policy([FieldSpec(f, kinds[f]) for f in QUASI_IDENTIFIERS]))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    a = _args(argv)
    dataset = a.dataset or fetch_movielens_100k()
    meta = read_dataset_meta(dataset)
    kinds = {f.name: f.kind for f in meta.schema.user_fields}
    start = time.perf_counter()
    report = privacy_report(dataset, QUASI_IDENTIFIERS, coarsen="default", threshold=a.threshold)
    seconds = time.perf_counter() - start
    before, after = report.as_stored, report.coarsened
    assert after is not None and report.coarsening is not None
    users = read_table(dataset, "users")
    coarse, _ = coarsen_table(users, _defaults(kinds), kinds)
    out = {
        "benchmark": "kanon_movielens",
        "dataset": meta.name,
        "source": meta.source,
        "users": before.users,
        "quasi_identifiers": list(QUASI_IDENTIFIERS),
        "threshold": a.threshold,
        "policy": report.coarsening,
        "summary": {"before": _brief(before.full), "after": _brief(after.full)},
        "distinct_values": {"before": _distinct(users), "after": _distinct(coarse)},
        "before": before.to_json(),
        "after": after.to_json(),
        "zip_sweep": _zip_sweep(users, kinds, a.threshold),
        "report_seconds": round(seconds, 3),
        "machine": machine(),
    }
    write_json_atomic(a.out, out)
    b, f = out["summary"]["before"], out["summary"]["after"]
    print(
        f"{meta.name}: k {b['k']} -> {f['k']}; users in groups < {a.threshold}: "
        f"{b['users_below']} ({100 * b['share_below']:.1f}%) -> {f['users_below']} "
        f"({100 * f['share_below']:.1f}%); report {seconds:.2f} s; wrote {a.out}"
    )
    return out


if __name__ == "__main__":
    main()
