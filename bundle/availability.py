"""When each item may be served: its window, from the catalog or from its first sight.

An item is served at time ``t`` (unix seconds) when ``start <= t < end``. Where the catalog
has windows (``available_from`` / ``available_until``), they are the window, a blank bound
being none. Else ``start`` is the time the item was first seen in any event (an impression
included) up to the bundle's cut, or, for an item in the catalog that no event names yet, the
cut itself (a new item), and ``end`` never comes. Serving reads :class:`ItemWindows`: the
items closed at a request's time are two binary searches away, and the items launched in the
last days are the new items exploration shows (``[serve] new_item_slots``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tailored.bundle.format import BUNDLE_FILES, BundleError, load_npy
from tailored.data.schema import AVAILABILITY, read_dataset_meta

__all__ = ["NEVER", "ItemWindows", "item_windows"]

NEVER = np.iinfo(np.int64).max  # an end that never comes


@dataclass(frozen=True)
class ItemWindows:
    """``start``, ``end``: int64 [N + 1] unix seconds per bundle row (row 0, padding, never
    opens). Sorted views are built once, so a request costs two binary searches plus the
    items it returns."""

    start: np.ndarray
    end: np.ndarray
    _by_start: np.ndarray = field(init=False, repr=False)
    _by_end: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_start", np.argsort(self.start[1:], kind="stable") + 1)
        object.__setattr__(self, "_by_end", np.argsort(self.end[1:], kind="stable") + 1)

    def closed(self, t: float) -> np.ndarray:
        """Rows (int64) not served at ``t``: not launched yet, or ended."""
        at = int(np.floor(t))
        later = self._by_start[np.searchsorted(self.start[self._by_start], at, "right") :]
        ended = self._by_end[: np.searchsorted(self.end[self._by_end], at, "right")]
        return np.union1d(later, ended)

    def launched(self, since: float, t: float) -> np.ndarray:
        """Rows (int64) launched in ``(since, t]`` and not ended at ``t``: the new items."""
        starts = self.start[self._by_start]
        lo = np.searchsorted(starts, int(np.floor(since)), "right")
        hi = np.searchsorted(starts, int(np.floor(t)), "right")
        rows = self._by_start[lo:hi]
        return rows[self.end[rows] > t]

    @classmethod
    def load(cls, root: Path, rows: int) -> ItemWindows | None:
        """The bundle's windows for its ``rows`` item rows (padding included), or None for a
        bundle written before they were kept. Raises BundleError naming the file when they are
        not one int64 time per row each, or an item's window ends before it starts."""
        paths = [root / BUNDLE_FILES[k] for k in ("item_available_from", "item_available_until")]
        if not paths[0].exists():
            return None
        start, end = (load_npy(p) for p in paths)
        for path, a in zip(paths, (start, end), strict=True):
            if a.ndim != 1 or a.dtype != np.int64 or len(a) != rows:
                raise BundleError(
                    f"{path}: {a.dtype} {a.shape}, expected int64 unix seconds, one per item row "
                    f"({rows})"
                )
        bad = np.flatnonzero(end[1:] <= start[1:])
        if len(bad):
            raise BundleError(
                f"{paths[1]}: item row {bad[0] + 1} ends ({end[bad[0] + 1]}) before it starts "
                f"({start[bad[0] + 1]})"
            )
        return cls(start, end)


def item_windows(
    dataset: Path, cut_time: int, batch_rows: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray]:
    """Each item of the dataset's catalog's window in bundle rows (row r + 1 is the catalog's
    row r; see the module doc): ``start``, ``end`` int64 [N + 1]. A catalog with windows is
    taken as it is (a blank bound: none); else an item starts at its first sight among the
    events at or before ``cut_time`` (unix s), streamed ``batch_rows`` at a time."""
    schema = read_dataset_meta(dataset).schema
    if schema.item_availability:
        catalog = pq.read_table(dataset / "items.parquet", columns=list(AVAILABILITY))
        start = np.r_[NEVER, _bound(catalog.column("available_from"), 0)]
        end = np.r_[NEVER, _bound(catalog.column("available_until"), NEVER)]
        return start.astype(np.int64), end.astype(np.int64)
    ids = pq.read_table(dataset / "items.parquet", columns=["item_id"]).column("item_id")
    value_set = ids.combine_chunks()
    first = np.full(len(value_set) + 1, NEVER, np.int64)
    for batch in pq.ParquetFile(dataset / "events.parquet").iter_batches(
        batch_size=batch_rows, columns=["item_id", "timestamp"]
    ):
        t = batch.column("timestamp").to_numpy()
        keep = t <= cut_time
        if not keep.any():
            continue
        rows = pc.index_in(batch.column("item_id"), value_set=value_set).to_numpy(
            zero_copy_only=False
        )
        np.minimum.at(first, rows[keep].astype(np.int64) + 1, t[keep])
    start = np.where(first == NEVER, cut_time, first)
    start[0] = NEVER  # padding: never served
    return start, np.full(len(first), NEVER, np.int64)


def _bound(col: pa.ChunkedArray, blank: int) -> np.ndarray:
    """An int64 column of unix seconds, ``blank`` where it is null."""
    return pc.fill_null(col, blank).to_numpy().astype(np.int64)
