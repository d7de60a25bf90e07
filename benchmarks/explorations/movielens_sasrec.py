"""Another model class on MovieLens-100k: SASRec trained with cross-entropy over the whole
catalogue, against the project's two towers, for issue 20 (two-stage NDCG@10 0.23).

SASRec (Kang and McAuley 2018) reads a user's item ids in order with causal self-attention
and scores the next item against every item's embedding; trained with a softmax over the
whole catalogue rather than sampled negatives it is among the strongest next-item models
(Klenitskiy and Vasilev 2023). Here it reads item ids alone (no metadata, no profile), is
trained on each user's training ratings (a random window of ``--length`` + 1 of them an
epoch), stopped early on validation NDCG@10, and scored as every MovieLens figure of the
project is: split (a), the request when the test period begins, the history the training
and validation ratings, those items excluded, full ranking over the 1,682 movies.

    python -m benchmarks.explorations.movielens_sasrec [--seeds 0 1] [--dim 64] ...

JSON to ``benchmarks/results/movielens_sasrec.json`` (atomically).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from benchmarks.explorations._movielens import ndcg_at_10, requests, split_a_events
from tailored.paths import write_json_atomic

__all__ = ["SasRec", "main"]

OUT = RESULTS / "movielens_sasrec.json"


class SasRec(nn.Module):
    """Causal self-attention over item ids (0: padding), scored against the id embeddings."""

    def __init__(self, n_items: int, dim: int, length: int, blocks: int, dropout: float) -> None:
        super().__init__()
        self.heads = 2 if dim >= 64 else 1
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.positions = nn.Embedding(length, dim)
        nn.init.normal_(self.items.weight, std=0.05)
        nn.init.normal_(self.positions.weight, std=0.05)
        layer = nn.TransformerEncoderLayer(
            dim, self.heads, dim, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """States [B, T, D] of left-padded item rows ``x`` int64 [B, T]."""
        t = x.shape[1]
        h = self.dropout(self.items(x) + self.positions(torch.arange(t)[None]))
        future = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
        # a padding position attends to itself only, so that no row of the softmax is empty
        pad = (x == 0)[:, None, :] & ~torch.eye(t, dtype=torch.bool)[None]
        mask = (future[None] | pad).repeat_interleave(self.heads, 0)
        return self.norm(self.encoder(h, mask=mask))

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        return states @ self.items.weight.T


def _left_padded(items: np.ndarray, length: int) -> np.ndarray:
    items = items[-length:]
    return np.r_[np.zeros(length - len(items), dtype=np.int64), items]


def run(seed: int, a: argparse.Namespace, events: tuple[np.ndarray, ...]) -> dict[str, Any]:
    """One seed's training and its validation and test NDCG@10."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    user, item, ts, split = events
    order = np.lexsort((ts, user))
    users = np.unique(user)
    ends = np.asarray(np.searchsorted(user[order], np.r_[users, users[-1] + 1]))
    bounds = [int(ends[i]) for i in range(len(users) + 1)]
    items_s, split_s = item[order] + 1, split[order]
    seqs = [(items_s[lo:hi], split_s[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
    model = SasRec(int(item.max()) + 1, a.dim, a.length, a.blocks, a.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)

    # each split's requests, built once: the history read, the items excluded and relevant
    asked = {}
    for target in (1, 2):
        hist = [_left_padded(x[s < target], a.length) for x, s in seqs if (s == target).any()]
        asked[target] = (torch.from_numpy(np.stack(hist)), *requests(user, item, split, target)[1:])

    def scored(target: int) -> tuple[float, int]:
        x, exclude, relevant = asked[target]
        model.eval()
        with torch.no_grad():
            scores = model.logits(model(x)[:, -1])[:, 1:]
        model.train()
        return ndcg_at_10(scores.numpy(), exclude, relevant), len(x)

    best, best_epoch, state, start = -1.0, 0, model.state_dict(), time.perf_counter()
    for epoch in range(a.max_epochs):
        rows = []
        for items, s in seqs:
            train = items[s == 0]
            if len(train) > a.length + 1:
                first = int(rng.integers(0, len(train) - a.length))
                train = train[first : first + a.length + 1]
            if len(train) >= 2:
                rows.append((_left_padded(train[:-1], a.length), _left_padded(train[1:], a.length)))
        perm = rng.permutation(len(rows))
        for lo in range(0, len(rows), a.batch):
            batch = [rows[i] for i in perm[lo : lo + a.batch]]
            x = torch.from_numpy(np.stack([b[0] for b in batch]))
            y = torch.from_numpy(np.stack([b[1] for b in batch]))
            loss = F.cross_entropy(model.logits(model(x)[y > 0]), y[y > 0])
            opt.zero_grad()
            loss.backward()
            opt.step()
        valid, _ = scored(1)
        if valid > best:
            best, best_epoch = valid, epoch
            state = {k: v.clone() for k, v in model.state_dict().items()}
        elif epoch - best_epoch >= a.patience:
            break
    model.load_state_dict(state)
    test, n_users = scored(2)
    out = {
        "seed": seed,
        "valid_ndcg@10": round(best, 4),
        "test_ndcg@10": round(test, 4),
        "test_users": n_users,
        "best_epoch": best_epoch + 1,
        "epochs": epoch + 1,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(out, flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, help="a converted MovieLens-100k (default: fetch)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--length", type=int, default=200, help="the most recent ratings read")
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=64, help="users a step")
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    events = split_a_events(a.dataset)
    runs = [run(seed, a, events) for seed in a.seeds]
    settings = {k: v for k, v in vars(a).items() if k not in ("dataset", "out", "seeds")}
    result: dict[str, Any] = {
        "benchmark": "movielens_sasrec",
        "machine": machine(),
        "settings": settings,
        "runs": runs,
        "test_ndcg@10_mean": round(sum(r["test_ndcg@10"] for r in runs) / len(runs), 4),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out, result)
    return result


if __name__ == "__main__":
    main()
