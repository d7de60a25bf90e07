"""Each user's recent timed events in a bundle (their latest positives, what they were shown),
stored ragged: user u's entries are ``items[offsets[u]:offsets[u + 1]]`` with their
``times``, oldest first.

A dense ``[users, length]`` table, as bundles before this layout held, costs the longest
history for every user: with the ranker's 200 positives and 100 exposures a user, 36 GB at
10M users whatever they did. Ragged, a user costs what they did. A bundle of the dense layout
(left-padded rows, 0 empty, no offsets file) is read into this one (:meth:`PerUser.load`);
an erasure or a retention purge rewrites such a bundle in this layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tailored.bundle.format import BUNDLE_FILES, BundleError, load_npy

__all__ = ["GROUPS", "PerUser", "splits_entries"]

# the bundle's per-user timed groups: name -> the BUNDLE_FILES keys of offsets, items, times
GROUPS = {
    "history": ("user_history_offsets", "user_history", "user_history_times"),
    "exposures": ("user_exposure_offsets", "user_exposures", "user_exposure_times"),
}


def splits_entries(offsets: np.ndarray, entries: np.ndarray) -> bool:
    """Whether ``offsets`` (integer, 1-d, from 0, never decreasing, ending at the number of
    ``entries``, a 1-d array) cut ``entries`` into one group per user."""
    return bool(
        np.issubdtype(offsets.dtype, np.integer)
        and offsets.ndim == 1
        and len(offsets) >= 1
        and entries.ndim == 1
        and offsets[0] == 0
        and offsets[-1] == len(entries)
        and (np.diff(offsets) >= 0).all()
    )


@dataclass(frozen=True)
class PerUser:
    """``offsets`` int64 [U + 1]; ``items`` int32 [E] bundle item rows (1-based) and
    ``times`` int64 [E] seconds, each user's oldest first."""

    offsets: np.ndarray
    items: np.ndarray
    times: np.ndarray

    def __len__(self) -> int:
        """The number of users."""
        return len(self.offsets) - 1

    def of(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The user at ``row``'s items and times, oldest first."""
        s = slice(int(self.offsets[row]), int(self.offsets[row + 1]))
        return self.items[s], self.times[s]

    @classmethod
    def last(
        cls, offsets: np.ndarray, items: np.ndarray, times: np.ndarray, length: int
    ) -> PerUser:
        """The last ``length`` entries of each user of events grouped by user (``offsets``
        int [U + 1], each user's in time order)."""
        offsets = np.asarray(offsets, np.int64)
        end = offsets[1:]
        start = np.maximum(offsets[:-1], end - length)
        counts = end - start
        new = np.r_[0, np.cumsum(counts)].astype(np.int64)
        at = np.repeat(start - new[:-1], counts) + np.arange(int(new[-1]), dtype=np.int64)
        return cls(new, items[at].astype(np.int32), times[at].astype(np.int64))

    @classmethod
    def from_dense(cls, items: np.ndarray, times: np.ndarray) -> PerUser:
        """From the earlier layout: rows [U, L] left-padded with item 0, most recent last."""
        filled = items > 0
        counts = filled.sum(axis=1)
        return cls(
            np.r_[0, np.cumsum(counts)].astype(np.int64),
            items[filled].astype(np.int32),
            times[filled].astype(np.int64),
        )

    def users(self, keep: np.ndarray) -> PerUser:
        """Only the users ``keep`` bool [U] (an erasure)."""
        counts = np.diff(self.offsets)
        entries = np.repeat(keep, counts)
        return PerUser(
            np.r_[0, np.cumsum(counts[keep])].astype(np.int64),
            self.items[entries],
            self.times[entries],
        )

    def entries(self, keep: np.ndarray) -> PerUser:
        """Only the entries ``keep`` bool [E] (a retention purge), every user kept."""
        user = np.repeat(np.arange(len(self)), np.diff(self.offsets))
        counts = np.bincount(user[keep], minlength=len(self))
        return PerUser(
            np.r_[0, np.cumsum(counts)].astype(np.int64), self.items[keep], self.times[keep]
        )

    @classmethod
    def load(cls, root: Path, group: str, *, mmap: bool = False) -> PerUser | None:
        """Group ``group`` (:data:`GROUPS`) of the bundle at ``root``, in either layout; None
        where the bundle has none (exposures of data without them). Its shapes are checked
        here, its values by :func:`tailored.bundle.checks.check_loaded`."""
        keys = GROUPS[group]
        paths = [root / BUNDLE_FILES[k] for k in keys]
        if not paths[1].exists() and not paths[2].exists():
            return None
        names = [BUNDLE_FILES[k] for k in keys]
        for name, p in zip(names[1:], paths[1:], strict=True):
            if not p.exists():
                raise BundleError(f"{root}: no {name} beside its pair")
        items, times = (load_npy(p, mmap_mode="r" if mmap else None) for p in paths[1:])
        if not paths[0].exists():  # the dense layout
            if items.ndim != 2 or items.shape != times.shape:
                raise BundleError(
                    f"{root}: {names[1]} {items.shape} and {names[2]} {times.shape}: rows of "
                    f"equal shape expected without {names[0]}"
                )
            return cls.from_dense(np.asarray(items), np.asarray(times))
        offsets = load_npy(paths[0])
        if not (items.shape == times.shape and splits_entries(offsets, items)):
            raise BundleError(
                f"{root}: {names[0]} ({offsets.dtype} {offsets.shape}), {names[1]} "
                f"({items.shape}) and {names[2]} ({times.shape}) are not one group of entries "
                "per user; rebuild the bundle"
            )
        return cls(offsets.astype(np.int64), items, times)

    def arrays(self, group: str) -> dict[str, np.ndarray]:
        """The bundle files of group ``group`` (``BUNDLE_FILES`` keys) and their arrays."""
        keys = GROUPS[group]
        return dict(zip(keys, (self.offsets, self.items, self.times), strict=True))
