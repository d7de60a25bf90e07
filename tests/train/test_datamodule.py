"""What the model is shown: training histories never include the target or anything later,
and evaluation masks and targets the right items (real MovieLens-100k, checked against a
direct computation from the split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tailored.data.interactions import Interactions, PositiveRule, load_interactions
from tailored.data.splits import TEST, TRAIN, VALID
from tailored.train.two_tower.data import TwoTowerDataModule, sequence_chunks

L = 5


@pytest.fixture(scope="module")
def data(movielens_dir: Path) -> Interactions:
    return load_interactions(movielens_dir, PositiveRule.weighted({"rating": 1.0}))


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
    # exactly the off-diagonal cells whose column item is a training positive of the row's
    # user are no negatives (a repeat of the row's own item included)
    assert batch.not_negatives is not None
    cells = {
        (r, c)
        for r, j in enumerate(idx)
        for c in range(len(idx))
        if c != r and int(batch.item[c]) in set(_items(data, int(dm.train_user[j]), (TRAIN,)))
    }
    assert cells
    assert set(map(tuple, batch.not_negatives.T.tolist())) == cells


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


def test_sequence_chunks_cover_every_target_once() -> None:
    # users of 1, 2 and 12 events: a user's first event is never a target; with length 4
    # and a first chunk of f targets the 12-event user's 11 targets split f, 4, 4, rest
    offsets = np.array([0, 1, 3, 15])
    for seed in range(5):
        first, end = sequence_chunks(offsets, 4, np.random.default_rng(seed))
        targets = np.concatenate([np.arange(f, e) for f, e in zip(first, end, strict=True)])
        assert sorted(targets.tolist()) == [2, *range(4, 15)]
        assert ((end - first >= 1) & (end - first <= 4)).all()
        assert ((first >= 1) & (first[:, None] != np.array([0, 1, 3])).all()).all()


@pytest.mark.parametrize("targets_per_chunk", [0, 2])
def test_a_sequence_batch_pairs_each_item_with_the_next(
    data: Interactions, targets_per_chunk: int
) -> None:
    dm = TwoTowerDataModule(
        data,
        history_length=L,
        batch_size=16,
        mask_user_positives=True,
        sequences=True,
        sequence_targets=targets_per_chunk,
    )
    loader = dm.train_dataloader()
    first, end = dm._chunks
    assert int((end - first).sum()) == len(dm.train_item) - len(np.unique(dm.train_user))
    assert int((end - first).max()) == (targets_per_chunk or L)
    batch = dm._collate_sequences(list(range(16)))
    for row in range(16):
        user = int(dm.train_user[first[row]])
        train_items = _items(data, user, (TRAIN,))
        at = int(first[row]) - int(dm.train_history.offsets[user])  # first target's position
        stop = int(end[row]) - int(dm.train_history.offsets[user])
        # the window: the L items before the chunk's last target, as far back as there are
        window = train_items[max(0, stop - 1 - L) : stop - 1]
        n = len(window)
        assert batch.items[row, :n].tolist() == window
        assert not batch.items[row, n:].any()
        # the targets: the next item, from the chunk's first target on
        expected = [
            train_items[p + 1] if p + 1 >= at else 0 for p in range(max(0, stop - 1 - L), stop - 1)
        ]
        assert batch.targets[row, :n].tolist() == expected
        assert not batch.targets[row, n:].any()
    # the loss's rows and columns are the scored targets, row-major: a cell is no negative
    # exactly where the column's target is a training positive of the row's user
    assert batch.not_negatives is not None
    own = torch.repeat_interleave(torch.arange(16), (batch.targets > 0).sum(1))
    scored = batch.targets[batch.targets > 0]
    positives = [set(_items(data, int(dm.train_user[first[r]]), (TRAIN,))) for r in range(16)]
    cells = {
        (a, b)
        for a in range(len(own))
        for b in range(len(own))
        if a != b and int(scored[b]) in positives[int(own[a])]
    }
    assert {
        (a, b) for a in range(len(own)) for b in range(len(own)) if a != b and own[a] == own[b]
    } <= cells
    assert set(map(tuple, batch.not_negatives.T.tolist())) == cells
    assert len(loader) >= 1


def test_a_sequence_batch_with_a_target_window_scores_one_of_the_next_items(
    data: Interactions,
) -> None:
    w = 4
    dm = TwoTowerDataModule(data, history_length=L, batch_size=64, sequences=True, target_window=w)
    dm.train_dataloader()
    first, end = dm._chunks
    batch = dm._collate_sequences(list(range(64)))
    ahead = []
    for row in range(64):
        user = int(dm.train_user[first[row]])
        train_items = _items(data, user, (TRAIN,))
        at = int(first[row]) - int(dm.train_history.offsets[user])
        stop = int(end[row]) - int(dm.train_history.offsets[user])
        window = train_items[max(0, stop - 1 - L) : stop - 1]
        assert batch.items[row, : len(window)].tolist() == window  # the history as without
        for col, p in enumerate(range(max(0, stop - 1 - L), stop - 1)):
            target = int(batch.targets[row, col])
            if p + 1 < at:
                assert target == 0  # before the chunk's targets: not scored
                continue
            # one of the user's next w training items, never one the history holds at or
            # before the position; none where the draw fell past the user's last
            later = train_items[p + 1 : min(p + 1 + w, len(train_items))]
            if target == 0:
                assert len(later) < w, (user, p)
                continue
            assert target in later, (user, p, target, later)
            ahead.append(later.index(target))
    # the window is used: not only the next item is scored
    assert max(ahead) > 0 and 0 in ahead


def test_a_target_window_scores_each_event_once_in_expectation(data: Interactions) -> None:
    # a chunk of a user's last L training events, drawn many times: with W = 2 each of
    # them but the first is the target of one position in expectation, the last included
    # (clipping the draws past the end to the last would make it 1.5)
    from tailored.train.two_tower.feed import TrainFeed

    feed = TrainFeed.of(data, history_length=L, target_window=2)
    counts = np.diff(feed.offsets.numpy())
    user = int(np.flatnonzero(counts > L + 1)[0])
    stop = int(feed.offsets[user + 1])
    start = stop - (L + 1)
    n = 4000
    first = torch.full((n,), stop - L, dtype=torch.int64)
    end = torch.full((n,), stop, dtype=torch.int64)
    batch = feed.sequence_batch(first, end, torch.Generator().manual_seed(0))
    items = feed.item[start:stop].tolist()
    got = batch.targets[batch.targets > 0].tolist()
    per_event = np.array([got.count(i) for i in items]) / n
    np.testing.assert_allclose(per_event, [0.0, 0.5, 1.0, 1.0, 1.0, 1.0], atol=0.05)
