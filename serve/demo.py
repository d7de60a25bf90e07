"""The end of ``make demo``: start ``tailored serve`` on the demo bundle, show one user's
recommendations, send a few clicks on one genre for that user, and show how the next page
changed (no retraining: the clicks reach the user's online state, and the next Recommend
reads them).

``python -m tailored.serve.demo runs/bundles [--user 1]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tailored.bundle.format import resolve_bundle
from tailored.bundle.runtime import LoadedBundle
from tailored.serve.client import Client, Serving
from tailored.serve.v1 import personalization_pb2 as pb

__all__ = ["main"]

# genres distinct enough in MovieLens for a few clicks to show on the next page; Documentary
# (50 titles, many rated) and Sci-Fi (close to Action) did not on the machine of 2026-12-04,
# evening (0 -> 0 and 1 -> 0 of 10 after 5 clicks, where Musical went 1 -> 5 and Horror 2 -> 6)
_PREFERRED = ("Musical", "Horror", "Western", "Film-Noir")


def _genres(bundle: LoadedBundle) -> tuple[str, list[set[str]]]:
    """The bundle's first multi-valued item field (genres) and each item's values."""
    enc = bundle.info["item_encoder"]
    multi = [f["name"] for f in enc["fields"] if f["kind"] == "multi_categorical"]
    if not multi:
        raise SystemExit("the demo needs an item field with several values (genres)")
    vocab = enc["vocabs"][multi[0]]
    codes = bundle.items.multi[1:, 0, :]
    return multi[0], [{vocab[c - 1] for c in row if c > 0} for row in codes]


def _show(title: str, resp: pb.RecommendResponse, genre: str, tags: dict[str, set[str]]) -> None:
    print(f"\n{title} (bundle {resp.bundle_version}, {resp.strategy})")
    for rank, item in enumerate(resp.items, 1):
        mark = "*" if genre in tags[item.item_id] else " "
        print(f" {rank:2d}. {mark} {item.title or item.item_id:<42.42}  {item.reason}")
    n = sum(genre in tags[i.item_id] for i in resp.items)
    print(f"     {n} of {len(resp.items)} are {genre} (*)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--user", default="1", help="the site's user id to show")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument(
        "--genre", help="the genre to click (default: a large one little on the first page)"
    )
    args = parser.parse_args(argv)

    bundle = LoadedBundle.load(resolve_bundle(args.bundle))
    field, item_genres = _genres(bundle)
    tags = {str(i): g for i, g in zip(bundle.item_ids, item_genres, strict=True)}
    popular = np.argsort(-bundle.activity.table[1:, 0], kind="stable")
    with tempfile.TemporaryDirectory(prefix="tailored-demo-") as tmp:
        cmd = [sys.executable, "-m", "tailored.cli", "serve", str(args.bundle), "--port", "0"]
        cmd += ["--state", f"sqlite:///{tmp}/state.db", "--clock", "bundle", "--no-watch"]
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            serving = Serving.parse(line)
            if serving is None:
                raise SystemExit(f"the server did not start: {line!r}")
            print(line.strip())
            with Client(serving.target) as client:
                before = client.recommend(args.user, 10)
                shown = {i.item_id for i in before.items}
                counts = {g: sum(g in tags[i] for i in shown) for g in _PREFERRED}
                # a genre at most once on the page, and of those the one with the most titles:
                # a small genre (Documentary: 50 titles) can have too few unseen ones left to
                # reach a page after a few clicks
                size = {g: sum(g in t for t in item_genres) for g in _PREFERRED}
                genre = args.genre or min(_PREFERRED, key=lambda g: (counts[g] > 1, -size[g]))
                if genre not in size and not any(genre in t for t in item_genres):
                    raise SystemExit(f"--genre: no item has the genre {genre!r}")
                _show(f"user {args.user}: recommendations now", before, genre, tags)
                rows = [
                    r
                    for r in popular
                    if genre in item_genres[r] and str(bundle.item_ids[r]) not in shown
                ][: args.clicks]
                clicked = [str(bundle.item_ids[r]) for r in rows]
                titles = bundle.item_titles if bundle.item_titles is not None else bundle.item_ids
                print(f"\nuser {args.user} clicks {len(clicked)} {genre} titles ({field}):")
                for r in rows:
                    print(f"   - {titles[r]}")
                ack = client.track(
                    [pb.Event(user_id=args.user, item_id=i, type=pb.CLICK) for i in clicked]
                )
                print(f"   Track: {ack.accepted} accepted (durable), {ack.dropped} dropped")
                after = client.recommend(args.user, 10)
                _show(f"user {args.user}: recommendations after the clicks", after, genre, tags)
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
