"""``tailored evaluate``: full-ranking offline evaluation of a run, beside a popularity
baseline scored the same way, with a breakdown by user group.

Every item is ranked for every evaluated user; the user's training items (and validation
items, when testing) are masked, as in RecBole's full-sort evaluation. The user tower reads
the user's history up to the evaluated period (``history="all"``: training and, for the test
split, validation items — what a live system knows) or the training split only
(``history="train"``: what RecBole's models see, for a like-for-like comparison).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tailored.data.interactions import Interactions
from tailored.data.splits import TEST, TRAIN, VALID
from tailored.errors import TailoredError
from tailored.train.metrics import (
    Csr,
    activity_bands,
    age_bands,
    aggregate_metrics,
    grouped_metrics,
    per_user_metrics,
    popularity_scores,
    topk_from_scores,
    topk_shared,
)
from tailored.train.runs import LoadedRun, load_run
from tailored.train.two_tower.data import TwoTowerDataModule

__all__ = [
    "KS",
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
    data: Interactions, split: str, history: str, max_users: int, seed: int
) -> tuple[int, tuple[int, ...], tuple[int, ...], np.ndarray]:
    """What an evaluation of ``split`` ranks for: (target split, splits whose items are
    masked, splits the user tower reads, the users with target events, at most
    ``max_users`` of them sampled with ``seed``)."""
    target = TEST if split == "test" else VALID
    seen = (TRAIN, VALID) if target == TEST else (TRAIN,)
    hist_splits = seen if history == "all" else (TRAIN,)
    users = np.unique(data.user[data.split == target])
    if max_users and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    if not len(users):
        raise TailoredError(f"no user has {split} events")
    return target, seen, hist_splits, users


def user_csr(hist: list[np.ndarray], users: np.ndarray) -> Csr:
    """The lists of ``users`` (per-user 1-based item lists) as 0-based item rows."""
    # model items are 1-based; metrics count items from 0
    return Csr.from_lists([hist[u] - 1 for u in users])


@torch.no_grad()
def evaluate(
    run: LoadedRun,
    *,
    split: str = "test",
    history: str = "all",
    max_users: int = 0,
    seed: int = 0,
    batch_users: int = 1024,
) -> dict[str, Any]:
    """Metrics of the model and of the popularity baseline on ``split`` (see module doc)."""
    data, model, m = run.data, run.model, run.cfg.model
    # a batch's [users, items] score matrix stays under about 1 GiB of float32
    batch_users = max(1, min(batch_users, (1 << 28) // max(1, data.n_items)))
    target, seen, hist_splits, users = eval_plan(data, split, history, max_users, seed)
    dm = TwoTowerDataModule(
        data, history_length=m.history_length, batch_size=1, user_id_buckets=m.user_id_buckets
    )
    item_emb = model.all_item_embeddings()[1:]  # metrics count items from 0
    k = max(KS)
    topk = np.empty((len(users), min(k, data.n_items)), np.int64)
    seen_lists = data.per_user(seen)
    pop = data.item_popularity((TRAIN,))[1:]
    pop_scores = popularity_scores(pop)
    pop_topk = np.empty_like(topk)
    row = 0
    for b in dm.eval_loader(
        users,
        history_splits=hist_splits,
        target=target,
        exclude_splits=seen,
        batch_size=batch_users,
    ):
        u = b.users.numpy()
        user_emb = model.user_embeddings(b.user_hash, b.user_cat, b.user_num, b.context, b.history)
        scores = (user_emb @ item_emb.T).numpy()
        excl = user_csr(seen_lists, u)
        topk[row : row + len(u)] = topk_from_scores(scores, excl, k)
        pop_topk[row : row + len(u)] = topk_shared(pop_scores, excl, k)
        row += len(u)
    relevant = user_csr(data.per_user((target,)), users)
    model_metrics = aggregate_metrics(topk, relevant, KS, pop, data.n_items)
    pop_metrics = aggregate_metrics(pop_topk, relevant, KS, pop, data.n_items)
    groups = user_groups(data, users)
    per_user = per_user_metrics(topk, relevant, KS)
    return {
        "split": split,
        "history": history,
        "users": len(users),
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
