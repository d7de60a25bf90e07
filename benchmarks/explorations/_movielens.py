"""MovieLens-100k's events for the one-off explorations of split (a) (RecBole's per-user
80/10/10 by time): users and items numbered from 0, times, and each event's split; the
requests of a split and their NDCG@10, as every MovieLens figure of the project scores them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tailored.data.movielens import fetch_movielens_100k
from tailored.data.splits import user_temporal_split
from tailored.train.metrics import Csr, per_user_metrics, topk_from_scores

__all__ = ["ndcg_at_10", "requests", "split_a_events"]


def split_a_events(dataset: Path | None = None) -> tuple[np.ndarray, ...]:
    """(user, item, timestamp, split) int arrays [E] of a converted MovieLens-100k at
    ``dataset`` (default: fetched); users and items 0-based in id order, split 0/1/2."""
    dataset = dataset or fetch_movielens_100k()
    t = pq.read_table(dataset / "events.parquet", columns=["user_id", "item_id", "timestamp"])
    user = np.unique(t["user_id"].to_numpy(zero_copy_only=False), return_inverse=True)[1]
    item = np.unique(t["item_id"].to_numpy(zero_copy_only=False), return_inverse=True)[1]
    ts = t["timestamp"].cast("int64").to_numpy()
    return user, item, ts, user_temporal_split(user, ts)


def requests(
    user: np.ndarray, item: np.ndarray, split: np.ndarray, target: int = 2
) -> tuple[np.ndarray, Csr, Csr]:
    """The users with an event in split ``target`` (sorted), and for each, the items of
    their earlier splits (excluded from ranking) and of ``target`` (relevant), as ``Csr``."""
    users = np.unique(user[split == target])
    exclude = Csr.from_lists([np.unique(item[(user == u) & (split < target)]) for u in users])
    relevant = Csr.from_lists([np.unique(item[(user == u) & (split == target)]) for u in users])
    return users, exclude, relevant


def ndcg_at_10(scores: np.ndarray, exclude: Csr, relevant: Csr) -> float:
    """Mean NDCG@10 of ranking every item by ``scores`` float [U, N], ``exclude`` left out."""
    top = topk_from_scores(scores, exclude, 10)
    return float(per_user_metrics(top, relevant, [10])["ndcg@10"].mean())
