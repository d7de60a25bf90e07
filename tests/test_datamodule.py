"""What the model is shown: training histories never include the target or anything later,
and evaluation masks and targets the right items (real MovieLens-100k, checked against a
direct computation from the split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tailored.data.interactions import Interactions, PositiveRule, load_interactions
from tailored.data.splits import TEST, TRAIN, VALID
from tailored.train.datamodule import TwoTowerDataModule

L = 5


@pytest.fixture(scope="module")
def data(movielens_dir: Path) -> Interactions:
    return load_interactions(movielens_dir, PositiveRule({"rating": 1.0}))


def _items(data: Interactions, user: int, splits: tuple[int, ...]) -> list[int]:
    sl = slice(data.offsets[user], data.offsets[user + 1])
    return [int(i) for i, s in zip(data.item[sl], data.split[sl], strict=True) if s in splits]


def test_training_history_is_the_events_just_before_the_target(data: Interactions) -> None:
    dm = TwoTowerDataModule(data, history_length=L, batch_size=64, mask_user_positives=True)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(dm.train_item), 64, replace=False)
    batch = dm._collate_train(idx.tolist())
    for row, j in enumerate(idx):
        user = int(dm.train_user[j])
        train_items = _items(data, user, (TRAIN,))
        first = int(data.offsets[user])  # train events come first in each user's block
        position = int(j) - int(dm.train_history.offsets[user])
        assert batch.item[row] == train_items[position]
        expected = train_items[max(0, position - L) : position]
        history = [int(i) for i in batch.history[row] if i > 0]
        assert history == expected, (user, first)
    # another in-batch positive of the same user is marked, the row's own one too
    assert batch.positive_mask is not None
    assert bool(batch.positive_mask.diagonal().all())


def test_a_target_window_only_moves_the_history_back(data: Interactions) -> None:
    dm = TwoTowerDataModule(data, history_length=L, batch_size=64, target_window=4)
    idx = list(range(100, 164))
    batch = dm._collate_train(idx)
    for row, j in enumerate(idx):
        user = int(dm.train_user[j])
        train_items = _items(data, user, (TRAIN,))
        position = j - int(dm.train_history.offsets[user])
        history = [int(i) for i in batch.history[row] if i > 0]
        # the history is a contiguous run of earlier items ending 1-4 events before j
        ends = [
            e
            for e in range(max(0, position - 3), position + 1)
            if train_items[max(0, e - L) : e] == history
        ]
        assert ends, (user, position, history)


@pytest.mark.parametrize(("history", "hist_splits"), [("all", (TRAIN, VALID)), ("train", (TRAIN,))])
def test_test_evaluation_masks_train_and_valid_items(
    data: Interactions, history: str, hist_splits: tuple[int, ...]
) -> None:
    dm = TwoTowerDataModule(data, history_length=L, batch_size=1)
    users = np.array([0, 5, 42, 900])
    loader = dm.eval_loader(
        users, history_splits=hist_splits, target=TEST, exclude_splits=(TRAIN, VALID)
    )
    batch = next(iter(loader))
    for row, user in enumerate(users):
        seen = _items(data, int(user), (TRAIN, VALID))
        assert sorted(int(i) for i in batch.exclude[row] if i > 0) == sorted(seen)
        assert sorted(int(i) for i in batch.relevant[row] if i > 0) == sorted(
            _items(data, int(user), (TEST,))
        )
        assert [int(i) for i in batch.history[row] if i > 0] == _items(
            data, int(user), hist_splits
        )[-L:]
