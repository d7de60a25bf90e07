"""Batches for the two-tower model, built from :class:`~tailored.data.interactions.Interactions`.

Training examples are the training split's positive events in time order: for event ``j`` of
user ``u``, the user tower reads the ``L`` positives of ``u`` before ``j`` (so the model
learns what comes next, as it will be asked at serving time) and the item tower the item of
``j``. Batches are assembled vectorised in the collate function from index arrays; nothing
per-example is materialised, so 30M events cost a few hundred MB.

With ``sequences`` (a causal user tower), a training example is instead a chunk of up to
``sequence_targets`` consecutive positives of one user, read with the events before them in
a window of ``L``: every item of the chunk is the target of the window's items before it
(SASRec-style), and one pass of the sequence encoder scores all of them. Chunk boundaries
move by a random offset each epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from tailored.data.features import user_hash_buckets
from tailored.data.interactions import Interactions
from tailored.data.splits import TRAIN, VALID

__all__ = [
    "Batch",
    "EvalBatch",
    "RowIndices",
    "SequenceBatch",
    "TwoTowerDataModule",
    "UserHistory",
    "sequence_chunks",
]


@dataclass
class UserHistory:
    """Per-user time-ordered items of some splits: ``items`` int32 [E'], ``offsets`` [U+1]."""

    items: np.ndarray
    offsets: np.ndarray

    @classmethod
    def of(cls, data: Interactions, splits: tuple[int, ...]) -> UserHistory:
        keep = np.isin(data.split, splits)
        counts = np.bincount(data.user[keep], minlength=data.n_users)
        return cls(data.item[keep], np.r_[0, np.cumsum(counts)].astype(np.int64))

    def last(self, users: np.ndarray, length: int, counts: np.ndarray | None = None) -> np.ndarray:
        """The ``length`` most recent items of each user, int64 [B, length], left-padded
        with 0 (most recent last); with ``counts`` [B], of each user's first ``counts``."""
        start = self.offsets[users]
        end = self.offsets[users + 1] if counts is None else start + counts
        return _window(self.items, start, end, length)


def _window(items: np.ndarray, start: np.ndarray, end: np.ndarray, length: int) -> np.ndarray:
    """``items[max(start, end - length):end]`` per row, right-aligned in [B, length]."""
    idx = end[:, None] - np.arange(length, 0, -1)[None, :]
    valid = idx >= start[:, None]
    out = (
        np.where(valid, items[np.clip(idx, 0, max(len(items) - 1, 0))], 0)
        if len(items)
        else np.zeros(idx.shape, np.int64)
    )
    return out.astype(np.int64)


@dataclass
class Batch:
    """One training batch (tensors, B rows)."""

    user_hash: Tensor
    user_cat: Tensor
    user_num: Tensor
    context: Tensor
    history: Tensor
    item: Tensor
    weight: Tensor
    positive_mask: Tensor | None = None  # bool [B, B]: item j is a training positive of user i

    @property
    def examples(self) -> int:
        """(user, item) training examples in the batch."""
        return len(self.item)


@dataclass
class SequenceBatch:
    """One training batch of S sequences of length L (tensors): ``items`` [S, L] the inputs,
    oldest first and 0-padded on the right; ``targets`` [S, L] the item after each input where
    it is one of the chunk's targets (else 0: an input kept as history only); ``context``
    [S, L, K] and ``weight`` [S, L] of the target events."""

    user_hash: Tensor
    user_cat: Tensor
    user_num: Tensor
    context: Tensor
    items: Tensor
    targets: Tensor
    weight: Tensor
    # bool [S, P]: the batch's j-th target (``targets[targets > 0]``, row-major) is a
    # training positive of sequence i's user
    positive_mask: Tensor | None = None

    @property
    def examples(self) -> int:
        """(history, next item) training examples in the batch: its targets."""
        return int((self.targets > 0).sum())


def sequence_chunks(
    offsets: np.ndarray, length: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Cut each user's events ``[offsets[u], offsets[u+1])`` into chunks of targets: every
    event but the user's first is a target exactly once. From the most recent event back, the
    first chunk holds a random 1..``length`` targets, the others ``length`` (the oldest may be
    shorter). Returns (first target, end) event indices, int64 [S] each; a chunk's inputs are
    the events ``[first - 1, end - 1)``."""
    start, end = offsets[:-1].astype(np.int64), offsets[1:].astype(np.int64)
    has = end - start > 1
    start, end = start[has], end[has]
    first_len = rng.integers(1, length + 1, len(end))
    rest = np.maximum(end - start - 1 - first_len, 0)
    count = 1 + (rest + length - 1) // length
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    s, e, f = np.repeat(start, count), np.repeat(end, count), np.repeat(first_len, count)
    chunk_end = np.where(k == 0, e, e - f - (k - 1) * length)
    chunk_first = np.maximum(s + 1, chunk_end - np.where(k == 0, f, length))
    return chunk_first, chunk_end


@dataclass
class EvalBatch:
    """Users to rank for: their inputs, the items to mask (``exclude``, [B, X] 0-padded) and
    the relevant items (``relevant``, [B, R] 0-padded)."""

    users: Tensor
    user_hash: Tensor
    user_cat: Tensor
    user_num: Tensor
    context: Tensor
    history: Tensor
    exclude: Tensor
    relevant: Tensor


class RowIndices(Dataset[int]):
    """Row numbers 0..n-1; batches are assembled from them in a collate function."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _padded(rows: list[np.ndarray]) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    out = np.zeros((len(rows), max(width, 1)), np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


class TwoTowerDataModule(pl.LightningDataModule):
    """Training batches over the train split; validation batches of users with valid items."""

    def __init__(
        self,
        data: Interactions,
        *,
        history_length: int,
        batch_size: int,
        user_id_buckets: int = 0,
        num_workers: int = 0,
        limit_val_users: int = 0,
        seed: int = 0,
        target_window: int = 1,
        mask_user_positives: bool = False,
        sequences: bool = False,
        sequence_targets: int = 0,
    ) -> None:
        super().__init__()
        self.sequences = sequences
        self.sequence_targets = min(sequence_targets or history_length, history_length)
        self._chunks = (np.zeros(0, np.int64), np.zeros(0, np.int64))  # per epoch, if sequences
        self.target_window = target_window
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self.data = data
        self.history_length = history_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.user_hash = user_hash_buckets(data.user_ids, user_id_buckets)
        train = data.split == TRAIN
        self.train_user = data.user[train]
        self.train_item = data.item[train].astype(np.int64)
        self.train_weight = data.weight[train]
        self.train_context = data.context[train]
        self.train_history = UserHistory.of(data, (TRAIN,))
        # sorted (user, item) keys of all training positives, to find in-batch "negatives"
        # that are in fact positives of the row's user
        self._pair_keys = (
            np.unique(self.train_user.astype(np.int64) * (data.n_items + 1) + self.train_item)
            if mask_user_positives
            else None
        )
        self.val_users = self._eval_users(VALID, limit_val_users, seed)

    def _eval_users(self, split: int, limit: int, seed: int) -> np.ndarray:
        users = np.unique(self.data.user[self.data.split == split])
        if limit and len(users) > limit:
            users = np.sort(np.random.default_rng(seed).choice(users, limit, replace=False))
        return users

    # --- training ---
    def _world(self) -> tuple[int, int]:
        """(rank, world size) under DDP, else (0, 1)."""
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def train_dataloader(self) -> DataLoader[int]:
        # sharded here rather than by Lightning, so validation can shard without padding
        rank, world = self._world()
        n = len(self.train_item)
        collate: Callable[[list[int]], Batch | SequenceBatch] = self._collate_train
        if self.sequences:
            # new chunk boundaries each time (the trainer reloads this loader every epoch)
            self._chunks = sequence_chunks(
                self.train_history.offsets, self.sequence_targets, self._rng
            )
            n, collate = len(self._chunks[0]), self._collate_sequences
        dataset = RowIndices(n)
        sampler: DistributedSampler[int] | None = (
            DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
            if world > 1
            else None
        )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            drop_last=n > self.batch_size,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _collate_train(self, idx: list[int]) -> Batch:
        j = np.asarray(idx, np.int64)
        users = self.train_user[j].astype(np.int64)
        # events are grouped by user in time order, so event j's history ends just before j;
        # with a target window W it ends a random 0..W-1 events earlier, so the model learns
        # to predict the next W items, not only the very next one (offline and online, what
        # is asked is the user's next several items)
        start = self.train_history.offsets[users]
        end = j
        if self.target_window > 1:
            end = np.maximum(j - self._rng.integers(0, self.target_window, len(j)), start)
        history = _window(self.train_history.items, start, end, self.history_length)
        mask = None
        if self._pair_keys is not None:
            keys = users[:, None] * (self.data.n_items + 1) + self.train_item[j][None, :]
            pos = np.searchsorted(self._pair_keys, keys)
            found = self._pair_keys[np.minimum(pos, len(self._pair_keys) - 1)] == keys
            mask = torch.from_numpy(found)
        return Batch(
            user_hash=torch.from_numpy(self.user_hash[users]),
            user_cat=torch.from_numpy(self.data.users.categorical[users]),
            user_num=torch.from_numpy(self.data.users.numeric[users]),
            context=torch.from_numpy(self.train_context[j]),
            history=torch.from_numpy(history),
            item=torch.from_numpy(self.train_item[j]),
            weight=torch.from_numpy(self.train_weight[j]),
            positive_mask=mask,
        )

    def _collate_sequences(self, idx: list[int]) -> SequenceBatch:
        j = np.asarray(idx, np.int64)
        return self._sequence_batch(self._chunks[0][j], self._chunks[1][j])

    def _sequence_batch(self, first: np.ndarray, end: np.ndarray) -> SequenceBatch:
        """The chunks whose targets are the training events ``first[i]:end[i]`` (int64 [S]
        each, within one user's events), with the history before them."""
        users = self.train_user[first].astype(np.int64)
        # the window is the L events before the chunk's last target (within the user's): its
        # first targets keep the history before them, as they would at serving time
        start = np.maximum(self.train_history.offsets[users], end - 1 - self.history_length)
        event = start[:, None] + np.arange(self.history_length)[None, :]  # [S, L] inputs
        real = event < end[:, None] - 1
        event = np.where(real, event, 0)
        scored = real & (event + 1 >= first[:, None])
        target = np.where(scored, event + 1, 0)
        items = np.where(real, self.train_item[event], 0)
        targets = np.where(scored, self.train_item[target], 0)
        mask = None
        if self._pair_keys is not None:
            keys = users[:, None] * (self.data.n_items + 1) + targets[scored][None, :]
            pos = np.searchsorted(self._pair_keys, keys)
            mask = torch.from_numpy(
                self._pair_keys[np.minimum(pos, len(self._pair_keys) - 1)] == keys
            )
        return SequenceBatch(
            user_hash=torch.from_numpy(self.user_hash[users]),
            user_cat=torch.from_numpy(self.data.users.categorical[users]),
            user_num=torch.from_numpy(self.data.users.numeric[users]),
            context=torch.from_numpy(np.where(scored[..., None], self.train_context[target], 0)),
            items=torch.from_numpy(items),
            targets=torch.from_numpy(targets),
            weight=torch.from_numpy(
                np.where(scored, self.train_weight[target], 0).astype(np.float32)
            ),
            positive_mask=mask,
        )

    def transfer_batch_to_device(
        self, batch: object, device: torch.device, dataloader_idx: int
    ) -> object:
        if isinstance(batch, Batch | SequenceBatch | EvalBatch):
            for name, value in vars(batch).items():
                if value is not None:
                    setattr(batch, name, value.to(device))
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # --- validation ---
    def val_dataloader(self) -> DataLoader[int]:
        # each rank scores a disjoint share of the users (a DistributedSampler would pad
        # with repeats and count some users twice); the task sums over ranks
        rank, world = self._world()
        return self.eval_loader(self.val_users[rank::world], history_splits=(TRAIN,), target=VALID)

    def eval_loader(
        self,
        users: np.ndarray,
        *,
        history_splits: tuple[int, ...],
        target: int,
        exclude_splits: tuple[int, ...] | None = None,
        batch_size: int = 256,
    ) -> DataLoader[int]:
        """Batches of ``users`` with their history from ``history_splits``, the items of
        ``exclude_splits`` (default: the history's) masked, and ``target``'s as relevant."""
        hist = UserHistory.of(self.data, history_splits)
        excl = UserHistory.of(self.data, exclude_splits or history_splits)
        rel = UserHistory.of(self.data, (target,))

        def collate(idx: list[int]) -> EvalBatch:
            u = users[np.asarray(idx, np.int64)]
            return EvalBatch(
                users=torch.from_numpy(u.astype(np.int64)),
                user_hash=torch.from_numpy(self.user_hash[u]),
                user_cat=torch.from_numpy(self.data.users.categorical[u]),
                user_num=torch.from_numpy(self.data.users.numeric[u]),
                context=torch.zeros((len(u), self.data.context.shape[1]), dtype=torch.long),
                history=torch.from_numpy(hist.last(u, self.history_length)),
                exclude=torch.from_numpy(
                    _padded([excl.items[excl.offsets[x] : excl.offsets[x + 1]] for x in u])
                ),
                relevant=torch.from_numpy(
                    _padded([rel.items[rel.offsets[x] : rel.offsets[x + 1]] for x in u])
                ),
            )

        return DataLoader(
            RowIndices(len(users)), batch_size=batch_size, shuffle=False, collate_fn=collate
        )
