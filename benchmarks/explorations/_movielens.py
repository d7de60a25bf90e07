"""MovieLens-100k's events for the one-off explorations of split (a) (RecBole's per-user
80/10/10 by time): users and items numbered from 0, times, and each event's split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tailored.data.movielens import fetch_movielens_100k
from tailored.data.splits import user_temporal_split

__all__ = ["split_a_events"]


def split_a_events(dataset: Path | None = None) -> tuple[np.ndarray, ...]:
    """(user, item, timestamp, split) int arrays [E] of a converted MovieLens-100k at
    ``dataset`` (default: fetched); users and items 0-based in id order, split 0/1/2."""
    dataset = dataset or fetch_movielens_100k()
    t = pq.read_table(dataset / "events.parquet", columns=["user_id", "item_id", "timestamp"])
    user = np.unique(t["user_id"].to_numpy(zero_copy_only=False), return_inverse=True)[1]
    item = np.unique(t["item_id"].to_numpy(zero_copy_only=False), return_inverse=True)[1]
    ts = t["timestamp"].cast("int64").to_numpy()
    return user, item, ts, user_temporal_split(user, ts)
