"""Sub-commands of ``tailored``. Each parses its arguments and calls one typed function;
heavy modules (torch, Lightning) are imported inside the handler so ``--help`` stays fast."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["register_all"]

Sub = Any  # argparse's _SubParsersAction is private


def register_all(sub: Sub) -> None:
    data = sub.add_parser(
        "data",
        help="fetch, import or generate a dataset",
        description="Datasets: fetch a public one, import your own, "
        "or generate a synthetic website.",
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    _add_data_fetch(data_sub)
    _add_data_import(data_sub)
    _add_data_synth(data_sub)
    _add_train(sub)
    _add_evaluate(sub)
    bundle = sub.add_parser(
        "bundle",
        help="build or check the versioned bundles that serving loads",
        description="Bundles: versioned directories with the models, item data, "
        "embeddings, index and a manifest of sha256 sums.",
    )
    bundle_sub = bundle.add_subparsers(dest="bundle_command", metavar="SUBCOMMAND", required=True)
    _add_bundle_build(bundle_sub)
    _add_bundle_verify(bundle_sub)
    _add_refresh(sub)
    from tailored.serve_commands import register_serve

    register_serve(sub)


# --- data fetch -------------------------------------------------------------------------------


def _add_data_fetch(sub: Sub) -> None:
    p = sub.add_parser(
        "fetch",
        help="download a public dataset and convert it",
        description="Fetch a public dataset, convert it to tailored's Parquet "
        "schema (user ids pseudonymized) and cache it under $TAILORED_HOME.",
    )
    p.add_argument("name", choices=["movielens-100k"], help="which dataset")
    p.add_argument(
        "--source",
        type=Path,
        default=None,
        help="a local copy: the ml-100k folder or zip from GroupLens, or a folder "
        "with RecBole's ml-100k.{inter,user,item}",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="dataset directory (default $TAILORED_HOME/datasets/NAME)",
    )
    p.add_argument("--force", action="store_true", help="fetch again even if cached")
    p.set_defaults(handler=_data_fetch)


def _data_fetch(args: argparse.Namespace) -> int:
    from tailored.data.movielens import fetch_movielens_100k

    out = fetch_movielens_100k(out=args.out, source=args.source, force=args.force)
    print(f"movielens-100k ready in {out}")
    return 0


# --- data import ------------------------------------------------------------------------------


def _add_data_import(sub: Sub) -> None:
    p = sub.add_parser(
        "import",
        help="import your own Parquet or CSV files",
        description="Import users, items and events from Parquet or CSV "
        "with a column mapping (TOML; see tailored.data.mapping). User ids are "
        "pseudonymized; events may come pre-split into train/valid/test files.",
    )
    p.add_argument(
        "--mapping",
        type=Path,
        required=True,
        help="mapping file (TOML); relative file names resolve against its folder",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="dataset directory (default $TAILORED_HOME/datasets/NAME); an existing "
        "dataset there is replaced only if the import succeeds",
    )
    p.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="pseudonymization key, hex (default $TAILORED_PSEUDONYM_KEY or "
        "$TAILORED_HOME/pseudonym.key)",
    )
    p.set_defaults(handler=_data_import)


def _data_import(args: argparse.Namespace) -> int:
    from tailored.data.importer import import_dataset
    from tailored.data.pseudonym import load_key
    from tailored.data.schema import read_dataset_meta

    key = load_key(args.key_file) if args.key_file is not None else None  # None: after checks
    out = import_dataset(args.mapping, args.out, key=key)
    meta = read_dataset_meta(out)
    c = meta.counts
    split = " (pre-split)" if meta.presplit else ""
    print(
        f"imported {meta.name}: {c.get('users', 0)} users, {c.get('items', 0)} items, "
        f"{c.get('events', 0)} events{split} into {out}"
    )
    return 0


# --- data synth -------------------------------------------------------------------------------


def _add_data_synth(sub: Sub) -> None:
    p = sub.add_parser(
        "synth",
        help="generate a synthetic website with planted tastes",
        description="Generate users, items and events at scale, seeded, "
        "keeping the ground-truth tastes (DATASET/truth/) to check learning "
        "against. Events stream to Parquet in chunks of users, in bounded memory.",
    )
    p.add_argument("--users", type=int, default=100_000, help="number of users (default 100000)")
    p.add_argument("--items", type=int, default=10_000, help="number of items (default 10000)")
    p.add_argument(
        "--events-per-user",
        type=float,
        default=30.0,
        help="mean events per user, impressions included (default 30)",
    )
    p.add_argument("--categories", type=int, default=50, help="item categories (default 50)")
    p.add_argument("--dim", type=int, default=16, help="dimension of the planted tastes")
    p.add_argument("--days", type=int, default=90, help="time span of the events in days")
    p.add_argument(
        "--drift",
        type=float,
        default=0.6,
        help="how far tastes move over the span, in score units (0: no drift)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed, same files")
    p.add_argument(
        "--chunk-users",
        type=int,
        default=50_000,
        help="users simulated and written per chunk (bounds memory)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="dataset directory (default $TAILORED_HOME/datasets/synthetic); "
        "replaced only if generation succeeds",
    )
    p.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="pseudonymization key, hex (default $TAILORED_PSEUDONYM_KEY or "
        "$TAILORED_HOME/pseudonym.key)",
    )
    p.set_defaults(handler=_data_synth)


def _data_synth(args: argparse.Namespace) -> int:
    from tailored.data.pseudonym import load_key
    from tailored.data.synth import generate_synthetic

    s = generate_synthetic(
        args.out,
        n_users=args.users,
        n_items=args.items,
        events_per_user=args.events_per_user,
        n_categories=args.categories,
        dim=args.dim,
        days=args.days,
        drift=args.drift,
        seed=args.seed,
        chunk_users=args.chunk_users,
        key=load_key(args.key_file),
    )
    kinds = ", ".join(f"{n} {k}s" for k, n in s.events_by_type.items())
    print(
        f"synthetic: {s.n_users} users, {s.n_items} items, {s.n_events} events ({kinds}) "
        f"in {s.seconds:.1f} s into {s.out}"
    )
    return 0


# --- train ------------------------------------------------------------------------------------


def _add_train(sub: Sub) -> None:
    p = sub.add_parser(
        "train",
        help="train the two-tower model",
        description="Train the two-tower retrieval model from a TOML "
        "configuration; writes checkpoints, logs, the model and its metrics.",
    )
    p.add_argument("--config", type=Path, required=True, help="TOML configuration")
    p.add_argument("--out", type=Path, required=True, help="run directory to write")
    p.add_argument("--seed", type=int, default=None, help="override train.seed")
    p.add_argument("--devices", type=int, default=None, help="override train.devices")
    p.add_argument("--max-epochs", type=int, default=None, help="override train.max_epochs")
    p.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from tailored.config import load_config
    from tailored.train.run import train

    cfg = load_config(
        args.config,
        overrides={
            "train.seed": args.seed,
            "train.devices": args.devices,
            "train.max_epochs": args.max_epochs,
        },
    )
    train(cfg, out=args.out)
    return 0


# --- evaluate ---------------------------------------------------------------------------------


def _add_evaluate(sub: Sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="offline evaluation of a run or a bundle (two-stage beside retrieval alone)",
        description="Recall, NDCG, MRR, Hit, ItemCoverage, AveragePopularity at 10 and 20 "
        "against a popularity baseline, with a breakdown by user group. A run is scored by "
        "full ranking over all items (seen items masked); a bundle as it serves: user tower "
        "-> index top-N -> ranker -> top-K (key 'metrics'), beside retrieval alone (key "
        "'retrieval').",
    )
    p.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_OR_BUNDLE",
        help="a run written by `tailored train`, or a bundle (a version or a bundle root)",
    )
    p.add_argument("--split", choices=["valid", "test"], default="test")
    p.add_argument(
        "--history",
        choices=["all", "train"],
        default="all",
        help="history the user tower reads: everything before the evaluated period "
        "(all, as a live system) or the training split only (train)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from tailored.bundle import MANIFEST, latest_bundle
    from tailored.train.evaluate import evaluate_run, format_report

    path: Path = args.run_dir
    bundle = path if (path / MANIFEST).is_file() else (path.is_dir() and latest_bundle(path))
    if bundle:
        from tailored.train.evaluate_bundle import evaluate_bundle

        report = evaluate_bundle(bundle, split=args.split, history=args.history)
    else:
        report = evaluate_run(path, split=args.split, history=args.history)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0


# --- bundle build, refresh --------------------------------------------------------------------


def _add_build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, default=1, help="devices for the predict loop (DDP)")
    p.add_argument("--no-users", action="store_true", help="skip embedding every user")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_bundle_build(sub: Sub) -> None:
    p = sub.add_parser(
        "build",
        help="build a run's first bundle: ranker, ONNX models, embeddings, index",
        description="Train the re-ranker on the run's own retrieval candidates, export the "
        "user tower and the ranker to ONNX (checked against torch), embed every item and "
        "user, build the item index (measuring an approximate one's recall against exact "
        "search) and write a new bundle version under --out.",
    )
    p.add_argument("run_dir", type=Path, help="a run written by `tailored train`")
    p.add_argument("--out", type=Path, required=True, help="bundle root (versions go inside)")
    p.add_argument("--no-ranker", action="store_true", help="retrieval only, no re-ranker")
    _add_build_options(p)
    p.set_defaults(handler=_bundle_build)


def _bundle_build(args: argparse.Namespace) -> int:
    from tailored.retrieval.build import build_bundle

    result = build_bundle(
        args.run_dir,
        args.out,
        ranker=False if args.no_ranker else None,
        devices=args.devices,
        progress_bar=not args.no_progress,
        users=not args.no_users,
    )
    _print_build(result)
    return 0


def _add_refresh(sub: Sub) -> None:
    p = sub.add_parser(
        "refresh",
        help="re-embed every item and user, rebuild the index, write a new bundle version",
        description="Batch embedding refresh with the current model: every item of the "
        "dataset as it is now (items added since training are embedded from their metadata) "
        "and every user, through Lightning's predict loop; then the index is rebuilt and a "
        "new bundle version written. From a run, this builds its first bundle (like `bundle "
        "build`, --out required).",
    )
    p.add_argument("source", type=Path, metavar="RUN_OR_BUNDLE")
    p.add_argument("--out", type=Path, help="bundle root (default: the source bundle's root)")
    _add_build_options(p)
    p.set_defaults(handler=_refresh)


def _refresh(args: argparse.Namespace) -> int:
    from tailored.retrieval.build import refresh

    result = refresh(
        args.source,
        args.out,
        devices=args.devices,
        progress_bar=not args.no_progress,
        users=not args.no_users,
    )
    _print_build(result)
    return 0


def _print_build(result: Any) -> None:
    if (result.path / "manifest.json").is_file():  # DDP ranks other than 0 write nothing
        print(
            f"bundle {result.path}: {result.items} items ({result.new_items} new since "
            f"training), {result.users} users; items embedded at "
            f"{result.items_per_second:,.0f}/s"
        )


# --- bundle verify ----------------------------------------------------------------------------


def _add_bundle_verify(sub: Sub) -> None:
    p = sub.add_parser(
        "verify",
        help="check a bundle against its manifest",
        description="Check every file of a bundle against its manifest (presence, "
        "size, sha256, allowed suffix, no links); exit 2 if it is refused.",
    )
    p.add_argument("path", type=Path, help="a bundle version directory, or a root (its latest)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(handler=_bundle_verify)


def _bundle_verify(args: argparse.Namespace) -> int:
    from tailored.bundle import resolve_bundle, verify_bundle

    m = verify_bundle(resolve_bundle(args.path))
    if args.json:
        print(json.dumps(m.to_json(), indent=2))
        return 0
    print(f"bundle {m.version} ok: {m.path}")
    print(f"created {m.created}, {len(m.files)} files, {_bytes(sum(f.size for f in m.files))}")
    for name, value in _flat(m.metrics):
        print(f"  {name}: {value:.4f}" if isinstance(value, float) else f"  {name}: {value}")
    return 0


def _flat(obj: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested metrics as (dotted name, value) pairs, at most three levels deep."""
    out: list[tuple[str, Any]] = []
    for key, value in obj.items():
        if isinstance(value, dict) and prefix.count(".") < 2:
            out += _flat(value, f"{prefix}{key}.")
        elif not isinstance(value, dict | list):
            out.append((f"{prefix}{key}", value))
    return out


def _bytes(n: int) -> str:
    """``n`` bytes for people: 512 B, 1.5 KiB, 3.2 GiB."""
    size, units = float(n), ["B", "KiB", "MiB", "GiB", "TiB"]
    while size >= 1024 and len(units) > 1:
        size, units = size / 1024, units[1:]
    return f"{n} B" if units[0] == "B" else f"{size:.1f} {units[0]}"
