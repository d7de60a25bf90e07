"""The real MovieLens-100k, fetched and converted by the project."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tailored.data.interactions import PositiveRule, load_interactions
from tailored.data.pseudonym import Pseudonymizer
from tailored.data.schema import read_dataset_meta
from tailored.data.splits import TEST, TRAIN, VALID
from tests.helpers import TEST_KEY


def test_counts_and_fields(movielens_dir: Path) -> None:
    meta = read_dataset_meta(movielens_dir)
    assert meta.counts == {"users": 943, "items": 1682, "events": 100000}
    items = pq.read_table(movielens_dir / "items.parquet").to_pylist()
    toy = next(i for i in items if i["item_id"] == "1")
    assert toy["title"] == "Toy Story" and toy["year"] == 1995.0
    assert toy["genres"] == ["Animation", "Children's", "Comedy"]
    users = pq.read_table(movielens_dir / "users.parquet")
    assert set(users.column("gender").to_pylist()) == {"F", "M"}


def test_user_ids_are_pseudonymized(movielens_dir: Path) -> None:
    users = pq.read_table(movielens_dir / "users.parquet").column("user_id").to_pylist()
    events = set(pq.read_table(movielens_dir / "events.parquet").column("user_id").to_pylist())
    p = Pseudonymizer(TEST_KEY)
    assert users[0] == p("1") and users[-1] == p("943")
    assert events == set(users)
    assert not {str(i) for i in range(1, 944)} & set(users)


def test_recbole_split_of_movielens(movielens_dir: Path) -> None:
    data = load_interactions(movielens_dir, PositiveRule.weighted({"rating": 1.0}))
    counts = np.bincount(data.user, minlength=data.n_users)
    assert counts.min() >= 20  # every MovieLens-100k user rated at least 20 movies
    for u in range(0, data.n_users, 97):
        sl = slice(data.offsets[u], data.offsets[u + 1])
        labels, ts = data.split[sl], data.timestamp[sl]
        n = len(labels)
        assert (np.diff(ts) >= 0).all()  # time-ordered
        assert (labels == TEST).sum() == int(0.1 * n) == (labels == VALID).sum()
        # train, then valid, then test, in time
        assert list(labels) == sorted(labels)
        assert (labels[: n - 2 * int(0.1 * n)] == TRAIN).all()
