"""What each user was shown: a dataset's exposure events (impressions, the types whose role
is ``exposure``), grouped by user, and how likely each page slot is to be looked at.

Exposures are read in the same pass as the positives (:func:`tailored.data.interactions.
load_interactions`) and split by each user's positives: an exposure belongs to the period
whose visit it opened. One shown less than :data:`EXPOSURE_GAP` seconds before a user's
first validation (or test) positive belongs to that period, so the impression that led to
a held-out click is never part of what is known before it.

Two uses:

* the ranker's ``shown_before`` feature, how many times an item was shown to the user at
  least :data:`EXPOSURE_GAP` before the request (the pages of the current visit do not
  count, offline or when serving: a request is made before its own page is shown);
* the ranker's impression negatives, the items shown in the labelled period and not engaged
  with, each as likely looked at as its slot is (:class:`SlotPropensity`).

:class:`SlotPropensity` estimates the examination of slot ``k`` relative to slot 0 as the
ratio of their click-through rates, ``CTR(k) / CTR(0)``, over the training period's
exposures and positives that record a slot. This is unbiased when a site fills its slots
independently of the user (randomised or shuffled slates, as the synthetic site does);
where the logging policy puts its best guesses first, the ratio also holds relevance and
overstates the bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tailored.data.splits import TEST, TRAIN, VALID

__all__ = [
    "EXPOSURE_EVENTS",
    "EXPOSURE_GAP",
    "Exposures",
    "SlotPropensity",
    "exposure_offset",
    "per_item_sum",
    "shown_counts",
]

# an exposure counts as "known before" a request from this long before it (seconds): the
# current visit's pages do not count
EXPOSURE_GAP = 1800
# the most recent exposures a bundle keeps of each user for serving, and so the most that
# ``shown_before`` reads, offline too
EXPOSURE_EVENTS = 100
_MIN_SLOT_EXPOSURES = 200  # a slot with fewer is estimated as the slot before it


@dataclass(frozen=True)
class Exposures:
    """Exposure events sorted by (user, time): user u's are ``offsets[u]:offsets[u+1]``.

    ``item`` int32 [X] (1-based), ``timestamp`` int64 [X] seconds, ``position`` int32 [X]
    (the 0-based slot; -1 unknown), ``split`` int8 [X] (the period each belongs to).
    """

    item: np.ndarray
    timestamp: np.ndarray
    position: np.ndarray
    split: np.ndarray
    offsets: np.ndarray

    @classmethod
    def empty(cls, n_users: int) -> Exposures:
        z = np.zeros(0, np.int64)
        i32 = z.astype(np.int32)
        return cls(i32, z, i32, z.astype(np.int8), np.zeros(n_users + 1, np.int64))

    @classmethod
    def of(
        cls,
        user: np.ndarray,
        item: np.ndarray,
        timestamp: np.ndarray,
        position: np.ndarray,
        n_users: int,
    ) -> Exposures:
        """From events in any order; every one labelled TRAIN until :meth:`split_by`."""
        return cls.from_parts(
            {"user": [user], "item": [item], "timestamp": [timestamp], "position": [position]},
            n_users,
        )

    @classmethod
    def from_parts(cls, parts: dict[str, list[np.ndarray]], n_users: int) -> Exposures:
        """As :meth:`of`, from each column in parts (``user``, ``item``, ``timestamp``,
        ``position``: lists of arrays, as a reader collects them batch by batch). The lists are
        emptied one column at a time as each is put in order, so that the parts, the whole
        column and its ordered copy are not all held at once (at 10M users a column is 87M
        exposures)."""

        def column(name: str, dtype: type[np.generic]) -> np.ndarray:
            got = parts[name]
            out = np.concatenate(got).astype(dtype, copy=False) if got else np.zeros(0, dtype)
            got.clear()
            return out

        user, timestamp = column("user", np.int32), column("timestamp", np.int64)
        order = np.lexsort((timestamp, user))  # stable: ties keep the given order
        counts = np.bincount(user, minlength=n_users)
        del user
        timestamp = timestamp[order]
        return cls(
            item=column("item", np.int32)[order],
            timestamp=timestamp,
            position=column("position", np.int32)[order],
            split=np.full(len(order), TRAIN, np.int8),
            offsets=np.r_[0, np.cumsum(counts)].astype(np.int64),
        )

    def __len__(self) -> int:
        return len(self.item)

    @property
    def user(self) -> np.ndarray:
        """int32 [X]: each exposure's user."""
        return np.repeat(np.arange(len(self.offsets) - 1, dtype=np.int32), np.diff(self.offsets))

    def split_by(
        self, pos_user: np.ndarray, pos_time: np.ndarray, pos_split: np.ndarray
    ) -> Exposures:
        """These exposures labelled by the periods of the users' positives (``pos_user``,
        ``pos_time``, ``pos_split`` [E]): VALID from :data:`EXPOSURE_GAP` before a user's
        first validation positive, TEST from that long before their first test positive."""
        n_users = len(self.offsets) - 1
        starts = []
        for period in (VALID, TEST):
            first = np.full(n_users, np.iinfo(np.int64).max)
            mine = pos_split == period
            np.minimum.at(first, pos_user[mine], pos_time[mine])
            starts.append(np.where(first < np.iinfo(np.int64).max, first - EXPOSURE_GAP, first))
        u = self.user
        split = np.full(len(self), TRAIN, np.int8)
        split[self.timestamp >= starts[0][u]] = VALID
        split[self.timestamp >= starts[1][u]] = TEST
        return Exposures(self.item, self.timestamp, self.position, split, self.offsets)

    def through(self, last: int) -> Exposures:
        """Only the exposures of the periods up to ``last`` (TRAIN, VALID or TEST)."""
        keep = self.split <= last
        if keep.all():
            return self
        u = self.user[keep]
        counts = np.bincount(u, minlength=len(self.offsets) - 1)
        return Exposures(
            self.item[keep],
            self.timestamp[keep],
            self.position[keep],
            self.split[keep],
            np.r_[0, np.cumsum(counts)].astype(np.int64),
        )

    def of_user(
        self, u: int, splits: tuple[int, ...] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """User ``u``'s exposures (items int64, times int64, slots int32), oldest first; only
        those of ``splits`` when given."""
        s = slice(self.offsets[u], self.offsets[u + 1])
        items, times, slots = self.item[s].astype(np.int64), self.timestamp[s], self.position[s]
        if splits is None:
            return items, times, slots
        keep = np.isin(self.split[s], splits)
        return items[keep], times[keep], slots[keep]


def shown_counts(
    candidates: np.ndarray, shown_items: np.ndarray, shown_times: np.ndarray, now: float
) -> np.ndarray:
    """How many times each of ``candidates`` int [C] was shown among the last
    :data:`EXPOSURE_EVENTS` exposures (``shown_items`` int [X], ``shown_times`` [X] seconds,
    in any order) at least :data:`EXPOSURE_GAP` before ``now``: int64 [C]. A bundle keeps
    that many of each user's, so serving reads what training read."""
    before = shown_times <= now - EXPOSURE_GAP
    known = shown_items[before]
    if len(known) > EXPOSURE_EVENTS:
        order = np.argsort(shown_times[before], kind="stable")
        known = known[order[-EXPOSURE_EVENTS:]]
    return per_item_sum(known, np.ones(len(known)), candidates).astype(np.int64)


def per_item_sum(items: np.ndarray, values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """float64 [C]: for each of ``candidates``, the sum of ``values`` [X] over its entries in
    ``items`` [X] (0 for a candidate with none)."""
    if not len(items) or not len(candidates):
        return np.zeros(len(candidates))
    uniq, inv = np.unique(items, return_inverse=True)
    sums = np.bincount(inv, weights=values, minlength=len(uniq))
    at = np.clip(np.searchsorted(uniq, candidates), 0, len(uniq) - 1)
    return np.where(uniq[at] == candidates, sums[at], 0.0)


@dataclass(frozen=True)
class SlotPropensity:
    """Examination of each slot relative to slot 0, float64 [S] in [floor, 1]; slots past
    the last are the last's. ``exposures`` and ``clicks`` [S]: the counts it came from."""

    examination: np.ndarray
    exposures: np.ndarray
    clicks: np.ndarray

    @classmethod
    def uniform(cls) -> SlotPropensity:
        """No position bias known: every slot examined (no slots, or correction off)."""
        return cls(np.ones(1), np.zeros(1, np.int64), np.zeros(1, np.int64))

    @classmethod
    def estimate(
        cls, exposure_slots: np.ndarray, click_slots: np.ndarray, *, floor: float = 0.05
    ) -> SlotPropensity:
        """From the slots (int, -1 unknown) of the exposures and of the positives:
        ``CTR(k) / CTR(0)``, made non-increasing, clipped to ``[floor, 1]``. A slot with
        fewer than 200 exposures, or without a click, takes the slot before it's value."""
        ex = exposure_slots[exposure_slots >= 0]
        if not len(ex):
            return cls.uniform()
        n = int(ex.max()) + 1
        shown = np.bincount(ex, minlength=n)[:n]
        cl = click_slots[(click_slots >= 0) & (click_slots < n)]
        return cls.from_counts(shown, np.bincount(cl, minlength=n)[:n], floor=floor)

    @classmethod
    def from_counts(
        cls, shown: np.ndarray, clicks: np.ndarray, *, floor: float = 0.05
    ) -> SlotPropensity:
        """:meth:`estimate` from its counts per slot (int [S] each, clicks only of slots
        with exposures): what shards that counted apart agree on once their counts are
        summed."""
        n = len(shown)
        if not n or not shown.any():
            return cls.uniform()
        if shown[0] < _MIN_SLOT_EXPOSURES or clicks[0] == 0:
            return cls(np.ones(1), shown, clicks)
        ctr0 = clicks[0] / shown[0]
        exam = np.ones(n)
        for k in range(1, n):
            ok = shown[k] >= _MIN_SLOT_EXPOSURES and clicks[k] > 0
            exam[k] = min(exam[k - 1], clicks[k] / shown[k] / ctr0) if ok else exam[k - 1]
        return cls(np.clip(exam, floor, 1.0), shown, clicks)

    def of(self, slots: np.ndarray) -> np.ndarray:
        """float64 [...]: the examination of ``slots`` (-1, unknown: 1, as if looked at)."""
        slots = np.asarray(slots)
        at = np.clip(slots, 0, len(self.examination) - 1)
        return np.where(slots < 0, 1.0, self.examination[at])


def exposure_offset(counts: np.ndarray, strength: float) -> np.ndarray:
    """float32 [N + 1]: ``strength x log`` of each item's share of the exposures ``counts``
    (float [N + 1], index 0 padding), what training adds to an item's logits so that a model
    learns the interest in it rather than how often the site showed it (``[loss]`` and
    ``[ranker] exposure_correction``). An item never shown (a new one, or padding) counts as
    the least shown item."""
    counts = np.asarray(counts, np.float64)
    if counts.ndim != 1 or (counts < 0).any() or not counts.any():
        raise ValueError("exposure counts: a 1-D array of counts >= 0, not all 0")
    share = counts / counts.sum()
    least = share[share > 0].min()
    return (strength * np.log(np.where(share > 0, share, least))).astype(np.float32)
