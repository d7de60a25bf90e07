"""What the hashing of the user-id embedding table costs in quality: the synthetic site at 1M
users trained without an id table, with hashed tables of 2^17 and 2^20 rows, and with a
collision-free ("unhashed") table of 2^20 rows, each scored on held-out test events and
against the site's planted tastes.

    python -m benchmarks.quality.user_id_table --users 1000000 --seeds 0 1 2

``[model] user_id_buckets = B`` gives the user tower an id embedding of B + 1 rows, a user's
row being ``int(pseudonym[:12], 16) % B + 1`` (:func:`~tailored.data.features.user_hash_buckets`):
pseudonyms are HMACs, so users share rows at random (at 1M users about 8 a row at 2^17, and
61% of them share theirs with someone at 2^20). The unhashed table is made without touching
the product: a copy of the dataset (:func:`row_encoded_copy`) in which each user's id starts
with their row of ``users.parquet`` in 12 hex digits (``f"{row:012x}" + id[12:]``, in
``users.parquet`` and in ``events.parquet``; items, the planted truth and ``dataset.json``
as they were), so that with B at least the number of users every user has a row of their
own (``row % B + 1``), in a table the size of the hashed 2^20. Every row of the copy is its
original's row (profile, events, split and planted tastes alike), so the id table is the only
difference; the script checks that the copy's buckets are all distinct.

**Runs** (``--buckets``; ``unhashed:B`` on the copy, ``2^k`` allowed): ``0`` (no id table),
``2^17``, ``2^20``, ``unhashed:2^20``, each for every ``--seeds``. The site is generated with
``tailored data synth`` into ``--work`` (reused when it already holds one of these sizes),
and each run is ``tailored train`` in a child process on ``configs/synthetic.toml`` with
``[model] user_id_buckets = B``, ``[train] seed``, ``final_eval_users = --eval-users`` and no
progress bar, for ``--epochs`` epochs; its wall time and peak resident memory are the child's
(``wait4``'s ``ru_maxrss``).

**Figures** per run, from the run's ``metrics.json``: test NDCG@10, Recall@10 and item
coverage@10 (full ranking, training and validation items excluded, on ``--eval-users``
sampled test users; the popularity baseline on the same users beside them), training
samples a second and seconds. Planted-truth recall@10
(:func:`~tailored.train.truth.planted_truth_recall`): the share of each user's true top 10
by planted affinity at the end of the span in the model's top 10 (their training and
validation items excluded in both), over ``--eval-users`` test users drawn with seed 0, the
same users for every run; computed in this process after the run (it reads the dataset
again). And per run, of its table: the share
of users whose row holds another user too (``collision_share``: 1 - (1 - 1/B)^(U-1), about
14% at 20,000 users and 2^17), and the share of users beyond the first in each used row
(``displaced_share``, 1 - rows used / users: about 7% there); both 0 on the copy.

**What the table can learn.** At the default 10 events a user (impressions included) the site
has about 0.63 positives a user, and 70% of the users none (20,000 users, 2,000 items): a
user's row is trained from their one or two training positives, if any, so the differences
between the runs are small beside the noise of a seed; use several ``--seeds``, or more
``--events-per-user``. With one seed, a hashed and the unhashed table of the same B start
from the same weights and see the same batches: only which row each user reads differs.

**Time.** At 20,000 users, 2,000 items and one epoch the four runs took 41 s in all on this
2-core machine beside another busy process (each run 6-9 s, most of it start-up and the
final evaluation; a table of 2^20 rows halves the training samples a second, its rows dense
in the optimizer). Not measured here at 1M users.

JSON to ``benchmarks/results/user_id_table_<users>.json``: the machine, the command and its
settings, every run, and per run kind and B the mean and min-max over seeds; a table of the
means is printed. The logs and runs stay in ``--work`` (default ``runs/user-id-table-<users>``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks._child import stage as run_stage
from benchmarks._machine import machine
from benchmarks._paths import RESULTS, ROOT
from tailored.data.features import user_hash_buckets
from tailored.data.ids import IdLookup

__all__ = ["collision", "main", "row_encoded_copy"]

BIN = Path(sys.executable).parent
HASHED, UNHASHED = "hashed", "unhashed"
_FIGURES = ("ndcg@10", "recall@10", "itemcoverage@10")


# -- the collision-free copy -------------------------------------------------------------------
def _row_ids(ids: pa.Array) -> pa.Array:
    """Each id with its first 12 characters replaced by its row in 12 hex digits."""
    return pa.array([f"{row:012x}{u[12:]}" for row, u in enumerate(ids.to_pylist())], type=ids.type)


def row_encoded_copy(src: Path, dst: Path, *, batch_rows: int = 1 << 20) -> Path:
    """Copy the dataset ``src`` to ``dst`` with every user id row-encoded (see the module
    doc): ``users.parquet`` in one piece, ``events.parquet`` streamed ``batch_rows`` events at
    a time, the other files as they are. Written beside ``dst`` and renamed into place at the
    end; an existing ``dst`` is replaced."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        users = pq.read_table(src / "users.parquet")
        col = users.schema.get_field_index("user_id")
        ids = users.column(col).combine_chunks()
        new = _row_ids(ids)
        users = users.set_column(col, users.schema.field(col), new)
        pq.write_table(users, tmp / "users.parquet")
        lookup = IdLookup(ids)
        events = pq.ParquetFile(src / "events.parquet")
        schema = events.schema_arrow
        at = schema.get_field_index("user_id")
        with pq.ParquetWriter(tmp / "events.parquet", schema) as writer:
            for batch in events.iter_batches(batch_size=batch_rows):
                rows = lookup.rows(batch.column(at))
                if (rows < 0).any():
                    bad = batch.column(at)[int(np.flatnonzero(rows < 0)[0])]
                    raise ValueError(f"{src}: an event's user {bad} is not in users.parquet")
                columns = list(batch.columns)
                columns[at] = new.take(rows)
                writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
        for path in src.iterdir():
            if path.name in ("users.parquet", "events.parquet"):
                continue
            if path.is_dir():
                shutil.copytree(path, tmp / path.name)
            else:
                shutil.copy2(path, tmp / path.name)
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def collision(ids: np.ndarray, buckets: int) -> dict[str, Any]:
    """How ``ids`` (pseudonyms) share the rows of a table of ``buckets``: rows used, the share
    of users whose row holds another user too, and the share beyond the first in each row."""
    rows = user_hash_buckets(ids, buckets)
    counts = np.bincount(rows, minlength=buckets + 1)
    used = int((counts > 0).sum())
    return {
        "rows_used": used,
        "collision_share": float((counts[rows] > 1).mean()),
        "displaced_share": 1.0 - used / len(ids),
    }


def _user_ids(dataset: Path) -> np.ndarray:
    col = pq.read_table(dataset / "users.parquet", columns=["user_id"]).column(0)
    return col.to_numpy()


# -- the runs ----------------------------------------------------------------------------------
def _config(dataset: Path, buckets: int, seed: int, eval_users: int, path: Path) -> Path:
    """The shipped synthetic configuration on ``dataset`` with an id table of ``buckets``,
    trained with ``seed``, reporting on ``eval_users`` users, logging lines not bars."""
    from tailored.config import load_config

    text = (ROOT / "configs" / "synthetic.toml").read_text()
    text = re.sub(r"^dataset = .*$", f'dataset = "{dataset}"', text, count=1, flags=re.M)
    head, sep, train = text.partition("\n[train]\n")
    if not sep or "\n[model]\n" not in head:
        raise RuntimeError("configs/synthetic.toml: expected [model], and [train] last")
    head = re.sub(r"^user_id_buckets = .*\n", "", head, flags=re.M)
    head = head.replace("\n[model]\n", f"\n[model]\nuser_id_buckets = {buckets}\n", 1)
    train = re.sub(r"^seed = .*\n", "", train, flags=re.M)
    train = f"seed = {seed}\n{train.rstrip()}\n"
    train += f"final_eval_users = {eval_users}\nprogress_bar = false\n"  # [train] is the last
    path.write_text(head + sep + train)
    cfg = load_config(path)
    if (cfg.model.user_id_buckets, cfg.train.seed) != (buckets, seed):
        raise RuntimeError(f"{path}: the configuration did not take the run's settings")
    return path


def _truth_recall(run: Path, dataset: Path, users: int) -> dict[str, float]:
    """Planted-truth recall@10 of ``run``'s model and of popularity (seed 0's users)."""
    from tailored.train.runs import load_run
    from tailored.train.truth import planted_truth_recall

    return planted_truth_recall(load_run(run), dataset, users=users, seed=0)


def _pow(text: str) -> int:
    base, sep, exp = text.partition("^")
    return int(base) ** int(exp) if sep else int(text)


def _run_spec(text: str) -> tuple[str, int]:
    """``"2^17"`` -> ``("hashed", 131072)``; ``"unhashed:2^20"`` -> ``("unhashed", 1048576)``."""
    kind, sep, value = text.rpartition(":")
    kind = kind if sep else HASHED
    try:
        buckets = _pow(value)
    except ValueError:
        buckets = -1
    if kind not in (HASHED, UNHASHED) or buckets < 0 or (kind == UNHASHED and buckets == 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected B, 2^k or unhashed:B (B > 0)")
    return kind, buckets


def _site(args: argparse.Namespace, dataset: Path, log: Path) -> dict[str, Any]:
    """Generate the site into ``dataset``, or reuse the one there if it has these sizes."""
    meta = dataset / "dataset.json"
    if meta.is_file():
        counts = json.loads(meta.read_text()).get("counts", {})
        if (counts.get("users"), counts.get("items")) != (args.users, args.items):
            raise SystemExit(
                f"{dataset} holds a site of {counts.get('users')} users and "
                f"{counts.get('items')} items, not {args.users} and {args.items}: use another "
                "--work, or remove it"
            )
        return {"reused": str(dataset), "counts": counts}
    cmd = [str(BIN / "tailored"), "data", "synth", "--users", str(args.users)]
    cmd += ["--items", str(args.items), "--events-per-user", str(args.events_per_user)]
    stage = run_stage("generate", [*cmd, "--out", str(dataset)], log)
    if stage["exit"] != 0:
        raise SystemExit(f"generating the site failed: see {log}")
    stage["counts"] = json.loads(meta.read_text()).get("counts", {})
    return stage


def _copy(dataset: Path, copy: Path) -> dict[str, Any]:
    """The row-encoded copy of ``dataset``, made or reused (same dataset.json)."""
    meta = "dataset.json"
    if (copy / meta).is_file() and (copy / meta).read_bytes() == (dataset / meta).read_bytes():
        return {"reused": str(copy)}
    start = time.perf_counter()
    row_encoded_copy(dataset, copy)
    return {"path": str(copy), "seconds": round(time.perf_counter() - start, 1)}


def _run(
    args: argparse.Namespace, kind: str, buckets: int, seed: int, dataset: Path, work: Path
) -> dict[str, Any]:
    """Train one run in a child process and read its figures."""
    name = f"{kind}-{buckets}-seed{seed}"
    out = work / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    cfg = _config(dataset, buckets, seed, args.eval_users, work / "configs" / f"{name}.toml")
    cmd = [str(BIN / "tailored"), "train", "--config", str(cfg), "--out", str(out)]
    stage = run_stage(name, [*cmd, "--max-epochs", str(args.epochs)], work / "logs" / f"{name}.log")
    result: dict[str, Any] = {"kind": kind, "buckets": buckets, "seed": seed, "train": stage}
    if stage["exit"] != 0:
        return result
    m = json.loads((out / "metrics.json").read_text())
    test = m["test"]
    result["test_users"] = test.get("users")
    result["metrics"] = {k: test["metrics"][k] for k in _FIGURES}
    result["popularity"] = {k: test["popularity"][k] for k in _FIGURES}
    for key in ("samples_per_second", "train_seconds", "epochs"):
        result[key] = m.get(key)
    start = time.perf_counter()
    truth = _truth_recall(out, dataset, args.eval_users)
    result["truth_recall@10"] = truth["model"]
    result["popularity"]["truth_recall@10"] = truth["popularity"]
    result["truth_users"] = int(truth["users"])
    result["truth_seconds"] = round(time.perf_counter() - start, 1)
    print(f"   {json.dumps({k: result[k] for k in ('metrics', 'truth_recall@10')})}", flush=True)
    return result


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def _summary(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per run kind and B: the table's collision figures and the mean, min and max over the
    seeds of every figure (runs that failed left out, and counted)."""
    out: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(f"{r['kind']}:{r['buckets']}" for r in runs):
        mine = [r for r in runs if f"{r['kind']}:{r['buckets']}" == key]
        done = [r for r in mine if "metrics" in r]
        entry: dict[str, Any] = {
            "kind": mine[0]["kind"],
            "buckets": mine[0]["buckets"],
            "table": mine[0]["table"],
            "seeds": [r["seed"] for r in done],
            "failed": len(mine) - len(done),
        }
        if done:
            figures = {
                **{k: [r["metrics"][k] for r in done] for k in _FIGURES},
                "truth_recall@10": [r["truth_recall@10"] for r in done],
                **{f"popularity_{k}": [r["popularity"][k] for r in done] for k in _FIGURES},
                "samples_per_second": [r["samples_per_second"] for r in done],
                "train_seconds": [r["train_seconds"] for r in done],
                "wall_seconds": [r["train"]["seconds"] for r in done],
                "peak_rss_gib": [r["train"]["peak_rss_gib"] for r in done],
            }
            entry.update({k: _spread(v) for k, v in figures.items()})
        out[key] = entry
    return out


def _table(summary: dict[str, dict[str, Any]]) -> str:
    head = ["run", "B", "collision share", "displaced", "NDCG@10", "Recall@10", "coverage@10"]
    head += ["truth R@10", "samples/s", "train s", "wall s", "peak GiB", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary.values():
        t = s["table"]
        shares = [
            "-" if t is None else f"{t[k]:.4f}" for k in ("collision_share", "displaced_share")
        ]
        cells = [s["kind"], str(s["buckets"]), *shares]
        if "ndcg@10" not in s:
            cells += ["failed", *[""] * (len(head) - 6), "0"]
        else:
            keys = (*_FIGURES, "truth_recall@10")
            cells += [f"{s[k]['mean']:.4f}" for k in keys]
            cells += [f"{s['samples_per_second']['mean']:.0f}"]
            cells += [f"{s[k]['mean']:.1f}" for k in ("train_seconds", "wall_seconds")]
            cells += [f"{s['peak_rss_gib']['mean']:.2f}", str(len(s["seeds"]))]
        lines.append("| " + " | ".join(cells) + " |")
    pop = next((s for s in summary.values() if "ndcg@10" in s), None)
    if pop is not None:
        figures = ", ".join(
            f"{k} {pop[f'popularity_{k}']['mean']:.4f}" for k in ("ndcg@10", "recall@10")
        )
        lines.append(f"\n(means over the seeds; popularity on the same test users: {figures})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--buckets",
        nargs="+",
        type=_run_spec,
        default=[_run_spec(s) for s in ("0", "2^17", "2^20", "unhashed:2^20")],
        metavar="B",
        help="runs: B (hashed, 0 no table), 2^k, unhashed:B (the row-encoded copy, B >= users)",
    )
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--events-per-user", type=float, default=10.0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--eval-users", type=int, default=20_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--work", type=Path, default=None, help="default runs/user-id-table-<users>")
    p.add_argument("--out-json", type=Path, default=None)
    args = p.parse_args(argv)
    args.buckets = list(dict.fromkeys(args.buckets))  # a run once, whatever the spelling
    began = time.perf_counter()
    work = (args.work or ROOT / "runs" / f"user-id-table-{args.users}").resolve()
    for sub in ("configs", "logs", "runs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    dataset, copy = work / "dataset", work / "dataset-rows"
    command = sys.argv[1:] if argv is None else argv
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    config["buckets"] = [f"{k}:{b}" for k, b in args.buckets]
    report: dict[str, Any] = {
        "benchmark": "user_id_table",
        "machine": machine(),
        "command": shlex.join(["python", "-m", "benchmarks.quality.user_id_table", *command]),
        "config": config,
        "site": _site(args, dataset, work / "logs" / "generate.log"),
    }
    sets = {HASHED: dataset}
    if any(kind == UNHASHED for kind, _ in args.buckets):
        report["copy"] = _copy(dataset, copy)
        sets[UNHASHED] = copy
    ids = {kind: _user_ids(path) for kind, path in sets.items()}
    tables: dict[tuple[str, int], dict[str, Any] | None] = {}
    for kind, buckets in args.buckets:
        tables[kind, buckets] = collision(ids[kind], buckets) if buckets else None
        t = tables[kind, buckets]
        if kind == UNHASHED and t is not None and t["rows_used"] != len(ids[kind]):
            raise SystemExit(
                f"unhashed:{buckets}: {len(ids[kind])} users in {t['rows_used']} rows; "
                "B must be at least the number of users"
            )
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for kind, buckets in args.buckets:
            run = _run(args, kind, buckets, seed, sets[kind], work)
            runs.append({**run, "table": tables[kind, buckets]})
    report["runs"] = runs
    report["summary"] = _summary(runs)
    report["seconds"] = round(time.perf_counter() - began, 1)
    out = args.out_json or RESULTS / f"user_id_table_{args.users}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(_table(report["summary"]))
    return report


if __name__ == "__main__":
    main()
