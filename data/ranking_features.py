"""What the re-ranker sees beyond the two towers: one definition, in numpy, shared by
training, offline evaluation and the server (which imports no torch).

For one request (a user with a time-ordered history, at time ``now``) and its retrieved
candidates, :func:`dense_features` returns ``float32 [C, len(DENSE_FEATURES)]``:

==========================  ==============================================================
``retrieval_score``         the two towers' cosine similarity
``retrieval_rank``          log(1 + rank in the retrieved list), rank 0 = best
``item_count``              log(1 + the item's known interactions before ``now``)
``item_count_7d``           log(1 + its interactions in the 7 days before ``now``)
``item_count_30d``          log(1 + its interactions in the 30 days before ``now``)
``item_age_days``           log(1 + days since its first interaction; 0 if none yet)
``item_unseen``             1 if the item has no interaction before ``now``
``tag_affinity``            mean over the item's tags of the share of the user's history
                            carrying that tag (tags: values of the categorical and
                            multi-valued fields, e.g. genres)
``tag_affinity_max``        the same, the largest over the item's tags
``tag_affinity_recent``     the mean share among the user's 20 most recent items
``tag_hours_since``         log(1 + hours since the user last engaged with any of the
                            item's tags; 1e5 hours if never)
``tag_never``               1 if the user never engaged with any of its tags
``history_length``          log(1 + number of items in the user's history)
``hours_since_last``        log(1 + hours since the user's most recent event)
``cooc_recent``             sum over the user's 20 most recent items of their co-occurrence
                            similarity with the item (cosine over users, or over sessions
                            with ``[ranker] cooccurrence``, :class:`ItemNeighbors`)
``cooc_recent_max``         the largest of those similarities
``emb_sim_last``            cosine of the item tower's embeddings of the item and of the
                            user's most recent item
``emb_sim_recent``          the mean of that cosine over the user's 5 most recent items
``ease_score``              the item's score under an item-item linear model of the user's
                            history (EASE, :class:`ItemRegression`; 0 for items it does not
                            model)
``shown_before``            log(1 + times the item was shown to the user, at least half an
                            hour before ``now``, without an engagement since: candidates
                            are never items the user engaged with; see
                            :mod:`tailored.data.exposures`)
``cohort_lift``             the sum over the user's cohorts (users alike in some profile
                            fields, ``[ranker] cohorts``: one cohort per definition, e.g. of
                            gender, of age band, of region) of the log of how much more often
                            the cohort engaged with the item than all users did, shrunk
                            towards 0 for small counts (:class:`CohortCounts`; 0 without)
``cohort_lift_max``         the largest of those logs
==========================  ==============================================================

The history is the user's ``HISTORY_EVENTS`` most recent items (what a bundle keeps of each
user for serving). Features are only ever appended to this list, so that a ranker trained
on fewer of them (an older bundle's) reads the first ones it knows.

Item activity is "as of ``now``": offline, exact per request time from the known events;
online, the bundle's snapshot of them. Co-occurrence and the item-item model count the
known events too: offline, those of the splits before the evaluated one (a user's own
held-out items never count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from tailored.config import ConfigError
from tailored.data.features import BUCKET_SUFFIX, FeatureEncoder, FeatureTable

__all__ = [
    "COHORT_PRIOR",
    "DENSE_FEATURES",
    "HISTORY_EVENTS",
    "ActivitySnapshot",
    "CohortCounts",
    "ItemActivity",
    "ItemNeighbors",
    "ItemRegression",
    "cohort_columns",
    "dense_features",
    "distinct_pairs",
    "item_tags",
    "penalized",
    "popularity_penalized",
    "ranker_inputs",
]

DENSE_FEATURES = (
    "retrieval_score",
    "retrieval_rank",
    "item_count",
    "item_count_7d",
    "item_count_30d",
    "item_age_days",
    "item_unseen",
    "tag_affinity",
    "tag_affinity_max",
    "tag_affinity_recent",
    "tag_hours_since",
    "tag_never",
    "history_length",
    "hours_since_last",
    "cooc_recent",
    "cooc_recent_max",
    "emb_sim_last",
    "emb_sim_recent",
    "ease_score",
    "shown_before",
    "cohort_lift",
    "cohort_lift_max",
)
_DAY = 86_400
# the most recent history items the features read: what a bundle keeps of each user for
# serving (``USER_SNAPSHOT_EVENTS``), so that offline and served features agree
HISTORY_EVENTS = 200
_RECENT = 20
_SIM_RECENT = 5
_NEVER_HOURS = 1e5


def item_tags(items: FeatureTable, categorical: int | None = None) -> np.ndarray:
    """Each item's tags, int64 [N+1, G], 0-padded: the codes of its categorical and
    multi-valued fields moved into one code space (field j's codes offset past field j-1's).
    ``categorical``: how many of ``items.categorical``'s columns are declared fields (the
    encoder's ``categorical``; the numeric fields' bucket columns after them are no tags);
    None: all of them."""
    cols: list[np.ndarray] = []
    offset = 0
    n_cat = items.categorical.shape[1] if categorical is None else categorical
    fields = [items.categorical[:, j : j + 1] for j in range(n_cat)]
    fields += [items.multi[:, j, :] for j in range(items.multi.shape[1])]
    for codes in fields:
        cols.append(np.where(codes > 0, codes + offset, 0))
        offset += int(codes.max(initial=0))
    if not cols:
        return np.zeros((len(items.categorical), 1), np.int64)
    return np.concatenate(cols, axis=1).astype(np.int64)


@dataclass
class ItemActivity:
    """Known interactions per item, for counts "as of" a time.

    ``keys`` int64 [E]: ``item << 32 | (time - origin)``, sorted; ``offsets`` int64 [N+2]:
    item i's events are ``keys[offsets[i]:offsets[i+1]]``; ``origin`` the earliest time.
    """

    keys: np.ndarray
    offsets: np.ndarray
    origin: int

    @classmethod
    def of(cls, items: np.ndarray, times: np.ndarray, n_items: int) -> ItemActivity:
        """From events' item indices (1-based, int [E]) and times (seconds, int64 [E])."""
        origin = int(times.min()) if len(times) else 0
        rel = np.clip(times.astype(np.int64) - origin, 0, (1 << 32) - 1)
        keys = np.sort((items.astype(np.int64) << 32) | rel)
        counts = np.bincount(items, minlength=n_items + 1)
        return cls(keys, np.r_[0, np.cumsum(counts)].astype(np.int64), origin)

    def _key(self, items: np.ndarray, t: float) -> np.ndarray:
        rel = int(np.clip(t - self.origin, 0, (1 << 32) - 1))
        return (items.astype(np.int64) << 32) | rel

    def count_before(self, items: np.ndarray, t: float) -> np.ndarray:
        """Events of each item strictly before time ``t``, int64 [C]."""
        if t <= self.origin:
            return np.zeros(len(items), np.int64)
        return np.searchsorted(self.keys, self._key(items, t)) - self.offsets[items]

    def counts(self, items: np.ndarray, now: float) -> tuple[np.ndarray, ...]:
        """Each item's events before ``now``: (all, last 7 days, last 30 days), int64 [C]."""
        before = self.count_before(items, now)
        return (
            before,
            before - self.count_before(items, now - 7 * _DAY),
            before - self.count_before(items, now - 30 * _DAY),
        )

    def first_time(self, items: np.ndarray) -> np.ndarray:
        """Time of each item's first event (seconds; -1 if none), int64 [C]."""
        if not len(self.keys):
            return np.full(len(items), -1, np.int64)
        has = self.offsets[items + 1] > self.offsets[items]
        first = self.keys[np.minimum(self.offsets[items], len(self.keys) - 1)]
        return np.where(has, (first & 0xFFFFFFFF) + self.origin, -1)


@dataclass
class ActivitySnapshot:
    """The same counts frozen at one time (a bundle's build), for serving: ``counts`` float32
    [N+1, 3] (all / last 7 days / last 30 days at the snapshot) and ``first_seen`` int64
    [N+1] (seconds; -1 if none). ``now`` is not used: the snapshot is the server's "as of"."""

    table: np.ndarray
    first_seen: np.ndarray

    def counts(self, items: np.ndarray, now: float) -> tuple[np.ndarray, ...]:
        rows = self.table[items]
        return rows[:, 0], rows[:, 1], rows[:, 2]

    def first_time(self, items: np.ndarray) -> np.ndarray:
        return self.first_seen[items]


@dataclass
class ItemNeighbors:
    """Each item's most similar items by co-occurrence in users' recent histories, or in
    their sessions (cosine: co-count / sqrt(count_i * count_j), counting users or (user,
    session) pairs): ``ids`` int64 [N+1, M] (0 = none) and ``weights`` float32 [N+1, M], best
    first."""

    ids: np.ndarray
    weights: np.ndarray

    @classmethod
    def of(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        offsets: np.ndarray,
        n_items: int,
        *,
        neighbors: int = 50,
        recent: int = 50,
        max_users: int = 200_000,
        seed: int = 0,
        sessions: np.ndarray | None = None,
    ) -> ItemNeighbors:
        """From events grouped by user in time order (``users``/``items`` int [E], user u's
        events at ``offsets[u]:offsets[u+1]``): each user's ``recent`` last items, at most
        ``max_users`` users (sampled, seeded), ``neighbors`` kept per item. Two items co-occur
        where one user has both; with ``sessions`` (int64 [E], each event's session key, -1
        where none was logged) where one of the user's sessions has both (a user's events
        without a session count as one session)."""
        import scipy.sparse as sp

        idx = np.arange(len(users))
        keep = offsets[users + 1] - idx <= recent
        n_users = len(offsets) - 1
        if n_users > max_users:
            chosen = np.zeros(n_users, bool)
            chosen[np.random.default_rng(seed).choice(n_users, max_users, replace=False)] = True
            keep &= chosen[users]
        rows, n_rows = users[keep], n_users
        if sessions is not None:
            # one row per (user, session); keys are only unique together with their user
            s = sessions[keep]  # -1 (none logged) groups a user's unlogged events together
            order = np.lexsort((s, rows))
            new = np.ones(len(order), bool)
            new[1:] = (rows[order][1:] != rows[order][:-1]) | (s[order][1:] != s[order][:-1])
            group = np.empty(len(order), np.int64)
            group[order] = np.cumsum(new) - 1
            rows, n_rows = group, int(new.sum())
        x = sp.csr_matrix(
            (np.ones(int(keep.sum()), np.float32), (rows, items[keep])),
            shape=(n_rows, n_items + 1),
        )
        x.data[:] = 1.0  # repeated interactions count once
        co = (x.T @ x).tocoo()
        deg = np.sqrt(np.asarray(x.sum(0)).ravel())
        off = co.row != co.col
        rows, cols = co.row[off], co.col[off]
        sims = co.data[off] / np.maximum(deg[rows] * deg[cols], 1e-12)
        order = np.lexsort((-sims, rows))
        rows, cols, sims = rows[order], cols[order], sims[order]
        starts = np.searchsorted(rows, np.arange(n_items + 1))
        rank = np.arange(len(rows)) - starts[rows]
        top = rank < neighbors
        ids = np.zeros((n_items + 1, neighbors), np.int64)
        weights = np.zeros((n_items + 1, neighbors), np.float32)
        ids[rows[top], rank[top]] = cols[top]
        weights[rows[top], rank[top]] = sims[top]
        return cls(ids, weights)

    def scores(self, history: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, ...]:
        """(sum, max) over ``history`` items of their similarity to each candidate, [C]."""
        nb = self.ids[history].ravel()
        w = self.weights[history].ravel()
        total = np.zeros(len(candidates), np.float32)
        best = np.zeros(len(candidates), np.float32)
        if not len(nb) or not len(candidates):
            return total, best
        # match neighbours against the (few) candidates, not the other way round: a request's
        # candidates are sorted once and each neighbour is looked up by binary search
        uniq, inv = np.unique(candidates, return_inverse=True)
        pos = np.minimum(np.searchsorted(uniq, nb), len(uniq) - 1)
        hit = (uniq[pos] == nb) & (nb > 0)
        sums = np.bincount(pos[hit], weights=w[hit], minlength=len(uniq))
        maxs = np.zeros(len(uniq))
        np.maximum.at(maxs, pos[hit], w[hit])
        total[:] = sums[inv]
        best[:] = maxs[inv]
        return total, best


def distinct_pairs(
    users: np.ndarray, items: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (user, item) pairs of events' users and items (1-based, at most
    ``n_items``), sorted by user then item: (users, items) int64 [P]."""
    pairs = np.unique(np.asarray(users, np.int64) * (n_items + 1) + np.asarray(items, np.int64))
    return pairs // (n_items + 1), pairs % (n_items + 1)


@dataclass
class ItemRegression:
    """An item-item linear model of users' histories over the most active items (EASE,
    Steck 2019): column j of ``weights`` is the ridge regression of "the user has item j" on
    the user's other items, so a history's score for item j is the sum of its rows' ``j``
    entries.

    ``rows`` int32 [N+1]: each item's row and column in ``weights`` (-1: not modelled);
    ``weights`` float32 [K, K], zero diagonal. Closed form: with P = (X'X + l2 I)^-1 over
    the binary users x items matrix X, ``weights[i, j] = -P[i, j] / P[j, j]`` (i != j).
    K is at most ``max_items`` (the items with the most users): the inverse is K x K.
    """

    rows: np.ndarray
    weights: np.ndarray

    @classmethod
    def empty(cls, n_items: int) -> ItemRegression:
        """A model of no item (every score 0)."""
        return cls(np.full(n_items + 1, -1, np.int32), np.zeros((0, 0), np.float32))

    @classmethod
    def of(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        n_items: int,
        *,
        max_items: int = 4096,
        l2: float = 100.0,
    ) -> ItemRegression:
        """From events' users (0-based) and items (1-based), int [E]; repeated events of a
        (user, item) count once; ties in activity go to the lower item number."""
        import scipy.sparse as sp

        if max_items <= 0 or not len(items):
            return cls.empty(n_items)
        u, i = distinct_pairs(users, items, n_items)
        count = np.bincount(i, minlength=n_items + 1)
        count[0] = 0
        top = np.argsort(-count, kind="stable")[:max_items]
        top = np.sort(top[count[top] > 0])
        rows = np.full(n_items + 1, -1, np.int32)
        rows[top] = np.arange(len(top), dtype=np.int32)
        keep = rows[i] >= 0
        x = sp.csr_matrix(
            (np.ones(int(keep.sum())), (u[keep], rows[i[keep]])),
            shape=(int(u.max()) + 1, len(top)),
        )
        gram = (x.T @ x).toarray()
        gram[np.diag_indices_from(gram)] += l2
        p = np.linalg.inv(gram)
        del gram  # at most two K x K float64 matrices alive at once
        p /= -np.diag(p)[None, :]
        np.fill_diagonal(p, 0.0)
        return cls(rows, p.astype(np.float32))

    def scores(self, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Each candidate's score given the ``history`` items (repeats count once), [C]."""
        out = np.zeros(len(candidates), np.float32)
        h = np.unique(self.rows[history])
        h = h[h >= 0]
        c = self.rows[candidates]
        known = c >= 0
        if len(h) and known.any():
            out[known] = self.weights[np.ix_(h, c[known])].sum(0)
        return out


# pseudo-count of the cohort lift's shrinkage: a cohort's share of an item is pulled towards
# the item's share among all users as if the cohort had this many more (user, item) pairs
COHORT_PRIOR = 50.0


@dataclass
class CohortCounts:
    """How many users of each cohort engaged with each item, for the ``cohort_lift`` and
    ``cohort_lift_max`` features. A cohort definition is a combination of profile fields
    (``[ranker] cohorts``: gender, age band, region, or gender x age band x region...); a
    missing value is a value of its own. A user belongs to one cohort of each definition.

    ``columns`` int64 [K, 3]: (definition, column in the users' ``FeatureTable.categorical``,
    number of codes, 0 included), definitions numbered from 0 in order; a user's cohort of a
    definition is the mixed-radix number of their codes there, offset past the earlier
    definitions' cohorts (:meth:`keys`). ``cohorts`` int64 [S]: the cohorts kept (those with
    at least ``min_users`` users engaging), sorted; cohort ``s``'s items, sorted, are
    ``items[offsets[s]:offsets[s+1]]`` (int32) with their users ``counts`` (float32);
    ``totals`` float32 [S] its (user, item) pairs; ``item_totals`` float32 [N+1] every
    user's pairs per item. A cohort too small to keep is none: it adds nothing to its users'
    features, and the bundle never holds the few users' items."""

    columns: np.ndarray
    cohorts: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    counts: np.ndarray
    totals: np.ndarray
    item_totals: np.ndarray

    @cached_property
    def _pairs(self) -> float:
        """Every user's (user, item) pairs: summed once, not per request."""
        return float(self.item_totals.sum())

    @classmethod
    def empty(cls, n_items: int) -> CohortCounts:
        """No cohorts: every user's features 0."""
        return cls(
            np.zeros((0, 3), np.int64),
            np.zeros(0, np.int64),
            np.zeros(1, np.int64),
            np.zeros(0, np.int32),
            np.zeros(0, np.float32),
            np.zeros(0, np.float32),
            np.zeros(n_items + 1, np.float32),
        )

    @classmethod
    def of(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        user_cat: np.ndarray,
        columns: np.ndarray,
        n_items: int,
        *,
        min_users: int = 20,
    ) -> CohortCounts:
        """From events' users (0-based) and items (1-based), int [E] (repeats of a (user,
        item) pair count once), the users' categorical codes ``user_cat`` int [U, C], and the
        cohort ``columns`` [K, 3] (:func:`cohort_columns`)."""
        columns = np.asarray(columns, np.int64).reshape(-1, 3)
        if not len(columns):
            return cls.empty(n_items)
        if not cls.keys_fit(columns, n_items):
            raise ValueError(
                f"cohorts: {int(_cohort_space(columns)[-1])} possible cohorts of {n_items} "
                "items do not fit a 64-bit key; use fewer or coarser fields"
            )
        key_of_user = cls._keys(user_cat, columns)  # [U, G]
        u, i = distinct_pairs(users, items, n_items)
        item_totals = np.bincount(i, minlength=n_items + 1).astype(np.float32)
        g = key_of_user.shape[1]
        key = key_of_user[u].ravel()  # each pair once per definition
        item = np.repeat(i, g)
        found, n_users = np.unique(key_of_user[np.unique(u)].ravel(), return_counts=True)
        kept = found[n_users >= max(int(min_users), 1)]
        mine = np.isin(key, kept)
        pairs, counts = np.unique(key[mine] * (n_items + 1) + item[mine], return_counts=True)
        cohort_of = np.searchsorted(kept, pairs // (n_items + 1))
        per_cohort = np.bincount(cohort_of, minlength=len(kept))
        return cls(
            columns,
            kept.astype(np.int64),
            np.r_[0, np.cumsum(per_cohort)].astype(np.int64),
            (pairs % (n_items + 1)).astype(np.int32),
            counts.astype(np.float32),
            np.bincount(cohort_of, weights=counts, minlength=len(kept)).astype(np.float32),
            item_totals,
        )

    @staticmethod
    def _keys(user_cat: np.ndarray, columns: np.ndarray) -> np.ndarray:
        space = _cohort_space(columns)
        n_defs = len(space) - 1
        key = np.zeros((len(user_cat), n_defs), np.int64)
        for d, col, size in columns:
            codes = np.clip(np.asarray(user_cat[:, col], np.int64), 0, size - 1)
            key[:, d] = key[:, d] * size + codes
        return key + space[:-1]

    @staticmethod
    def keys_fit(columns: np.ndarray, n_items: int) -> bool:
        """Whether every (cohort, item) pair of cohort ``columns`` [K, 3] (definitions
        numbered from 0) and ``n_items`` items has a 64-bit key."""
        space: dict[int, float] = {}
        for d, _, size in columns:  # in floats: a product of large sizes must not wrap
            space[int(d)] = space.get(int(d), 1.0) * float(size)
        return sum(space.values()) * (n_items + 1) < 2.0**62

    @staticmethod
    def n_keys(columns: np.ndarray) -> int:
        """How many cohorts cohort ``columns`` [K, 3] make: keys run from 0 to this, less one."""
        return int(_cohort_space(columns)[-1])

    def keys(self, user_cat: np.ndarray) -> np.ndarray:
        """The cohorts of users with categorical codes ``user_cat`` int [R, C]: int64
        [R, G], one per definition (G = 0 without cohorts)."""
        if not len(self.columns):
            return np.zeros((len(user_cat), 0), np.int64)
        return self._keys(user_cat, self.columns)

    def scores(self, cohorts: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, ...]:
        """(``cohort_lift``, ``cohort_lift_max``) of ``candidates`` int [C] for a user of
        ``cohorts`` int [G] (a row of :meth:`keys`), float32 [C] each: the sum and the
        largest of the lifts of their kept cohorts; 0 where none is kept. A cohort's lift of
        an item is log(its share of the cohort's (user, item) pairs / its share of all),
        the cohort's share shrunk towards all's by ``COHORT_PRIOR`` pairs."""
        total = np.zeros(len(candidates), np.float32)
        best = np.full(len(candidates), -np.inf, np.float32)
        n_items = len(self.item_totals) - 1
        p = (self.item_totals[candidates] + 1.0) / (self._pairs + n_items)
        for cohort in np.asarray(cohorts, np.int64).ravel():
            s = int(np.searchsorted(self.cohorts, cohort))
            if s >= len(self.cohorts) or self.cohorts[s] != cohort:
                continue
            mine = self.items[self.offsets[s] : self.offsets[s + 1]]
            at = np.clip(np.searchsorted(mine, candidates), 0, len(mine) - 1)
            c = np.where(mine[at] == candidates, self.counts[self.offsets[s] + at], 0.0)
            share = (c + COHORT_PRIOR * p) / (float(self.totals[s]) + COHORT_PRIOR)
            lift = np.log(share / p).astype(np.float32)
            total += lift
            best = np.maximum(best, lift)
        return total, np.where(np.isfinite(best), best, 0.0).astype(np.float32)


def _cohort_space(columns: np.ndarray) -> np.ndarray:
    """Where each cohort definition's keys start, and the end of the last: int64 [G+1]."""
    n_defs = int(columns[:, 0].max()) + 1 if len(columns) else 0
    sizes = np.ones(n_defs, np.int64)
    for d, _, size in columns:
        sizes[d] *= size
    return np.r_[0, np.cumsum(sizes)].astype(np.int64)


def cohort_columns(encoder: FeatureEncoder, cohorts: Sequence[Sequence[str]]) -> np.ndarray:
    """The cohort columns (:class:`CohortCounts`) of cohort definitions ``cohorts`` (``[ranker]
    cohorts``: each a list of user fields), int64 [K, 3] (definition, column, number of
    codes). A field is a categorical one's column, or a numeric one's range column (``[model]
    numeric_buckets``). An unknown name is a :class:`~tailored.config.ConfigError` naming the
    fields there are."""
    columns = encoder.columns
    out = []
    for d, fields in enumerate(cohorts):
        for name in fields:
            col = name if name in encoder.categorical else name + BUCKET_SUFFIX
            if col not in columns:
                usable = encoder.categorical + encoder.bucketed
                raise ConfigError(
                    f"[ranker] cohorts: {name!r} is no categorical user field, nor a numeric "
                    f"one with ranges ([model] numeric_buckets); those that can be: {usable}"
                )
            out.append((d, columns.index(col), encoder.cardinalities([col])[0]))
    return np.asarray(out, np.int64).reshape(-1, 3)


def _log_hours(seconds: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(seconds, 0) / 3600.0)


def dense_features(
    *,
    candidates: np.ndarray,
    scores: np.ndarray,
    history: np.ndarray,
    history_times: np.ndarray,
    now: float,
    tags: np.ndarray,
    activity: ItemActivity | ActivitySnapshot,
    neighbors: ItemNeighbors,
    item_emb: np.ndarray,
    regression: ItemRegression | None = None,
    shown: np.ndarray | None = None,
    cohorts: CohortCounts | None = None,
    cohort: np.ndarray | None = None,
) -> np.ndarray:
    """The ranker's dense features for one request (see the module doc), float32 [C, F].

    ``candidates`` int [C] item indices (1-based), in retrieved order; ``scores`` [C] their
    retrieval scores; ``history`` int [H] and ``history_times`` int64 [H] the user's items,
    oldest first (the last ``HISTORY_EVENTS`` are read); ``now`` the request time in
    seconds; ``tags`` from :func:`item_tags`;
    ``item_emb`` float32 [N+1, D] the item tower's embeddings; ``regression`` the
    item-item model (none: ``ease_score`` 0); ``shown`` int [C] how many times each
    candidate was shown to the user before (:func:`~tailored.data.exposures.shown_counts`;
    none: 0); ``cohorts`` the cohorts' counts and ``cohort`` the user's, int [G]
    (:meth:`CohortCounts.keys`; none: ``cohort_*`` 0).
    """
    history, history_times = history[-HISTORY_EVENTS:], history_times[-HISTORY_EVENTS:]
    c = len(candidates)
    out = np.zeros((c, len(DENSE_FEATURES)), np.float32)
    out[:, 0] = scores
    out[:, 1] = np.log1p(np.arange(c))
    _item_features(out, candidates, activity, now)
    h = len(history)
    out[:, 12] = np.log1p(h)
    if shown is not None:
        out[:, 19] = np.log1p(shown)
    if cohorts is not None and cohort is not None:
        out[:, 20], out[:, 21] = cohorts.scores(cohort, candidates)
    if not h:
        out[:, 10] = np.log1p(_NEVER_HOURS)
        out[:, 11] = 1.0
        out[:, 13] = np.log1p(_NEVER_HOURS)
        return out
    _tag_features(out, candidates, tags, history, history_times, now)
    out[:, 13] = _log_hours(np.asarray(now - history_times[-1]))
    out[:, 14], out[:, 15] = neighbors.scores(history[-_RECENT:], candidates)
    sims = item_emb[candidates] @ item_emb[history[-_SIM_RECENT:]].T  # [C, <=5]
    out[:, 16] = sims[:, -1]
    out[:, 17] = sims.mean(1)
    if regression is not None:
        out[:, 18] = regression.scores(history, candidates)
    return out


def _item_features(
    out: np.ndarray,
    candidates: np.ndarray,
    activity: ItemActivity | ActivitySnapshot,
    now: float,
) -> None:
    """Columns 2-6 of ``out``: the candidates' positives before ``now``, in the last week and
    month, their age in days and whether they have none."""
    before, week, month = activity.counts(candidates, now)
    out[:, 2] = np.log1p(before)
    out[:, 3] = np.log1p(week)
    out[:, 4] = np.log1p(month)
    first = activity.first_time(candidates)
    seen = (before > 0) & (first >= 0)
    out[:, 5] = np.where(seen, np.log1p(np.maximum(now - first, 0) / _DAY), 0.0)
    out[:, 6] = ~seen


def _tag_features(
    out: np.ndarray,
    candidates: np.ndarray,
    tags: np.ndarray,
    history: np.ndarray,
    history_times: np.ndarray,
    now: float,
) -> None:
    """Columns 7-11 of ``out``: how much of a (non-empty) history shares each candidate's
    tags, overall and recently, and how long ago the user last met one of them."""
    cand_tags = tags[candidates]  # [C, G]
    present = cand_tags > 0
    n_present = np.maximum(present.sum(1), 1)
    hist_tags = tags[history]  # [H, G]
    # the tag codes this request can see (not the whole table's max: a 1M-item scan each time)
    n_tags = int(max(cand_tags.max(initial=0), hist_tags.max(initial=0))) + 1
    share = np.bincount(hist_tags.ravel(), minlength=n_tags) / len(history)
    recent = hist_tags[-_RECENT:]
    share_recent = np.bincount(recent.ravel(), minlength=n_tags) / len(recent)
    last = np.full(n_tags, -np.inf)
    np.maximum.at(last, hist_tags.ravel(), np.repeat(history_times, hist_tags.shape[1]))
    last[0] = -np.inf
    s = np.where(present, share[cand_tags], 0.0)
    out[:, 7] = s.sum(1) / n_present
    out[:, 8] = s.max(1)
    out[:, 9] = np.where(present, share_recent[cand_tags], 0.0).sum(1) / n_present
    latest = np.where(present, last[cand_tags], -np.inf).max(1)
    never = ~np.isfinite(latest)
    gap = np.where(never, _NEVER_HOURS * 3600.0, now - np.where(never, now, latest))
    out[:, 10] = _log_hours(gap)
    out[:, 11] = never


def ranker_inputs(
    *,
    users: FeatureTable,
    context: np.ndarray,
    items: FeatureTable,
    item_emb: np.ndarray,
    candidates: np.ndarray,
    dense: np.ndarray,
    user_emb: np.ndarray,
) -> dict[str, np.ndarray]:
    """The ranker's inputs (``tailored.train.ranker.model.RANKER_INPUTS``) for R requests of C
    candidates each, one row per (request, candidate), request-major: arrays [R*C, ...].

    ``users`` [R, ...] and ``context`` int64 [R, K] the requests' users and contexts;
    ``items`` [N+1, ...] and ``item_emb`` float32 [N+1, D] tables indexed by item;
    ``candidates`` int [R, C]; ``dense`` float32 [R, C, F]; ``user_emb`` float32 [R, D].
    """
    r, c = candidates.shape
    flat = candidates.reshape(-1)

    def per_request(a: np.ndarray) -> np.ndarray:
        return np.repeat(a, c, axis=0)

    # contiguous, of the graph's types: no copy where a gather or repeat already made one
    return {
        "user_cat": np.ascontiguousarray(per_request(users.categorical), np.int64),
        "user_num": np.ascontiguousarray(per_request(users.numeric), np.float32),
        "context": np.ascontiguousarray(per_request(context), np.int64),
        "item_cat": np.ascontiguousarray(items.categorical[flat], np.int64),
        "item_multi": np.ascontiguousarray(items.multi[flat], np.int64),
        "item_num": np.ascontiguousarray(items.numeric[flat], np.float32),
        "dense": np.ascontiguousarray(dense.reshape(r * c, -1), np.float32),
        "user_emb": np.ascontiguousarray(per_request(user_emb), np.float32),
        "item_emb": np.ascontiguousarray(item_emb[flat], np.float32),
    }


def popularity_penalized(
    scores: np.ndarray,
    dense: np.ndarray,
    candidates: np.ndarray,
    penalty: float,
    below: int = 0,
) -> np.ndarray:
    """``[ranker] popularity_penalty``: the order of R requests' candidates, float32 [R, C],
    by ``z(score) - penalty * z(item_count)``, each standardised over the request's
    candidates (``candidates`` int [R, C], 0 = none: left out, and -inf), ``item_count`` the
    ranking feature (log of the item's known interactions, ``dense`` [R, C, F]). Clicks
    follow exposure, and a site shows its popular items most: a ranker fitted to clicks
    over-counts them. ``scores`` as they are where ``penalty`` is 0.

    ``below`` (``[ranker] popularity_penalty_below``): the ``below`` best candidates by
    ``scores`` keep the first places in the ranker's own order, and the penalty orders only
    the places under them, where a list has the least weight: the tail of each list then
    reaches the catalogue's less known items at little cost to its head."""
    count = dense[..., DENSE_FEATURES.index("item_count")]
    return penalized(scores, count, candidates, penalty, below)


def penalized(
    scores: np.ndarray,
    value: np.ndarray,
    candidates: np.ndarray,
    penalty: float,
    below: int = 0,
) -> np.ndarray:
    """The order of R requests' candidates, float32 [R, C], by ``z(score) - penalty *
    z(value)`` (``value`` [R, C], what to push down), each standardised over the request's
    candidates, under the ``below`` best by ``scores`` kept first in their order (see
    :func:`popularity_penalized`); ``scores`` as they are where ``penalty`` is 0."""
    if penalty == 0:
        return np.asarray(scores, np.float32)
    real = candidates > 0
    z = standardised_within(scores, real)
    out = z - penalty * standardised_within(value, real)
    if below > 0:
        ranked = np.argsort(-np.where(real, z, -np.inf), axis=1, kind="stable")[:, :below]
        # the head above every other candidate, by its place in the scores' order (a
        # place rather than the score itself: nothing float32 could merge)
        place = np.zeros(real.shape, np.float64)
        steps = np.arange(ranked.shape[1], 0, -1, dtype=np.float64)
        np.put_along_axis(place, ranked, np.broadcast_to(steps, ranked.shape), axis=1)
        head = (place > 0) & real
        floor = np.where(real & ~head, out, -np.inf).max(axis=1, keepdims=True)
        floor = np.where(np.isfinite(floor), floor, 0.0)
        out = np.where(head, floor + place, out)
    return np.where(real, out, -np.inf).astype(np.float32)


def standardised_within(x: np.ndarray, real: np.ndarray) -> np.ndarray:
    """``x`` [R, C] standardised within each request over its ``real`` [R, C] candidates,
    float64 (0 where a request's values do not spread)."""
    x = np.asarray(x, np.float64)
    n = np.maximum(real.sum(1, keepdims=True), 1)
    mean = np.where(real, x, 0.0).sum(1, keepdims=True) / n
    sd = np.sqrt(np.where(real, (x - mean) ** 2, 0.0).sum(1, keepdims=True) / n)
    return np.where(sd > 0, (x - mean) / np.where(sd > 0, sd, 1.0), 0.0)
