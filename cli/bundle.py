"""``tailored bundle build | verify``, ``tailored refresh`` and ``tailored segments``: the
versioned bundles that serving loads, and the user segments they hold."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tailored.cli._common import Sub

__all__ = ["register"]

# the splits a bundle may be built through, in time order (tailored.bundle.snapshot.SPLITS;
# not imported here, so that --help stays fast)
_SPLITS = ("train", "valid", "test")


def register(sub: Sub) -> None:
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
    _add_segments(sub)


# --- segments ---------------------------------------------------------------------------------


def _add_segments(sub: Sub) -> None:
    p = sub.add_parser(
        "segments",
        help="describe a bundle's user segments",
        description="The user segments a bundle was built with (k-means over the user "
        "embeddings, [segments] k), each described by what sets its members apart; with "
        "--quality, the silhouette and k-means objective over a range of k, to choose k.",
    )
    p.add_argument("path", type=Path, help="a bundle version directory, or a root (its latest)")
    p.add_argument("--json", action="store_true", help="print the descriptions as JSON")
    p.add_argument(
        "--quality",
        metavar="K,K,...",
        help="also cluster the bundle's user embeddings at each k (like 2,4,8,16) and report "
        "the silhouette (higher: better separated) and the objective per user",
    )
    p.set_defaults(handler=_segments)


def _segments(args: argparse.Namespace) -> int:
    from tailored.bundle.format import BUNDLE_FILES, load_npy, resolve_bundle, verify_bundle
    from tailored.errors import TailoredError

    m = verify_bundle(resolve_bundle(args.path))
    path = m.path / BUNDLE_FILES["segments"]
    if not path.is_file():
        raise TailoredError(
            f"{m.path}: no segments (built with [segments] k = 0, without users, or by an "
            "older version); set [segments] k and run tailored refresh"
        )
    doc = json.loads(path.read_text())
    quality = None
    if args.quality:
        from tailored.retrieval.segments import k_quality

        try:
            ks = [int(k) for k in args.quality.split(",")]
        except ValueError:
            raise TailoredError(
                f"--quality: expected k values like 2,4,8, got {args.quality!r}"
            ) from None
        emb = load_npy(m.path / BUNDLE_FILES["user_embeddings"])
        if any(not 2 <= k <= len(emb) for k in ks):
            raise TailoredError(f"--quality: each k must be in [2, {len(emb)}] (the users)")
        quality = k_quality(emb, ks)
    if args.json:
        print(json.dumps({**doc, **({"quality": quality} if quality else {})}, indent=2))
        return 0
    users = sum(s["users"] for s in doc["segments"])
    print(f"bundle {m.version}: {doc['k']} segments of {users:,} users")
    for s in doc["segments"]:
        print(f"  {s['summary']}")
        items = ", ".join(f"{i['item']} ({i['lift']:.1f}x)" for i in s["items"])
        if items:
            print(f"    items: {items}")
    for q in quality or []:
        print(
            f"  k = {q['k']}: silhouette {q['silhouette']:.3f}, "
            f"objective {q['objective_per_user']:.4f} per user"
        )
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
    p.add_argument(
        "--through",
        choices=_SPLITS,
        default="test",
        help="the last split whose events the bundle knows (histories, items seen, item "
        "statistics; recorded in the manifest): test, every event, for a live site (the "
        "default); valid for a bundle to evaluate on test (`tailored evaluate` refuses a "
        "bundle on a split it has seen)",
    )
    _add_build_options(p)
    p.set_defaults(handler=_bundle_build)


def _bundle_build(args: argparse.Namespace) -> int:
    from tailored.bundle.build import build_bundle

    result = build_bundle(
        args.run_dir,
        args.out,
        ranker=False if args.no_ranker else None,
        devices=args.devices,
        progress_bar=not args.no_progress,
        users=not args.no_users,
        through=args.through,
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
        "build`, --out required). The dataset must be the bundle's own (same dataset name, "
        "same pseudonymization key; more events and items are what a refresh is for).",
    )
    p.add_argument("source", type=Path, metavar="RUN_OR_BUNDLE")
    p.add_argument("--out", type=Path, help="bundle root (default: the source bundle's root)")
    p.add_argument(
        "--through",
        choices=_SPLITS,
        help="the last split whose events the new version knows (default: the source "
        "bundle's, as its manifest records; test, every event, from a run)",
    )
    p.add_argument(
        "--data-changed",
        action="store_true",
        help="refresh even though the dataset is not the one the bundle was built from "
        "(another dataset name or pseudonymization key): the data changed on purpose",
    )
    _add_build_options(p)
    p.set_defaults(handler=_refresh)


def _refresh(args: argparse.Namespace) -> int:
    from tailored.bundle.build import refresh

    result = refresh(
        args.source,
        args.out,
        devices=args.devices,
        progress_bar=not args.no_progress,
        users=not args.no_users,
        through=args.through,
        data_changed=args.data_changed,
    )
    _print_build(result)
    return 0


def _print_build(result: Any) -> None:
    manifest = result.path / "manifest.json"
    if manifest.is_file():  # DDP ranks other than 0 write nothing
        through = json.loads(manifest.read_text()).get("data", {}).get("through", "test")
        print(
            f"bundle {result.path}: {result.items} items ({result.new_items} new since "
            f"training), {result.users} users, events through {through}; items embedded at "
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
    from tailored.bundle.format import resolve_bundle, verify_bundle

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
