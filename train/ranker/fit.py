"""The re-ranker for a trained two-tower run: its requests (the run's own retrieval, from
training histories, against the validation items) and its fit.

Validation items are held out from the two towers' training (they only chose its
checkpoint), so retrieval scores on them are honest, as they will be at serving time; the
test split stays untouched for the two-stage evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tailored.config import RankerConfig
from tailored.data.exposures import exposure_offset
from tailored.data.interactions import Interactions
from tailored.data.ranking_features import DENSE_FEATURES
from tailored.data.splits import TRAIN, VALID
from tailored.train.ranker.data import (
    Requests,
    build_requests,
    exact_retriever,
    history_cut,
    request_delays,
)
from tailored.train.ranker.model import RankerSpec
from tailored.train.ranker.task import RankerTables, RankerTrainResult, train_ranker
from tailored.train.runs import LoadedRun, shown_in_training
from tailored.train.threads import torch_threads
from tailored.train.two_tower.data import TwoTowerDataModule, UserHistory

__all__ = ["fit_ranker", "ranker_spec", "ranker_tables", "run_user_embeddings"]


def ranker_spec(data: Interactions, embedding_dim: int, cfg: RankerConfig) -> RankerSpec:
    """Input sizes from the dataset's encoders; layer sizes from ``cfg``."""
    ue, ie = data.user_encoder, data.item_encoder
    users, items = cfg.user_fields, cfg.item_fields
    return RankerSpec(
        user_categorical=tuple(ue.cardinalities(ue.columns)) if users else (),
        user_numeric=len(ue.numeric) if users else 0,
        context=tuple(len(v) + 1 for v in data.context_vocabs.values()),
        item_categorical=tuple(ie.cardinalities(ie.columns)) if items else (),
        item_multi=tuple(ie.cardinalities(ie.multi)) if items else (),
        item_numeric=len(ie.numeric) if items else 0,
        dense=len(DENSE_FEATURES),
        embedding_dim=embedding_dim,
        feature_dim=cfg.feature_dim,
        cross_layers=cfg.cross_layers,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
        embeddings=cfg.embeddings,
    )


def ranker_tables(data: Interactions, item_emb: np.ndarray) -> RankerTables:
    """Offline requests carry no context (the evaluation has none), so context codes are 0."""
    context = np.zeros((data.n_users, data.context.shape[1]), np.int64)
    return RankerTables(data.users, context, data.items, item_emb)


@torch.no_grad()
def run_user_embeddings(
    run: LoadedRun,
    users: np.ndarray,
    history_splits: tuple[int, ...],
    batch: int = 1024,
    *,
    prefix: np.ndarray | None = None,
    prefix_split: int = VALID,
) -> np.ndarray:
    """The run's user embeddings of ``users`` from their ``history_splits`` items, [R, D];
    with ``prefix`` int [R], each history continues with that many of the user's first
    ``prefix_split`` items (a split that comes after ``history_splits`` in each user's
    time order, as validation does after training)."""
    m, data = run.cfg.model, run.data
    dm = TwoTowerDataModule(
        data, history_length=m.history_length, batch_size=1, user_id_buckets=m.user_id_buckets
    )
    users = np.asarray(users, np.int64)
    counts = None
    if prefix is None:
        hist = UserHistory.of(data, history_splits)
    else:  # the user's items of both, in time order, cut after the prefix
        hist = UserHistory.of(data, (*history_splits, prefix_split))
        known = np.bincount(data.user[np.isin(data.split, history_splits)], minlength=data.n_users)
        counts = known[users] + np.asarray(prefix, np.int64)
    out = [np.zeros((0, run.model.user_tower.out_dim), np.float32)]
    for start in range(0, len(users), batch):
        u = users[start : start + batch]
        window = hist.last(
            u, m.history_length, None if counts is None else counts[start : start + batch]
        )
        emb = run.model.user_embeddings(
            torch.from_numpy(dm.user_hash[u]),
            torch.from_numpy(data.users.categorical[u]),
            torch.from_numpy(data.users.numeric[u]),
            torch.zeros((len(u), data.context.shape[1]), dtype=torch.long),
            torch.from_numpy(window),
        )
        out.append(emb.float().numpy())
    return np.concatenate(out)


def list_cuts(n_target: np.ndarray, lists: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each user's ``lists`` requests cut their ``n_target`` target events: (row of
    ``n_target`` per request, events moved into the history). Cut j of n is at
    ``n_target * j // n``; a cut that leaves no event to label, or repeats the previous one
    (fewer events than lists), is dropped, so no request is made twice. Rows come cut by cut:
    every user's first request (nothing moved), then the second cuts, and so on."""
    n_target = np.asarray(n_target, np.int64)
    rows = [np.arange(len(n_target))]
    prefix = [np.zeros(len(n_target), np.int64)]
    for j in range(1, lists):
        p = (n_target * j) // lists
        keep = (p > 0) & (p < n_target) & (p != (n_target * (j - 1)) // lists)
        rows.append(np.flatnonzero(keep))
        prefix.append(p[keep])
    return np.concatenate(rows), np.concatenate(prefix)


def training_requests(
    run: LoadedRun, item_emb: np.ndarray, cfg: RankerConfig, seed: int
) -> Requests:
    """Retrieval's top-``cfg.candidates`` from training histories, labelled by the validation
    items, for at most ``cfg.max_users`` users with validation items (sampled, seeded).

    With ``cfg.lists_per_user`` n > 1, a user also gives the requests made when their
    validation period was 1/n, 2/n... through (those items joined the history; the rest
    label it), where that leaves an item: more lists from the same honest period.

    With ``cfg.request_time = "serving"``, requests are stamped as a server would stamp them
    had the bundle been built on the training split: at its end (:func:`history_cut`) plus a
    delay drawn from ``cfg.request_delay_days``, with item activity frozen at that end; the
    history is every training event, the labels every validation event, and a user's
    ``cfg.lists_per_user`` lists differ only by their delays. ``"mixed"``: both sets of
    lists, the next-event ones first."""
    data = run.data
    users = np.unique(data.user[data.split == VALID])
    if len(users) > cfg.max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, cfg.max_users, replace=False))
    parts = []
    if cfg.request_time in ("next_event", "mixed"):
        parts.append(_next_event_requests(run, users, item_emb, cfg, seed))
    if cfg.request_time in ("serving", "mixed"):
        parts.append(_serving_requests(run, users, item_emb, cfg, seed))
    return parts[0] if len(parts) == 1 else Requests.concat(parts)


def _next_event_requests(
    run: LoadedRun, users: np.ndarray, item_emb: np.ndarray, cfg: RankerConfig, seed: int
) -> Requests:
    """``users``' requests at their next (validation) events: see :func:`training_requests`."""
    data = run.data
    n_valid = np.bincount(data.user[data.split == VALID], minlength=data.n_users)[users]
    rows, prefix = list_cuts(n_valid, cfg.lists_per_user)
    req_users = users[rows]
    emb = run_user_embeddings(
        run, req_users, (TRAIN,), prefix=prefix if cfg.lists_per_user > 1 else None
    )
    return _requests(run, req_users, emb, item_emb, cfg, seed, prefix=prefix)


def _serving_requests(
    run: LoadedRun, users: np.ndarray, item_emb: np.ndarray, cfg: RankerConfig, seed: int
) -> Requests:
    """``users``' requests as serving stamps them: see :func:`training_requests`."""
    data = run.data
    req_users = np.tile(users, cfg.lists_per_user)
    cut = history_cut(data, (TRAIN,))
    # seeded apart from the users' sample, so the same users whatever the delays
    now = cut + request_delays(
        cfg.request_delay_days, len(req_users), np.random.default_rng([seed, 1])
    )
    emb = run_user_embeddings(run, req_users, (TRAIN,))
    return _requests(run, req_users, emb, item_emb, cfg, seed, now=now, activity_at=cut)


def _requests(
    run: LoadedRun,
    users: np.ndarray,
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    cfg: RankerConfig,
    seed: int,
    **stamping: Any,
) -> Requests:
    """Training requests of ``users`` from their training histories, labelled by their
    validation items, as ``cfg`` says (``stamping``: ``prefix``, or ``now`` and
    ``activity_at``: see :func:`build_requests`). Skipped impressions weigh by their slots'
    examination with ``[data] position_debias``, else as if each was looked at."""
    debias = run.cfg.data.position_debias
    return build_requests(
        run.data,
        users,
        user_emb,
        exact_retriever(item_emb),
        item_emb=item_emb,
        history_splits=(TRAIN,),
        target=VALID,
        n_candidates=cfg.candidates,
        seed=seed,
        ease_items=cfg.ease_items,
        ease_l2=cfg.ease_l2,
        cooccurrence=cfg.cooccurrence,
        cohorts=cfg.cohorts,
        cohort_min_users=cfg.cohort_min_users,
        impression_negative_weight=cfg.impression_negative_weight,
        graded=cfg.graded_labels,
        examination=run.data.propensity if debias else None,
        **stamping,
    )


def fit_ranker(
    run: LoadedRun, cfg: RankerConfig, *, progress_bar: bool = True
) -> tuple[RankerTrainResult, RankerTables, Requests]:
    """Train the ranker on the run's own candidates; returns it with the tables and requests
    it was trained on (export traces a batch of them). torch runs on the run's ``[train]
    threads`` meanwhile."""
    with torch_threads(run.cfg.train.threads):
        item_emb = run.model.all_item_embeddings().float().numpy()
        tables = ranker_tables(run.data, item_emb)
        requests = training_requests(run, item_emb, cfg, run.cfg.train.seed)
        spec = ranker_spec(run.data, item_emb.shape[1], cfg)
        strength = cfg.exposure_correction
        offset = (
            exposure_offset(shown_in_training(run.data, "ranker"), strength) if strength else None
        )
        result = train_ranker(
            spec,
            cfg,
            tables,
            requests,
            seed=run.cfg.train.seed,
            progress_bar=progress_bar,
            item_offset=offset,
        )
    return result, tables, requests
