"""``tailored evaluate``: full-ranking offline evaluation of a run, beside a popularity
baseline scored the same way, with a breakdown by user group.

Every item is ranked for every evaluated user; the user's training items (and validation
items, when testing) are masked, as in RecBole's full-sort evaluation. The user tower reads
the user's history up to the evaluated period (``history="all"``: training and, for the test
split, validation items — what a live system knows) or the training split only
(``history="train"``: what RecBole's models see, for a like-for-like comparison).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tailored.data.interactions import Interactions
from tailored.data.splits import TEST, TRAIN, VALID
from tailored.errors import TailoredError
from tailored.train.distributed import Ranks, sample_users
from tailored.train.metrics import (
    Csr,
    activity_bands,
    age_bands,
    aggregate_metrics,
    grouped_metrics,
    per_user_metrics,
    popularity_scores,
    topk_shared,
)
from tailored.train.runs import LoadedRun, load_run
from tailored.train.two_tower.data import TwoTowerDataModule

__all__ = [
    "KS",
    "device_topk",
    "eval_plan",
    "evaluate",
    "evaluate_run",
    "format_report",
    "user_csr",
    "user_groups",
]

KS = (10, 20)


def evaluate_run(
    run_dir: Path, *, split: str = "test", history: str = "all", max_users: int = 0, seed: int = 0
) -> dict[str, Any]:
    run = load_run(run_dir)
    report = evaluate(run, split=split, history=history, max_users=max_users, seed=seed)
    report["run"] = str(run_dir)
    return report


def eval_plan(
    data: Interactions,
    split: str,
    history: str,
    max_users: int,
    seed: int,
    ranks: Ranks | None = None,
) -> tuple[int, tuple[int, ...], tuple[int, ...], np.ndarray]:
    """What an evaluation of ``split`` ranks for: (target split, splits whose items are
    masked, splits the user tower reads, the users with target events, at most
    ``max_users`` of them sampled with ``seed``; under DDP this rank's part of the sample)."""
    target = TEST if split == "test" else VALID
    seen = (TRAIN, VALID) if target == TEST else (TRAIN,)
    hist_splits = seen if history == "all" else (TRAIN,)
    users = np.unique(data.user[data.split == target])
    if not (ranks or Ranks()).max(len(users)):  # under DDP: no rank's user
        raise TailoredError(f"no user has {split} events")
    users = sample_users(users, max_users, seed, ranks)
    return target, seen, hist_splits, users


def device_topk(scores: Tensor, exclude: Tensor, k: int) -> Tensor:
    """:func:`~tailored.train.metrics.topk_from_scores` on the scores' device: each row's
    ``k`` highest-scoring items (0-based) by descending score, ties by lower item index,
    items in ``exclude`` (int64 [B, X], 0-based, -1 padding) or scored -inf left out and
    their slots -1. ``scores`` float [B, N] is modified (the exclusions are written in).

    ``topk`` finds the k best; where more than k items tie at the cut (rare with learned
    scores; rows with fewer than k available items), the row is sorted in full, stably, so
    the result is exactly the numpy function's."""
    n = scores.shape[1]
    k = min(k, n)
    # -inf at each excluded item; the padding's +inf changes nothing under "amin"
    fill = torch.where(exclude >= 0, -math.inf, math.inf).to(scores.dtype)
    scores.scatter_reduce_(1, exclude.clamp_min(0), fill, reduce="amin")
    values, index = scores.topk(k, dim=1)
    # within the k: by descending score, ties by lower index (a stable sort on a sorted key)
    by_index = index.argsort(dim=1)
    index, values = index.gather(1, by_index), values.gather(1, by_index)
    by_value = values.sort(dim=1, descending=True, stable=True).indices
    index, values = index.gather(1, by_value), values.gather(1, by_value)
    tied = (scores >= values[:, -1:]).sum(1) > k
    if bool(tied.any()):  # one boolean per block
        rows = torch.nonzero(tied).squeeze(1)
        full = scores[rows].sort(dim=1, descending=True, stable=True)
        index[rows], values[rows] = full.indices[:, :k], full.values[:, :k]
    return index.masked_fill_(values == -math.inf, -1)


def user_csr(data: Interactions, splits: tuple[int, ...], users: np.ndarray) -> Csr:
    """``users``' items in ``splits`` (time-ordered) as rows of 0-based item indices."""
    indptr, items = data.items_of(users, splits)
    # model items are 1-based; metrics count items from 0
    return Csr(indptr, items.astype(np.int64) - 1)


@torch.no_grad()
def evaluate(
    run: LoadedRun,
    *,
    split: str = "test",
    history: str = "all",
    max_users: int = 0,
    seed: int = 0,
    batch_users: int = 1024,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Metrics of the model and of the popularity baseline on ``split`` (see module doc).
    Under DDP (``ranks``; ``run.data`` the rank's shard) every rank calls it: each ranks its
    own part of the users one process would evaluate, and every rank returns the report of
    them all."""
    ranks = ranks or Ranks()
    data, model, m = run.data, run.model, run.cfg.model
    # a batch's [users, items] score matrix stays under about 1 GiB of float32
    batch_users = max(1, min(batch_users, (1 << 28) // max(1, data.n_items)))
    target, seen, hist_splits, users = eval_plan(data, split, history, max_users, seed, ranks)
    dm = TwoTowerDataModule(
        data, history_length=m.history_length, batch_size=1, user_id_buckets=m.user_id_buckets
    )
    item_emb = model.all_item_embeddings()[1:]  # metrics count items from 0
    device = item_emb.device
    k = max(KS)
    # every block is scored and ranked on the model's device; the top-k lists come back once
    topk_dev = torch.empty((len(users), min(k, data.n_items)), dtype=torch.long, device=device)
    nan = torch.zeros((), dtype=torch.bool, device=device)
    pop = data.item_popularity((TRAIN,))[1:]
    row = 0
    for b in dm.eval_loader(
        users,
        history_splits=hist_splits,
        target=target,
        exclude_splits=seen,
        batch_size=batch_users,
    ):
        b = b.to(device)
        user_emb = model.user_embeddings(b.user_hash, b.user_cat, b.user_num, b.context, b.history)
        scores = user_emb @ item_emb.T
        nan |= scores.isnan().any()
        exclude = b.exclude - 1  # 1-based, 0-padded -> 0-based, -1 padded
        topk_dev[row : row + len(b.users)] = device_topk(scores, exclude, k)
        row += len(b.users)
    if ranks.any(bool(nan)):  # every rank raises, not only the one that saw it
        raise TailoredError("the model scored NaN for some user: its weights are damaged")
    topk = topk_dev.cpu().numpy()
    pop_topk = topk_shared(popularity_scores(pop), user_csr(data, seen, users), k)
    relevant = user_csr(data, (target,), users)
    groups = user_groups(data, users)
    if ranks.world > 1:  # every rank's users, in rank order
        parts = ranks.gather((topk, pop_topk, relevant, groups))
        topk = np.concatenate([p[0] for p in parts])
        pop_topk = np.concatenate([p[1] for p in parts])
        relevant = Csr.stacked([p[2] for p in parts])
        groups = {g: np.concatenate([p[3][g] for p in parts]) for g in groups}
    model_metrics = aggregate_metrics(topk, relevant, KS, pop, data.n_items)
    pop_metrics = aggregate_metrics(pop_topk, relevant, KS, pop, data.n_items)
    per_user = per_user_metrics(topk, relevant, KS)
    return {
        "split": split,
        "history": history,
        "users": len(topk),
        "items": data.n_items,
        "metrics": model_metrics,
        "popularity": pop_metrics,
        "groups": grouped_metrics({k2: per_user[k2] for k2 in ("ndcg@10", "recall@10")}, groups),
    }


def user_groups(data: Interactions, users: np.ndarray) -> dict[str, np.ndarray]:
    """Each of ``users``' group per breakdown: activity band, gender, age band."""
    out: dict[str, np.ndarray] = {}
    n_train = np.bincount(data.user[data.split == TRAIN], minlength=data.n_users)
    out["activity"] = activity_bands(n_train[users])
    enc = data.user_encoder
    if "gender" in enc.categorical:
        j = enc.categorical.index("gender")
        vocab = ["unknown", *enc.vocabs["gender"]]
        out["gender"] = np.asarray(vocab, dtype=object)[data.users.categorical[users, j]]
    if "age" in data.user_numeric_raw:
        out["age"] = age_bands(data.user_numeric_raw["age"][users])
    return out


def _band_order(label: str) -> tuple[int, float, str]:
    """Bands in numeric order ("<20", "20-49", ..., ">=200"), other labels after, by name."""
    m = re.search(r"\d+", label)
    if m is None:
        return (1, 0.0, label)
    return (0, int(m.group()) - (0.5 if label.startswith("<") else 0.0), label)


def format_report(report: dict[str, Any]) -> str:
    """A readable table: the model (the two-stage system, for a bundle), retrieval alone when
    reported, and popularity; then the per-group breakdown of the model."""
    names = list(report["metrics"])
    columns = [("model", report["metrics"])]
    if "retrieval" in report:
        columns = [("two-stage", report["metrics"]), ("retrieval", report["retrieval"])]
    columns.append(("popularity", report["popularity"]))
    where = f" from bundle {report['version']}" if "version" in report else ""
    lines = [
        f"{report['split']} split, {report['users']} users, {report['items']} items "
        f"(history: {report['history']}){where}",
        "",
        f"{'metric':<22}" + "".join(f"{name:>12}" for name, _ in columns),
    ]
    lines += [f"{n:<22}" + "".join(f"{values[n]:>12.4f}" for _, values in columns) for n in names]
    for grouping, labels in report.get("groups", {}).items():
        lines += [
            "",
            f"by {grouping}:",
            f"  {'group':<12}{'users':>7}{'ndcg@10':>10}{'recall@10':>11}",
        ]
        for label in sorted(labels, key=_band_order):
            vals = labels[label]
            lines.append(
                f"  {label:<12}{int(vals['users']):>7}{vals['ndcg@10']:>10.4f}"
                f"{vals['recall@10']:>11.4f}"
            )
    return "\n".join(lines)
