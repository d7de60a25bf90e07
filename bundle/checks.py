"""What a loaded bundle's arrays must agree on, beyond their hashes.

A manifest proves that the files are the ones written, not that the writer was right: a
bundle copied together from two builds, or written by a buggy tool, can hash correctly and
still hold item embeddings for fewer items than its item table, or NaN vectors. Serving
indexes these arrays by item row on every request, so a mismatch would fail there (or, for
NaN, answer ``score=nan``). :func:`check_loaded` refuses such a bundle at load with a
:class:`~tailored.bundle.format.BundleError` that names the file and what is wrong.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from tailored.bundle.format import BUNDLE_FILES, BundleError
from tailored.bundle.per_user import GROUPS

if TYPE_CHECKING:
    from tailored.bundle.runtime import LoadedBundle

__all__ = ["ACTIVITY_COLUMNS", "check_loaded"]

ACTIVITY_COLUMNS = 3  # an item's positive events: all, the last 7 days, the last 30 days


def check_loaded(bundle: LoadedBundle) -> None:
    """Refuse ``bundle`` unless every array has the shape, dtype and values its users expect:
    item tables of N+1 rows, finite float tables, item references within 0..N, an index of N
    vectors of the embeddings' width, user tables of one row per user."""
    c = _Checker(bundle)
    emb = bundle.item_embeddings
    c.rows("item_embeddings", emb, "float", 2)
    c.rows("item_history", bundle.item_history, "float", 2)
    c.rows("item_categorical", bundle.items.categorical, "int", 2)
    c.rows("item_multi", bundle.items.multi, "int", 3)
    c.rows("item_numeric", bundle.items.numeric, "float", 2)
    c.rows("item_activity", bundle.activity.table, "float", 2)
    c.rows("item_first_seen", bundle.activity.first_seen, "int", 1)
    if bundle.windows is not None:
        c.rows("item_available_from", bundle.windows.start, "int", 1)
        c.rows("item_available_until", bundle.windows.end, "int", 1)
    neighbors = bundle.item_neighbors
    c.rows("item_neighbors", neighbors.ids, "int", 2)
    c.refs("item_neighbors", neighbors.ids)
    c.same_shape("item_neighbor_weights", neighbors.weights, "item_neighbors", neighbors.ids)
    c.rows("item_neighbor_weights", neighbors.weights, "float", 2)
    if bundle.activity.table.shape[1:] != (ACTIVITY_COLUMNS,):
        raise c.fail(
            "item_activity",
            f"{bundle.activity.table.shape}, expected {ACTIVITY_COLUMNS} columns (all, 7 days, "
            "30 days)",
        )
    _widths(c, bundle)
    if len(bundle.index) != c.n - 1 or bundle.index.dim != emb.shape[1]:
        raise c.fail(
            "index",
            f"{len(bundle.index)} vectors of dimension {bundle.index.dim}, but the bundle has "
            f"{c.n - 1} items embedded in {emb.shape[1]} dimensions",
        )
    ids = np.sort(bundle.index.ids)
    if not np.array_equal(ids, np.arange(1, c.n, dtype=np.int64)):
        raise BundleError(
            f"{c.root / BUNDLE_FILES['index'] / 'ids.npy'}: the index's ids must be the item "
            f"rows 1..{c.n - 1}, each once; rebuild the bundle"
        )
    if bundle.context_popular is not None:
        c.refs("context_popular", bundle.context_popular.rows)
    users = bundle.users
    if users is None:
        return
    u = len(users)
    c.rows("user_categorical", users.categorical, "int", 2, u)
    c.rows("user_numeric", users.numeric, "float", 2, u)
    for group in (users.history, users.exposures):
        if group is None:
            continue
        offsets, items, times = GROUPS["history" if group is users.history else "exposures"]
        c.rows(offsets, group.offsets, "int", 1, u + 1)
        c.rows(items, group.items, "int", 1, len(group.times))
        c.refs(items, group.items)
        c.rows(times, group.times, "int", 1, len(group.items))
    if users.seen_items is not None:
        c.refs("user_seen_items", users.seen_items)
    seg = bundle.segments
    if seg is not None:
        c.rows("user_segments", seg.of_user, "int", 1, u)
        k = len(seg.labels)
        c.rows("segment_centroids", seg.centroids, "float", 2, k)  # finite; one per segment
        if seg.centroids.shape[1:] != bundle.item_embeddings.shape[1:]:
            raise c.fail(
                "segment_centroids",
                f"{seg.centroids.shape}: centroids of the embeddings' width "
                f"({bundle.item_embeddings.shape[1]}) expected",
            )
        if len(seg.of_user) and not ((seg.of_user >= 0) & (seg.of_user < k)).all():
            raise c.fail("user_segments", f"a user's segment outside 0..{k - 1} (the described)")


def _widths(c: _Checker, bundle: LoadedBundle) -> None:
    """Each array's width is what the ONNX graphs that read it declare: the user tower's
    profile, history and output widths, the ranker's item and user feature widths."""
    tower = {i.name: i.shape[1:] for i in bundle.user_tower.get_inputs()}
    out = bundle.user_tower.get_outputs()[0].shape[1:]
    c.width("item_embeddings", bundle.item_embeddings, out, "the user tower's output")
    c.width("item_history", bundle.item_history, tower.get("history", [None, None])[1:])
    users = bundle.users
    if users is not None:
        c.width("user_categorical", users.categorical, tower.get("user_cat"))
        c.width("user_numeric", users.numeric, tower.get("user_num"))
    if bundle.ranker is None:
        return
    ranker = {i.name: i.shape[1:] for i in bundle.ranker.get_inputs()}
    c.width("item_categorical", bundle.items.categorical, ranker.get("item_cat"))
    c.width("item_multi", bundle.items.multi, ranker.get("item_multi"))
    c.width("item_numeric", bundle.items.numeric, ranker.get("item_num"))
    c.width("item_embeddings", bundle.item_embeddings, ranker.get("item_emb"))


class _Checker:
    def __init__(self, bundle: LoadedBundle) -> None:
        self.root = bundle.manifest.path
        self.n = len(bundle.item_ids) + 1  # item rows: the items and the padding row 0

    def fail(self, key: str, what: str) -> BundleError:
        return BundleError(f"{self.root / BUNDLE_FILES[key]}: {what}; rebuild the bundle")

    def rows(
        self, key: str, arr: np.ndarray, kind: str, ndim: int, users: int | None = None
    ) -> None:
        """``arr`` is ``ndim``-d, of ``kind`` ("int" or "float", finite), with one row per
        item row, or per user where ``users`` is given."""
        count = self.n if users is None else users
        ok = np.issubdtype(arr.dtype, np.floating if kind == "float" else np.integer)
        if not ok or arr.ndim != ndim or arr.shape[0] != count:
            whose = "items.parquet's items and the padding row" if users is None else "users"
            whose = "segments" if key == "segment_centroids" else whose
            raise self.fail(
                key,
                f"{arr.dtype} {arr.shape}, expected {ndim}-d {kind} with {count} rows ({whose})",
            )
        if kind == "float" and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise self.fail(key, f"{bad} values are NaN or infinite")

    def width(
        self, key: str, arr: np.ndarray, declared: list[Any] | None, reader: str = ""
    ) -> None:
        """``arr``'s shape past its rows is ``declared`` (an ONNX input's shape past the
        batch; a symbolic dimension matches anything; ``None``: nothing reads it)."""
        if declared is None:
            return
        got = arr.shape[1:]
        if len(got) != len(declared) or any(
            isinstance(d, int) and d != g for d, g in zip(declared, got, strict=False)
        ):
            raise self.fail(
                key,
                f"rows of shape {tuple(got)}, but {reader or 'the model that reads it'} "
                f"expects {tuple(declared)}",
            )

    def refs(self, key: str, arr: np.ndarray) -> None:
        """``arr`` holds item rows: each within 0..N."""
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self.n):
            raise self.fail(key, f"refers to item rows outside 0..{self.n - 1}")

    def same_shape(self, key: str, arr: np.ndarray, other_key: str, other: np.ndarray) -> None:
        if arr.shape != other.shape:
            raise self.fail(
                key, f"shape {arr.shape}, not {BUNDLE_FILES[other_key]}'s {other.shape}"
            )
