"""Checking what a model learned against the planted tastes of a synthetic dataset.

For each sampled user, the model's top-k (their training and validation items excluded) is
compared with the true top-k by planted affinity at the end of the time span (the same items
excluded): recall@k against the truth, ``|model ∩ truth| / k``, averaged over users. The
popularity baseline is scored the same way in the same call, so the figure is a comparison.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tailored.data.splits import TEST, TRAIN, VALID
from tailored.data.synth_truth import load_truth, true_topk
from tailored.train.evaluate import device_topk
from tailored.train.metrics import Csr, popularity_scores, topk_shared
from tailored.train.runs import LoadedRun
from tailored.train.two_tower.data import TwoTowerDataModule

__all__ = ["planted_truth_recall"]


@torch.no_grad()
def planted_truth_recall(
    run: LoadedRun, dataset: Path, *, users: int = 5000, k: int = 10, seed: int = 0
) -> dict[str, float]:
    """Recall@k of the model's and of popularity's top-k against the planted top-k.

    Returns ``{"model": float, "popularity": float, "users": int}``.
    """
    data, model, m = run.data, run.model, run.cfg.model
    truth = load_truth(Path(dataset))
    candidates = np.unique(data.user[data.split == TEST])
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(candidates, min(users, len(candidates)), replace=False))
    seen = data.per_user((TRAIN, VALID))
    exclude = [seen[u] - 1 for u in chosen]  # metrics and truth count items from 0
    truth_top = true_topk(truth, chosen, k, exclude=exclude)
    dm = TwoTowerDataModule(
        data, history_length=m.history_length, batch_size=1, user_id_buckets=m.user_id_buckets
    )
    items = model.all_item_embeddings()[1:]  # metrics and truth count items from 0
    device = items.device
    tops = []
    for b in dm.eval_loader(chosen, history_splits=(TRAIN, VALID), target=TEST, batch_size=512):
        b = b.to(device)
        u = model.user_embeddings(b.user_hash, b.user_cat, b.user_num, b.context, b.history)
        scores = u @ items.T
        if bool(scores.isnan().any()):
            raise ValueError("the model scored NaN for some user: its weights are damaged")
        tops.append(device_topk(scores, b.exclude - 1, k))  # 1-based, 0-padded
    model_top = torch.cat(tops).cpu().numpy()
    pop = popularity_scores(data.item_popularity((TRAIN,))[1:])
    pop_top = topk_shared(pop, Csr.from_lists(exclude), k)

    def overlap(top: np.ndarray) -> float:
        hits = [len(set(a.tolist()) & set(b.tolist())) for a, b in zip(top, truth_top, strict=True)]
        return float(np.mean(hits)) / k

    return {
        "model": overlap(model_top),
        "popularity": overlap(pop_top),
        "users": float(len(chosen)),
    }
