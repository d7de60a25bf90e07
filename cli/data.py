"""``tailored data fetch | import | synth``: datasets in tailored's Parquet schema."""

from __future__ import annotations

import argparse
from pathlib import Path

from tailored.cli._common import Sub

__all__ = ["register"]


def register(sub: Sub) -> None:
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
    p.add_argument(
        "--new-items",
        type=float,
        default=0.2,
        help="share of the items launched during the span (default 0.2)",
    )
    p.add_argument(
        "--ended-items",
        type=float,
        default=0.05,
        help="share of the other items that end during the span (default 0.05)",
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
        new_items=args.new_items,
        ended_items=args.ended_items,
        seed=args.seed,
        chunk_users=args.chunk_users,
        key=load_key(args.key_file),
    )
    kinds = ", ".join(f"{n} {k}" for k, n in s.events_by_type.items())
    print(
        f"synthetic: {s.n_users} users, {s.n_items} items, {s.n_events} events ({kinds}) "
        f"in {s.seconds:.1f} s into {s.out}"
    )
    return 0
