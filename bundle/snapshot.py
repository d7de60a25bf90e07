"""What a bundle knows of its data at build time, for serving: per item, the activity counts,
first-seen times, co-occurrence neighbours, the item-item model and the most popular items
per request context; per user, the most recent positives and every item seen. numpy only.

Each function reads :class:`~tailored.data.interactions.Interactions` and returns arrays
in bundle rows (item row r is the dataset's item r; 0 is padding).

A bundle knows its data only up to a split (``bundle build --through``): :func:`cut` keeps
the events of the splits up to and including it, and every function here is given what it
keeps, so that a bundle built ``--through valid`` can be evaluated on the test period it has
not seen. The manifest's ``data.through`` records the split (a bundle from before it was
recorded saw every event: :func:`built_through` reads it as ``test``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from tailored.bundle.per_user import PerUser
from tailored.config import RankerConfig
from tailored.data.features import FeatureEncoder
from tailored.data.interactions import Interactions
from tailored.data.ranking_features import (
    CohortCounts,
    ItemNeighbors,
    ItemRegression,
    cohort_columns,
    distinct_pairs,
)
from tailored.data.splits import TEST, TRAIN, VALID

__all__ = [
    "CONTEXT_POPULAR_TOP",
    "SPLITS",
    "activity",
    "built_through",
    "cohorts",
    "context_popular",
    "cut",
    "first_seen",
    "neighbors",
    "regression",
    "user_exposures",
    "user_seen",
    "user_snapshot",
]

_DAY = 86_400
# items kept per context value for the non-personalized result in that context
CONTEXT_POPULAR_TOP = 1000
# the splits in time order, by name (``--through``): train < valid < test
SPLITS = {"train": TRAIN, "valid": VALID, "test": TEST}


def cut(data: Interactions, through: str) -> Interactions:
    """``data`` with only the events of the splits up to and including ``through`` (a name
    of :data:`SPLITS`), in the same order; users, items and the dataset's identity (its
    ``meta``, counts included) unchanged. ``data`` itself when nothing is left out."""
    if through not in SPLITS:
        raise ValueError(f"through: one of {', '.join(SPLITS)}, not {through!r}")
    keep = data.split <= SPLITS[through]
    if keep.all():
        return data
    counts = np.bincount(data.user[keep], minlength=data.n_users)
    return dataclasses.replace(
        data,
        user=data.user[keep],
        item=data.item[keep],
        timestamp=data.timestamp[keep],
        split=data.split[keep],
        weight=data.weight[keep],
        context=data.context[keep],
        offsets=np.r_[0, np.cumsum(counts)].astype(np.int64),
        position=None if data.position is None else data.position[keep],
        session=None if data.session is None else data.session[keep],
        exposures=None if data.exposures is None else data.exposures.through(SPLITS[through]),
    )


def built_through(data: Mapping[str, Any]) -> str:
    """The split a bundle's manifest ``data`` says it was built through; ``test`` (every
    event) for a bundle from before the manifest recorded it."""
    through = data.get("through")
    return through if through in SPLITS else "test"


def activity(data: Interactions) -> np.ndarray:
    """Per item row: positives in all, the last 7 and the last 30 days of the data, float32
    [N+1, 3] (the serving snapshot of the ranker's item-count features)."""
    end = int(data.timestamp.max()) + 1 if len(data.timestamp) else 0
    cols = [
        np.bincount(data.item[data.timestamp >= end - d], minlength=data.n_items + 1)
        for d in (end + 1, 7 * _DAY, 30 * _DAY)
    ]
    return np.stack(cols, axis=1).astype(np.float32)


def context_popular(
    data: Interactions, vocabs: dict[str, list[str]], top: int = CONTEXT_POPULAR_TOP
) -> dict[str, np.ndarray]:
    """Per context field and value, the ``top`` items with the most positives in it (see
    :class:`~tailored.bundle.runtime.ContextPopular`); ties by item row.

    ``vocabs``: the model's context vocabularies (``model.json``), which serving codes
    requests with. The data's own may differ (a refresh reads the dataset as it is now, with
    values added or gone since training): its codes are mapped onto the model's by value."""
    width = max((len(v) for v in vocabs.values()), default=0) + 1
    t = min(top, data.n_items)
    rows = np.zeros((len(vocabs), width, t), np.int64)
    counts = np.zeros((len(vocabs), width, t), np.float32)
    for f, (name, vocab) in enumerate(vocabs.items()):
        if name not in data.context_vocabs:
            continue
        to_model = {v: j + 1 for j, v in enumerate(vocab)}
        remap = np.array(
            [0, *(to_model.get(v, 0) for v in data.context_vocabs[name])], dtype=np.int64
        )
        codes = remap[data.context[:, list(data.context_vocabs).index(name)]]
        # one pass over the events for all values: (value, item) pairs counted together
        given = (codes > 0) & (data.item > 0)
        pairs, n = np.unique(
            codes[given] * (data.n_items + 1) + data.item[given].astype(np.int64),
            return_counts=True,
        )
        values, items = np.divmod(pairs, data.n_items + 1)
        bounds = np.searchsorted(values, np.arange(1, len(vocab) + 2))
        for v in range(1, len(vocab) + 1):
            lo, hi = bounds[v - 1], bounds[v]
            best = lo + np.lexsort((items[lo:hi], -n[lo:hi]))[:t]  # ties by item row
            rows[f, v, : len(best)] = items[best]
            counts[f, v, : len(best)] = n[best]
    return {"context_popular": rows, "context_popular_counts": counts}


def first_seen(data: Interactions) -> np.ndarray:
    """Per item row: the time of its first positive (seconds; -1 if none), int64 [N+1]."""
    first = np.full(data.n_items + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, data.item, data.timestamp.astype(np.int64))
    return np.where(first == np.iinfo(np.int64).max, -1, first)


def user_snapshot(data: Interactions, length: int) -> dict[str, np.ndarray]:
    """Every user's ``length`` most recent positives for serving, the bundle files of
    :class:`~tailored.bundle.per_user.PerUser` group ``history``."""
    return PerUser.last(data.offsets, data.item, data.timestamp, length).arrays("history")


def user_exposures(data: Interactions, length: int) -> dict[str, np.ndarray]:
    """Every user's ``length`` most recent exposures (what they were shown, for the ranker's
    ``shown_before``): the bundle files of group ``exposures``. Nothing (``{}``) where the
    data has no exposure events."""
    shown = data.exposures
    if shown is None or not len(shown):
        return {}
    return PerUser.last(shown.offsets, shown.item, shown.timestamp, length).arrays("exposures")


def user_seen(data: Interactions) -> dict[str, np.ndarray]:
    """Every item each user has a positive for, for serving's "already interacted" filter
    (the snapshot above keeps only the most recent): user u's distinct item rows, sorted, at
    ``user_seen_items[user_seen_offsets[u]:user_seen_offsets[u + 1]]``."""
    users, items = distinct_pairs(data.user, data.item, data.n_items)
    counts = np.bincount(users, minlength=data.n_users)
    return {
        "user_seen_offsets": np.r_[0, np.cumsum(counts)].astype(np.int64),
        "user_seen_items": items.astype(np.int32),
    }


def neighbors(data: Interactions, cfg: RankerConfig, seed: int) -> ItemNeighbors:
    """The serving snapshot of the ranker's co-occurrence table: every positive event,
    within users or sessions as ``cfg.cooccurrence`` says (the offline evaluation builds its
    own from the splits before the evaluated one)."""
    return ItemNeighbors.of(
        data.user,
        data.item,
        data.offsets,
        data.n_items,
        seed=seed,
        sessions=data.cooccurrence_sessions(cfg.cooccurrence),
    )


def regression(data: Interactions, cfg: RankerConfig) -> ItemRegression:
    """The serving snapshot of the ranker's item-item model: every positive event."""
    return ItemRegression.of(
        data.user, data.item, data.n_items, max_items=cfg.ease_items, l2=cfg.ease_l2
    )


def cohorts(
    data: Interactions,
    cfg: RankerConfig,
    *,
    encoder: FeatureEncoder | None = None,
    user_cat: np.ndarray | None = None,
) -> CohortCounts:
    """The serving snapshot of the cohorts' counts (``[ranker] cohorts``): every positive
    event. A bundle counts them by the model's user ``encoder`` and its codes of ``data``'s
    users (``user_cat`` int [U, C]), as serving reads a user's cohort; the data's own
    encoder and codes where neither is given (a run's data, encoded as its model was). The
    two go together: codes from one encoder read by another's columns would count users in
    the wrong cohorts, so one without the other is refused."""
    if (encoder is None) != (user_cat is None):
        raise ValueError("cohorts: give the model's encoder and its user codes together")
    encoder = data.user_encoder if encoder is None else encoder
    return CohortCounts.of(
        data.user,
        data.item,
        data.users.categorical if user_cat is None else user_cat,
        cohort_columns(encoder, cfg.cohorts),
        data.n_items,
        min_users=cfg.cohort_min_users,
    )
