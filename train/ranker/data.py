"""Ranking requests: for each user, retrieval's top-C candidates with their ranking features
and labels. The ranker trains on them (hard negatives: what retrieval itself ranks high) and
the two-stage evaluation scores them. numpy only; the retrieval and the user embeddings are
passed in, so the same code serves the torch model and the ONNX bundle.

A user's request is made at ``now`` = the time of their first event in the target split
(when they came back); the history is what is known before it, and item activity counts
only the events of the known splits before ``now``. Or at given times (``now=``), as a
server stamps them: its clock is where the known events end (:func:`history_cut`, the
bundle clock) plus however long after the build the request comes (:func:`request_delays`),
and its item activity is frozen at that cut (``activity_at=``), as a bundle's snapshot is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tailored.config import RankerConfig
from tailored.data.exposures import (
    EXPOSURE_GAP,
    Exposures,
    SlotPropensity,
    per_item_sum,
    shown_counts,
)
from tailored.data.interactions import Interactions
from tailored.data.ranking_features import (
    DENSE_FEATURES,
    ActivitySnapshot,
    CohortCounts,
    ItemActivity,
    ItemNeighbors,
    ItemRegression,
    cohort_columns,
    dense_features,
    item_tags,
)

__all__ = [
    "Requests",
    "Retriever",
    "build_requests",
    "exact_retriever",
    "history_cut",
    "request_delays",
]

_DAY = 86_400

# (user embeddings float32 [B, D], items to exclude per user) -> (scores [B, C], items [B, C])
# with 1-based item indices, 0 where fewer than C items are available
Retriever = Callable[[np.ndarray, list[np.ndarray], int], tuple[np.ndarray, np.ndarray]]


@dataclass
class Requests:
    """R ranking requests of C candidates each (item 0 = no candidate)."""

    users: np.ndarray  # int64 [R]
    now: np.ndarray  # int64 [R] request time, seconds
    user_emb: np.ndarray  # float32 [R, D]
    candidates: np.ndarray  # int64 [R, C], retrieved order
    scores: np.ndarray  # float32 [R, C] retrieval scores
    dense: np.ndarray  # float32 [R, C, F]
    labels: np.ndarray  # float32 [R, C], 1 = a target-split item of the user
    n_relevant: np.ndarray  # int64 [R] the user's target items (also those not retrieved)
    # float32 [R, C]: how many negatives each candidate counts as in its list's loss (1; more
    # for an item shown in the labelled period and not engaged with)
    neg_weight: np.ndarray
    # float32 [R, C]: what each label is worth to the training loss: 1 for every label, or
    # with ``[ranker] graded_labels`` the weight of the user's engagement with it (a purchase
    # above a click); 0 for the other candidates
    gain: np.ndarray

    def take(self, rows: np.ndarray) -> Requests:
        return Requests(*(getattr(self, f)[rows] for f in self.__dataclass_fields__))

    @staticmethod
    def concat(parts: list[Requests]) -> Requests:
        """The requests of ``parts`` (of the same candidate count), in order."""
        fields = Requests.__dataclass_fields__
        return Requests(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields))

    def batches(self, size: int) -> list[Requests]:
        """Consecutive runs of at most ``size`` requests, in order."""
        n = len(self.users)
        return [self.take(np.arange(i, min(i + size, n))) for i in range(0, n, size)]


def exact_retriever(item_emb: np.ndarray) -> Retriever:
    """Exact inner-product retrieval over ``item_emb`` float32 [N+1, D] (row 0 padding)."""

    def retrieve(
        user_emb: np.ndarray, exclude: list[np.ndarray], n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = user_emb @ item_emb.T
        scores[:, 0] = -np.inf
        for row, items in enumerate(exclude):
            scores[row, items] = -np.inf
        n = min(n, scores.shape[1] - 1)
        top = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
        ids = np.take_along_axis(top, order, 1)
        s = np.take_along_axis(scores, ids, 1)
        return s.astype(np.float32), np.where(np.isfinite(s), ids, 0)

    return retrieve


def history_cut(data: Interactions, splits: tuple[int, ...]) -> int:
    """Where the known events of ``splits`` end, over all users: one second after the last
    (seconds), where a bundle of them starts its serving clock (``[serve] clock = "bundle"``)."""
    times = data.timestamp[np.isin(data.split, splits)]
    return int(times.max()) + 1 if len(times) else 0


def request_delays(days: tuple[float, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` delays after a bundle's build, seconds int64 [n]: each one of ``days`` (each
    equally likely), as :attr:`~tailored.config.RankerConfig.request_delay_days` says."""
    if not days:
        raise ValueError("days: give at least one delay")
    drawn = rng.choice(np.asarray(days, np.float64), size=n)
    return np.round(drawn * _DAY).astype(np.int64)


def _frozen(activity: ItemActivity, at: int, n_items: int) -> ActivitySnapshot:
    """``activity`` as a bundle snapshots it at ``at``: counts of the events before it, in
    all, the 7 and the 30 days before it; first seen among those events (-1: none)."""
    items = np.arange(n_items + 1)
    before, week, month = activity.counts(items, at)
    first = np.where(before > 0, activity.first_time(items), -1)
    return ActivitySnapshot(np.stack([before, week, month], 1).astype(np.float32), first)


@dataclass(frozen=True)
class _Events:
    """Some splits' positives grouped by user: user u's at ``[offsets[u]:offsets[u + 1]]``."""

    items: np.ndarray  # int64 [E], 1-based
    times: np.ndarray  # [E] seconds
    offsets: np.ndarray  # int64 [U+1]
    weights: np.ndarray  # float32 [E], each positive's weight
    sessions: np.ndarray | None = None  # int64 [E] session keys (-1 none), where logged


def _with_times(data: Interactions, splits: tuple[int, ...]) -> _Events:
    keep = np.isin(data.split, splits)
    counts = np.bincount(data.user[keep], minlength=data.n_users)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    return _Events(
        data.item[keep].astype(np.int64),
        data.timestamp[keep],
        offsets,
        data.weight[keep],
        None if data.session is None else data.session[keep],
    )


def _history(h: _Events, t: _Events, u: int, t_start: int) -> tuple[np.ndarray, np.ndarray]:
    """User ``u``'s history events (items, times), with their target-split events before
    ``t_start`` moved in."""
    mine = slice(h.offsets[u], h.offsets[u + 1])
    if t_start == t.offsets[u]:
        return h.items[mine], h.times[mine]
    moved = slice(t.offsets[u], t_start)
    return np.r_[h.items[mine], t.items[moved]], np.r_[h.times[mine], t.times[moved]]


def _candidates(
    retrieve: Retriever,
    user_emb: np.ndarray,
    exclude: list[np.ndarray],
    n: int,
    batch: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Each request's ``n`` retrieved items (int64 [R, n], 0 = none) and their retrieval
    scores (float32 [R, n], 0 where none), ``batch`` requests per call."""
    r = len(exclude)
    cands = np.zeros((r, n), np.int64)
    scores = np.full((r, n), -np.inf, np.float32)
    for start in range(0, r, batch):
        excl = exclude[start : start + batch]
        s, ids = retrieve(user_emb[start : start + batch], excl, n)
        cands[start : start + len(excl), : ids.shape[1]] = ids
        scores[start : start + len(excl), : s.shape[1]] = s
    return cands, np.where(cands > 0, scores, 0.0).astype(np.float32)


def _stats(
    data: Interactions,
    h: _Events,
    seed: int,
    ease_items: int,
    ease_l2: float,
    activity_at: int | None = None,
    cooccurrence: str = RankerConfig.cooccurrence,
    cohorts: Sequence[Sequence[str]] = (),
    cohort_min_users: int = RankerConfig.cohort_min_users,
) -> dict[str, Any]:
    """What the ranking features read of the history events: item activity (as of each
    request's time, or frozen at ``activity_at``), co-occurrence neighbours, the item-item
    model, the cohorts' counts and the items' tags."""
    h_users = np.repeat(np.arange(data.n_users), np.diff(h.offsets))
    by_session = data.cooccurrence_sessions(cooccurrence) is not None  # raises if none logged
    exact = ItemActivity.of(h.items, h.times, data.n_items)
    activity: ItemActivity | ActivitySnapshot = exact
    if activity_at is not None:
        activity = _frozen(exact, activity_at, data.n_items)
    return {
        "activity": activity,
        "neighbors": ItemNeighbors.of(
            h_users,
            h.items,
            h.offsets,
            data.n_items,
            seed=seed,
            sessions=h.sessions if by_session else None,
        ),
        "regression": ItemRegression.of(
            h_users, h.items, data.n_items, max_items=ease_items, l2=ease_l2
        ),
        "cohorts": CohortCounts.of(
            h_users,
            h.items,
            data.users.categorical,
            cohort_columns(data.user_encoder, cohorts),
            data.n_items,
            min_users=cohort_min_users,
        ),
        "tags": item_tags(data.items, len(data.item_encoder.categorical)),
    }


def build_requests(
    data: Interactions,
    users: np.ndarray,
    user_emb: np.ndarray,
    retrieve: Retriever,
    *,
    item_emb: np.ndarray,
    history_splits: tuple[int, ...],
    target: int,
    n_candidates: int,
    batch: int = 512,
    seed: int = 0,
    prefix: np.ndarray | None = None,
    ease_items: int = RankerConfig.ease_items,
    ease_l2: float = RankerConfig.ease_l2,
    now: np.ndarray | None = None,
    activity_at: int | None = None,
    impression_negative_weight: float = 0.0,
    examination: SlotPropensity | None = None,
    graded: bool = False,
    cooccurrence: str = RankerConfig.cooccurrence,
    cohorts: Sequence[Sequence[str]] = (),
    cohort_min_users: int = RankerConfig.cohort_min_users,
) -> Requests:
    """Requests of ``users`` (int [R], each with target-split events) whose embeddings are
    ``user_emb`` [R, D] (made from their ``history_splits`` items). Candidates exclude the
    history; item activity counts the ``history_splits`` events of all users before ``now``,
    and co-occurrence and the item-item model (``ease_items``, ``ease_l2``: see
    :class:`~tailored.config.RankerConfig`) the ``history_splits`` events, co-occurring
    within users or within sessions (``cooccurrence``), and so do the cohorts of
    ``cohorts`` (of at least ``cohort_min_users`` users). ``item_emb``
    [N+1, D] item embeddings.

    ``prefix`` int [R] (default 0): a request's first ``prefix`` target-split events are
    moved into its history (the embeddings must have been made with them), so one user
    gives several requests, each made when the next of their target events happened and
    labelled by the rest; every row needs at least one target event left.

    ``now`` int [R] (seconds): the requests' times instead of their next target events, as
    a server stamps them (each at or after its history's last event: the history is never
    read past ``now``, and never holds a target event unless ``prefix`` moved it there);
    ``activity_at`` (seconds): item activity frozen at that time, as a bundle serves it,
    instead of counted as of each ``now``.

    With ``graded``, each label's :attr:`Requests.gain` is the weight of the user's
    engagement with it (the largest of their target events of that item), else 1.

    The data's exposures (``data.exposures``) give the ``shown_before`` feature (those of
    ``history_splits``, and the target split's before ``now`` when the requests are made at
    their next events) and the impression negatives: a candidate shown in the labelled
    period (the target split's exposures from :data:`~tailored.data.exposures.EXPOSURE_GAP`
    before ``now``; every one when ``now`` is given) and not among the labels counts as
    ``1 + impression_negative_weight x P(looked at)`` negatives, P from its slots under
    ``examination`` (default: every slot looked at).
    """
    h = _with_times(data, history_splits)
    t = _with_times(data, (target,))
    stamped = now is not None
    users = np.asarray(users, np.int64)
    r = len(users)
    pre = np.zeros(r, np.int64) if prefix is None else np.asarray(prefix, np.int64)
    t_start = t.offsets[users] + pre
    if len(pre) != r or (pre < 0).any() or (t_start >= t.offsets[users + 1]).any():
        raise ValueError("prefix: needs one value per user, each leaving a target event")
    histories = [_history(h, t, users[row], t_start[row]) for row in range(r)]
    if now is None:
        now = t.times[t_start]
    else:
        now = np.broadcast_to(np.asarray(now, np.int64), (r,)).copy()
        last = np.array([times.max(initial=np.iinfo(np.int64).min) for _, times in histories])
        if (now < last).any():
            raise ValueError("now: a request is stamped before its history's last event")
    cands, scores = _candidates(retrieve, user_emb, [h[0] for h in histories], n_candidates, batch)
    stats = _stats(
        data,
        h,
        seed,
        ease_items,
        ease_l2,
        activity_at,
        cooccurrence,
        cohorts,
        cohort_min_users,
    )
    cohort = stats["cohorts"].keys(data.users.categorical[users])
    dense = np.zeros((r, n_candidates, len(DENSE_FEATURES)), np.float32)
    labels = np.zeros((r, n_candidates), np.float32)
    gain = np.zeros((r, n_candidates), np.float32)
    neg_weight = np.ones((r, n_candidates), np.float32)
    n_rel = (t.offsets[users + 1] - t_start).astype(np.int64)
    shown = data.exposures or Exposures.empty(data.n_users)
    exam = examination or SlotPropensity.uniform()
    known = (*history_splits, *(() if stamped else (target,)))
    for row, u in enumerate(users):
        items, times = histories[row]
        s_items, s_times, _ = shown.of_user(int(u), known)
        relevant = t.items[t_start[row] : t.offsets[u + 1]]
        if impression_negative_weight > 0:
            looked = _impression_weights(
                shown, int(u), target, None if stamped else now[row], cands[row], relevant, exam
            )
            neg_weight[row] = 1 + impression_negative_weight * looked
        dense[row] = dense_features(
            candidates=cands[row],
            scores=scores[row],
            history=items,
            history_times=times,
            now=float(now[row]),
            item_emb=item_emb,
            shown=shown_counts(cands[row], s_items, s_times, float(now[row])),
            cohort=cohort[row],
            **stats,
        )
        labels[row] = np.isin(cands[row], relevant) & (cands[row] > 0)
        gain[row] = labels[row]
        if graded:
            weights = t.weights[t_start[row] : t.offsets[u + 1]]
            gain[row] = _engagement_gain(cands[row], relevant, weights)
    return Requests(
        users,
        now,
        user_emb.astype(np.float32),
        cands,
        scores,
        dense,
        labels,
        n_rel,
        neg_weight,
        gain,
    )


def _engagement_gain(cands: np.ndarray, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """float32 [C]: for each candidate, the largest weight among the user's ``items``
    (their target events, ``weights`` float32 [T]) of that item; 0 for candidates they did not
    engage with (and padding)."""
    if not len(items):
        return np.zeros(len(cands), np.float32)
    order = np.lexsort((-weights, items))  # each item's largest weight first
    first = np.r_[True, items[order][1:] != items[order][:-1]]
    uniq, best = items[order][first], weights[order][first]
    at = np.clip(np.searchsorted(uniq, cands), 0, len(uniq) - 1)
    hit = (uniq[at] == cands) & (cands > 0)
    return np.where(hit, best[at], 0.0).astype(np.float32)


def _impression_weights(
    shown: Exposures,
    u: int,
    target: int,
    now: float | None,
    candidates: np.ndarray,
    relevant: np.ndarray,
    exam: SlotPropensity,
) -> np.ndarray:
    """float32 [C]: for each candidate, the chance user ``u`` looked at it in the labelled
    period (their ``target``-split exposures, from ``EXPOSURE_GAP`` before ``now`` if given)
    without engaging with it there: 1 - prod(1 - examination) over its exposures; 0 for the
    others and for the ``relevant`` items."""
    items, times, slots = shown.of_user(u, (target,))
    if now is not None:
        later = times >= now - EXPOSURE_GAP
        items, slots = items[later], slots[later]
    skipped = ~np.isin(items, relevant)
    # log of the chance it was never looked at, summed over each item's exposures (0: none)
    missed = np.log(np.clip(1.0 - exam.of(slots[skipped]), 1e-9, 1.0))
    never = per_item_sum(items[skipped], missed, candidates)
    return (1.0 - np.exp(never)).astype(np.float32)
