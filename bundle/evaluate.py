"""``tailored evaluate BUNDLE``: the full two-stage system as it serves (user tower in
onnxruntime -> index top-N -> ranker in onnxruntime -> top-K) beside retrieval alone (the
index's top-K of the same lists) and popularity, with the same metrics as a run's evaluation.

The bundle's configuration names the dataset; it must be the data the bundle was built on
(same key, same counts), so that bundle rows are the dataset's item indices. And the bundle
must not have seen the evaluated period: one built through a split (manifest
``data.through``; every event, ``test``, for a bundle that does not record it) is refused on
that split and the ones before it. Build with ``--through valid`` to evaluate on test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tailored.bundle.format import BUNDLE_FILES, load_npy
from tailored.bundle.runtime import LoadedBundle
from tailored.bundle.snapshot import SPLITS, built_through
from tailored.config import RankerConfig, from_dict
from tailored.data.features import user_hash_buckets
from tailored.data.interactions import Interactions
from tailored.data.splits import TRAIN, VALID
from tailored.errors import TailoredError
from tailored.train.evaluate import KS, eval_plan, user_csr, user_groups
from tailored.train.metrics import (
    aggregate_metrics,
    grouped_metrics,
    per_user_metrics,
    popularity_scores,
    topk_shared,
)
from tailored.train.ranker.data import Requests, build_requests
from tailored.train.runs import load_data
from tailored.train.two_tower.data import UserHistory

__all__ = ["evaluate_bundle", "rank_requests", "rerank", "two_stage_requests"]


def _check_same_data(bundle: LoadedBundle, data: Interactions) -> None:
    snap = bundle.manifest.data
    if snap.get("key_fingerprint") != data.meta.key_fingerprint or snap.get("counts") != (
        data.meta.counts
    ):
        raise TailoredError(
            f"{bundle.manifest.path}: built on other data than {snap.get('path')} holds now "
            f"(counts {snap.get('counts')} then, {data.meta.counts} now); evaluate a bundle "
            "built on the data it is evaluated with"
        )
    if len(bundle.item_ids) != data.n_items or not np.array_equal(bundle.item_ids, data.item_ids):
        raise TailoredError(f"{bundle.manifest.path}: its items are not the dataset's items")


def _check_unseen(bundle: LoadedBundle, split: str) -> None:
    """Refuse to score ``bundle`` on ``split`` if it was built through it or a later split:
    its histories, items seen and item statistics hold the events to be predicted."""
    through = built_through(bundle.manifest.data)
    if SPLITS[through] < SPLITS[split]:
        return
    recorded = "through" in bundle.manifest.data
    how = (
        f"built through {through}"
        if recorded
        else "built before bundles recorded their cut, so it holds every event (through test)"
    )
    fix = (
        "--through valid"
        if split == "test"
        else "--through train --no-ranker (the re-ranker learns from valid)"
    )
    raise TailoredError(
        f"{bundle.manifest.path}: {how}; it has seen the {split} split (as its users' "
        f"histories and items seen, and item statistics), so evaluating it on {split} scores "
        f"what it already knows. Rebuild it with `tailored bundle build RUN --out ROOT {fix}` "
        f"to evaluate on {split}"
    )


def rerank(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best candidates (int [R, C], 0 = none) by ``scores`` [R, C], as 0-based item
    numbers for the metrics (-1 where there are fewer), int64 [R, k]."""
    s = np.where(candidates > 0, scores, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(candidates, order, 1)
    return np.where(top > 0, top - 1, -1)


def two_stage_requests(
    bundle: LoadedBundle,
    data: Interactions,
    users: np.ndarray,
    hist_splits: tuple[int, ...],
    target: int,
    n_candidates: int,
    ranker: RankerConfig,
    *,
    now: np.ndarray | None = None,
    activity_at: int | None = None,
) -> Requests:
    """The ranking requests of ``users`` as the bundle serves them: their embeddings from
    the bundle's user tower (``hist_splits`` history), the bundle's retrieval, and the
    ranking features of :func:`~tailored.train.ranker.data.build_requests` (``now`` and
    ``activity_at`` as it takes them: by default each request at its user's next
    ``target`` event)."""
    info = bundle.info
    hashes = user_hash_buckets(data.user_ids[users], int(info.get("user_id_buckets", 0)))
    history = UserHistory.of(data, hist_splits).last(users, bundle.history_length)
    emb = np.concatenate(
        [
            bundle.user_embeddings(
                user_hash=hashes[i : i + 512],
                user_cat=data.users.categorical[users[i : i + 512]],
                user_num=data.users.numeric[users[i : i + 512]],
                context=np.zeros((len(users[i : i + 512]), data.context.shape[1]), np.int64),
                history=history[i : i + 512],
            )
            for i in range(0, len(users), 512)
        ]
    )
    return build_requests(
        data,
        users,
        emb,
        lambda ue, excl, n: bundle.retrieve(ue, n, excl),
        item_emb=bundle.item_embeddings,
        history_splits=hist_splits,
        target=target,
        n_candidates=n_candidates,
        ease_items=ranker.ease_items,
        ease_l2=ranker.ease_l2,
        cooccurrence=ranker.cooccurrence,
        cohorts=ranker.cohorts,
        cohort_min_users=ranker.cohort_min_users,
        now=now,
        activity_at=activity_at,
    )


def evaluate_bundle(
    path: Path,
    *,
    split: str = "test",
    history: str = "all",
    max_users: int = 0,
    seed: int = 0,
    data: Interactions | None = None,
) -> dict[str, Any]:
    """Two-stage, retrieval-only and popularity metrics of the bundle at ``path``."""
    if split not in ("valid", "test"):
        raise TailoredError(f"split: valid or test, not {split!r}")
    bundle = LoadedBundle.load(Path(path))
    _check_unseen(bundle, split)
    cfg = from_dict(bundle.manifest.config, where=f"{bundle.manifest.path}/manifest.json config")
    data = data if data is not None else load_data(cfg)
    _check_same_data(bundle, data)
    target, seen, hist_splits, users = eval_plan(data, split, history, max_users, seed)
    n_cand = max(cfg.ranker.candidates, max(KS))
    req = two_stage_requests(bundle, data, users, hist_splits, target, n_cand, cfg.ranker)
    if hist_splits != seen:  # train-only history: valid items are still not recommended
        _drop(req, UserHistory.of(data, (VALID,)), users)
    k = max(KS)
    ranked = rank_requests(bundle, data, req, k)
    retrieval = rerank(
        -np.arange(n_cand, dtype=np.float32)[None, :].repeat(len(users), 0), req.candidates, k
    )
    pop = data.item_popularity((TRAIN,))[1:]
    pop_top = topk_shared(popularity_scores(pop), user_csr(data, seen, users), k)
    relevant = user_csr(data, (target,), users)
    per_user = per_user_metrics(ranked, relevant, KS)
    return {
        "bundle": str(bundle.manifest.path),
        "version": bundle.version,
        "split": split,
        "history": history,
        "users": len(users),
        "items": data.n_items,
        "candidates": n_cand,
        "ranker": bundle.ranker is not None,
        "metrics": aggregate_metrics(ranked, relevant, KS, pop, data.n_items),
        "retrieval": aggregate_metrics(retrieval, relevant, KS, pop, data.n_items),
        "popularity": aggregate_metrics(pop_top, relevant, KS, pop, data.n_items),
        "groups": grouped_metrics(
            {k2: per_user[k2] for k2 in ("ndcg@10", "recall@10")},
            {**user_groups(data, users), **_segment_groups(bundle, users)},
        ),
    }


def _segment_groups(bundle: LoadedBundle, users: np.ndarray) -> dict[str, np.ndarray]:
    """Each evaluated user's segment ("segment 3"), when the bundle has segments (its user
    rows are the dataset's, checked by _check_same_data)."""
    path = bundle.manifest.path / BUNDLE_FILES["user_segments"]
    if not path.is_file():
        return {}
    labels = load_npy(path)
    return {"segment": np.asarray([f"segment {s}" for s in labels[users].tolist()], dtype=object)}


def _drop(req: Requests, history: UserHistory, users: np.ndarray) -> None:
    """Zero the candidates of each request that are in its user's ``history``."""
    for row, u in enumerate(users):
        items = history.items[history.offsets[u] : history.offsets[u + 1]]
        req.candidates[row, np.isin(req.candidates[row], items)] = 0


def rank_requests(bundle: LoadedBundle, data: Interactions, req: Requests, k: int) -> np.ndarray:
    """The ranker's top ``k`` of each request's candidates (see :func:`rerank`)."""
    return np.concatenate(
        [
            rerank(
                bundle.rank(
                    users=data.users.take(r.users),
                    context=np.zeros((len(r.users), data.context.shape[1]), np.int64),
                    candidates=r.candidates,
                    dense=r.dense,
                    user_emb=r.user_emb,
                ),
                r.candidates,
                k,
            )
            for r in req.batches(256)
        ]
    )
