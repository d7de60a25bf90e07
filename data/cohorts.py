"""Users grouped by their profile ("users like you"), and how often each group engaged with
each item: the ranker's ``cohort_rate`` feature, what a profile tells of a user who has no
history yet.

``[ranker] cohort_fields`` names user profile fields (a numeric one by its quantile range,
``[model] numeric_buckets``); users with the same values of all of them are one cohort. A
cohort of fewer than ``[ranker] cohort_min_users`` users is pooled with the other small ones
into cohort 0, so that no count describes a handful of people (cohort 0 is also where a
profile the bundle never saw, or no profile, lands).

Three pieces, one definition for training, offline evaluation and the server (numpy only):

* :class:`Cohorts`: which cohort each combination of field codes is;
* :class:`CohortActivity`: the known events per (cohort, item), counted "as of" any time
  (offline requests, each at its own time);
* :class:`CohortSnapshot`: the same counts frozen at one time, as a bundle serves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from tailored.data.features import BUCKET_SUFFIX, FeatureEncoder
from tailored.errors import ConfigError

__all__ = ["CohortActivity", "CohortSnapshot", "CohortTable", "Cohorts", "cohort_columns"]

PER_USERS = 1000.0  # the feature counts engagements per this many users of the cohort


def cohort_columns(encoder: FeatureEncoder, fields: tuple[str, ...]) -> tuple[int, ...]:
    """The columns of the users' categorical table (``encoder.columns``) that ``fields``
    name: a categorical field's own, a numeric field's quantile range. ConfigError naming the
    field that is no user field, or a numeric one without ranges."""
    columns = list(encoder.columns)
    out = []
    for name in fields:
        if name in encoder.categorical:
            out.append(columns.index(name))
        elif name in encoder.numeric:
            if name + BUCKET_SUFFIX not in columns:
                raise ConfigError(
                    f"[ranker] cohort_fields: {name!r} is numeric and has no quantile ranges "
                    "([model] numeric_buckets = 0)"
                )
            out.append(columns.index(name + BUCKET_SUFFIX))
        else:
            known = ", ".join([*encoder.categorical, *encoder.numeric]) or "none"
            raise ConfigError(
                f"[ranker] cohort_fields: {name!r} is not a user field (the user fields: {known})"
            )
    return tuple(out)


@dataclass(frozen=True)
class Cohorts:
    """``keys`` int64 [G, F]: the field codes of cohort g (row 0, the pooled small cohorts:
    -1); ``sizes`` int64 [G]: its users (when it was formed)."""

    keys: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, codes: np.ndarray, min_users: int) -> tuple[Cohorts, np.ndarray]:
        """Cohorts of users whose field codes are ``codes`` int [U, F], and each user's cohort
        (int64 [U]): each distinct row of ``min_users`` users or more is one, numbered by its
        codes; the rest is cohort 0."""
        codes = np.asarray(codes, np.int64).reshape(len(codes), -1)
        keys, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
        big = counts >= min_users
        number = np.where(big, np.cumsum(big), 0)  # 1.. for the kept, 0 for the pooled
        pooled = int(counts[~big].sum())
        kept = cls(
            np.concatenate([np.full((1, codes.shape[1]), -1, np.int64), keys[big]]),
            np.r_[pooled, counts[big]].astype(np.int64),
        )
        return kept, number[inverse.reshape(-1)].astype(np.int64)

    def __len__(self) -> int:
        return len(self.sizes)

    @cached_property
    def _lookup(self) -> dict[tuple[int, ...], int]:
        return {tuple(k): g for g, k in enumerate(self.keys.tolist()) if g}

    def of_codes(self, codes: np.ndarray) -> np.ndarray:
        """The cohort of each row of field codes ``codes`` int [R, F] (int64 [R]; 0 where the
        row is no kept cohort's)."""
        codes = np.asarray(codes, np.int64).reshape(len(codes), -1)
        return np.array([self._lookup.get(tuple(c), 0) for c in codes.tolist()], np.int64)

    def rate(self, cohort: int, counts: np.ndarray) -> np.ndarray:
        """``counts`` [C] of one cohort as engagements per :data:`PER_USERS` of its users."""
        return counts * (PER_USERS / max(int(self.sizes[cohort]), 1))


@dataclass(frozen=True)
class CohortActivity:
    """Known events per (cohort, item) for counts as of a time: ``keys`` int64 [E] sorted,
    ``(cohort * (N + 1) + item) << 32 | (time - origin)``."""

    keys: np.ndarray
    n_items: int
    origin: int

    @classmethod
    def of(
        cls, cohorts: np.ndarray, items: np.ndarray, times: np.ndarray, n_items: int, groups: int
    ) -> CohortActivity:
        """From events' cohorts (int [E]), items (1-based, int [E]) and times (s, int [E])."""
        if groups * (n_items + 1) >= 1 << 31:
            raise ConfigError(
                f"[ranker] cohort_fields: {groups} cohorts of {n_items} items are too many to "
                "count (raise cohort_min_users, or name fewer fields)"
            )
        origin = int(times.min()) if len(times) else 0
        rel = np.clip(np.asarray(times, np.int64) - origin, 0, (1 << 32) - 1)
        pair = np.asarray(cohorts, np.int64) * (n_items + 1) + np.asarray(items, np.int64)
        return cls(np.sort((pair << 32) | rel), n_items, origin)

    def counts(self, cohort: int, items: np.ndarray, now: float) -> np.ndarray:
        """Events of ``cohort`` with each of ``items`` (int [C]) strictly before ``now``,
        float64 [C]."""
        pair = (cohort * (self.n_items + 1) + np.asarray(items, np.int64)) << 32
        rel = int(np.clip(now - self.origin, 0, (1 << 32) - 1))
        if now <= self.origin:
            return np.zeros(len(pair))
        return (np.searchsorted(self.keys, pair | rel) - np.searchsorted(self.keys, pair)).astype(
            np.float64
        )

    def snapshot(self, at: float, groups: int) -> CohortSnapshot:
        """The counts of every (cohort, item) before ``at``, as a bundle keeps them."""
        rel = int(np.clip(at - self.origin, 0, (1 << 32) - 1)) if at > self.origin else 0
        keys = self.keys[(self.keys & 0xFFFFFFFF) < rel] if rel else self.keys[:0]
        pairs, counts = np.unique(keys >> 32, return_counts=True)
        cohort, items = np.divmod(pairs, self.n_items + 1)
        offsets = np.searchsorted(cohort, np.arange(groups + 1)).astype(np.int64)
        return CohortSnapshot(offsets, items.astype(np.int64), counts.astype(np.float32))


@dataclass(frozen=True)
class CohortSnapshot:
    """Per cohort g, the items it engaged with, ``items[offsets[g]:offsets[g + 1]]`` (sorted,
    int64), and how often, ``counts`` float32 at the same places. ``now`` is not read: the
    snapshot is the server's "as of"."""

    offsets: np.ndarray
    items: np.ndarray
    values: np.ndarray

    def counts(self, cohort: int, items: np.ndarray, now: float) -> np.ndarray:
        """How often ``cohort`` engaged with each of ``items`` (int [C]), float64 [C]."""
        lo, hi = int(self.offsets[cohort]), int(self.offsets[cohort + 1])
        out = np.zeros(len(items))
        if hi == lo:
            return out
        mine = self.items[lo:hi]
        at = np.clip(np.searchsorted(mine, items), 0, hi - lo - 1)
        found = mine[at] == items
        out[found] = self.values[lo:hi][at[found]]
        return out

    def check(self, groups: int, n_items: int) -> str | None:
        """What is wrong with this snapshot for ``groups`` cohorts of ``n_items`` items
        (None: nothing)."""
        o = self.offsets
        if o.shape != (groups + 1,) or o[0] != 0 or (np.diff(o) < 0).any():
            return f"offsets {o.shape} are not {groups + 1} increasing offsets from 0"
        if o[-1] != len(self.items) or len(self.items) != len(self.values):
            return "items and counts do not match the offsets"
        if len(self.items) and (self.items.min() < 1 or self.items.max() > n_items):
            return f"an item index outside 1..{n_items}"
        if not np.isfinite(self.values).all() or (self.values < 0).any():
            return "a count is negative or not finite"
        return None


# the bundle files of a CohortTable (tailored.bundle.format.BUNDLE_FILES' keys)
TABLE_FILES = (
    "cohort_columns",
    "cohort_keys",
    "cohort_sizes",
    "cohort_offsets",
    "cohort_items",
    "cohort_counts",
)


@dataclass(frozen=True)
class CohortTable:
    """What a bundle keeps of the cohorts for serving: ``columns`` int64 [F], the users'
    categorical columns that make a cohort; the cohorts; their counts at build time."""

    columns: np.ndarray
    cohorts: Cohorts
    snapshot: CohortSnapshot

    @classmethod
    def of(
        cls,
        user_cat: np.ndarray,
        columns: tuple[int, ...],
        min_users: int,
        users: np.ndarray,
        items: np.ndarray,
        n_items: int,
    ) -> CohortTable:
        """From every user's categorical codes ``user_cat`` int [U, C] and the events' users
        (0-based) and items (1-based), all counted."""
        cols = np.asarray(columns, np.int64)
        cohorts, of_user = Cohorts.of(user_cat[:, cols], min_users)
        pairs = of_user[users] * (n_items + 1) + np.asarray(items, np.int64)
        pairs, counts = np.unique(pairs, return_counts=True)
        group, item = np.divmod(pairs, n_items + 1)
        offsets = np.searchsorted(group, np.arange(len(cohorts) + 1)).astype(np.int64)
        snap = CohortSnapshot(offsets, item.astype(np.int64), counts.astype(np.float32))
        return cls(cols, cohorts, snap)

    def rate(self, user_cat: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """The ``cohort_rate`` of ``candidates`` (int [C]) for a user whose categorical codes
        are ``user_cat`` int [C_all]: their cohort's engagements per 1,000 of its users."""
        g = int(self.cohorts.of_codes(np.asarray(user_cat)[self.columns][None])[0])
        return self.cohorts.rate(g, self.snapshot.counts(g, candidates, 0.0))

    def arrays(self) -> dict[str, np.ndarray]:
        """The bundle's files (:data:`TABLE_FILES`' order)."""
        s = self.snapshot
        values = (self.columns, self.cohorts.keys, self.cohorts.sizes, s.offsets, s.items)
        return dict(zip(TABLE_FILES, (*values, s.values), strict=True))

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> CohortTable:
        cohorts = Cohorts(a["cohort_keys"].astype(np.int64), a["cohort_sizes"].astype(np.int64))
        snap = CohortSnapshot(
            a["cohort_offsets"].astype(np.int64),
            a["cohort_items"].astype(np.int64),
            a["cohort_counts"].astype(np.float32),
        )
        return cls(a["cohort_columns"].astype(np.int64), cohorts, snap)

    def check(self, n_items: int, user_columns: int) -> str | None:
        """What is wrong with this table for ``n_items`` items and users of ``user_columns``
        categorical columns (None: nothing)."""
        c, k, g = self.columns, self.cohorts.keys, len(self.cohorts)
        if c.ndim != 1 or (len(c) and (c.min() < 0 or c.max() >= user_columns)):
            return f"columns {c.tolist()} are not columns of {user_columns} user fields"
        if k.shape != (g, len(c)) or self.cohorts.sizes.shape != (g,) or g < 1:
            return f"keys {k.shape} and sizes {self.cohorts.sizes.shape} do not match"
        return self.snapshot.check(g, n_items)
