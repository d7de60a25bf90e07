"""Batches for the two-tower model, built from :class:`~tailored.data.interactions.Interactions`.

Training examples are the training split's positive events in time order: for event ``j`` of
user ``u``, the user tower reads the ``L`` positives of ``u`` before ``j`` (so the model
learns what comes next, as it will be asked at serving time) and the item tower the item of
``j``. Batches are gathered by index from tensors on the training device
(:mod:`tailored.train.two_tower.feed`); nothing per-example is materialised, so 30M events
cost a few hundred MB.

With ``sequences`` (a causal user tower), a training example is instead a chunk of up to
``sequence_targets`` consecutive positives of one user, read with the events before them in
a window of ``L``: every item of the chunk is the target of the window's items before it
(SASRec-style), and one pass of the sequence encoder scores all of them. Chunk boundaries
move by a random offset each epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tailored.data.interactions import Interactions
from tailored.data.splits import TRAIN, VALID
from tailored.errors import TailoredError
from tailored.train.distributed import Ranks, sample_users
from tailored.train.two_tower.feed import FeedLoader, TrainFeed

__all__ = [
    "DEVICE_FEED_SHARE",
    "Batch",
    "EvalBatch",
    "RowIndices",
    "SequenceBatch",
    "TwoTowerDataModule",
    "UserHistory",
    "sequence_chunks",
]

_log = logging.getLogger(__name__)

# [train] feed = "auto" keeps the training arrays on the GPU where they take at most this
# share of its free memory (the rest is the model's, its optimizer state's and activations')
DEVICE_FEED_SHARE = 0.4


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
    # int64 [2, M]: the (row, column) cells of the [B, B] logits whose column item is another
    # training positive of the row's user, so no negative for it (feed.not_negative_pairs)
    not_negatives: Tensor | None = None

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
    # int64 [2, M]: the cells of the loss's [P, P] logits over the batch's targets
    # (``targets[targets > 0]``, row-major) whose column target is a training positive of the
    # row's user
    not_negatives: Tensor | None = None

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

    def to(self, device: torch.device) -> EvalBatch:
        """The same batch on ``device`` (copies that need not block)."""
        return EvalBatch(**{k: v.to(device, non_blocking=True) for k, v in vars(self).items()})


class RowIndices(Dataset[int]):
    """Row numbers 0..n-1; batches are assembled from them in a collate function."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _rows_padded(history: UserHistory, users: np.ndarray) -> np.ndarray:
    """Each of ``users``' items in ``history``, int64 [B, longest], 0-padded on the right."""
    start = history.offsets[users]
    count = history.offsets[users + 1] - start
    width = max(int(count.max(initial=0)), 1)
    step = np.arange(width)
    idx = start[:, None] + step[None, :]
    valid = step[None, :] < count[:, None]
    if not len(history.items):
        return np.zeros(idx.shape, np.int64)
    return np.where(valid, history.items[np.minimum(idx, len(history.items) - 1)], 0).astype(
        np.int64
    )


class TwoTowerDataModule(pl.LightningDataModule):
    """Training batches over the train split (gathered on the training device by a
    :class:`~tailored.train.two_tower.feed.TrainFeed`); validation batches of users with valid
    items. ``feed``: where the training arrays live, "device" (the training device), "host"
    (host memory, pinned where there is a GPU: each batch is gathered there and copied over)
    or "auto" (the device where they take at most :data:`DEVICE_FEED_SHARE` of its free
    memory).

    Under DDP ``data`` is this rank's shard (its users' events) and ``ranks`` the run's: the
    rank trains and validates on its own users, every rank taking the same number of batches
    an epoch (the least of theirs); validation is of the users one process would validate on."""

    def __init__(
        self,
        data: Interactions,
        *,
        history_length: int,
        batch_size: int,
        user_id_buckets: int = 0,
        limit_val_users: int = 0,
        seed: int = 0,
        target_window: int = 1,
        mask_user_positives: bool = False,
        sequences: bool = False,
        sequence_targets: int = 0,
        feed: str = "auto",
        ranks: Ranks | None = None,
    ) -> None:
        super().__init__()
        self.ranks = ranks or Ranks()
        self.sequences = sequences
        self.sequence_targets = min(sequence_targets or history_length, history_length)
        self._chunks = (np.zeros(0, np.int64), np.zeros(0, np.int64))  # per epoch, if sequences
        self.target_window = target_window
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._generator = torch.Generator().manual_seed(seed)  # the CPU collate's draws
        self.data = data
        self.history_length = history_length
        self.batch_size = batch_size
        self.feed_setting = feed
        self.feed = TrainFeed.of(
            data,
            history_length=history_length,
            user_id_buckets=user_id_buckets,
            target_window=target_window,
            mask_user_positives=mask_user_positives,
        )
        self._device_feed: TrainFeed | None = None  # the feed where training gathers
        self.user_hash = self.feed.user_hash.numpy()
        train = data.split == TRAIN
        self.train_user = data.user[train]
        self.train_item = data.item[train].astype(np.int64)
        self.train_history = UserHistory(self.feed.item.numpy(), self.feed.offsets.numpy())
        self.val_users = self._eval_users(VALID, limit_val_users, seed)
        if self.ranks.world > 1 and not self.ranks.min(len(self.val_users)):
            # Lightning skips a validation without batches, and with it the ranks' reduction
            raise TailoredError(
                "under DDP every rank validates on its own users, and some rank has none: "
                "raise [train] limit_val_users (0: all) or train on fewer devices"
            )

    def _eval_users(self, split: int, limit: int, seed: int) -> np.ndarray:
        """The users with ``split`` events, at most ``limit`` drawn with ``seed`` (under DDP
        this rank's part of the draw over every rank's: the users one process would take)."""
        users = np.unique(self.data.user[self.data.split == split])
        return sample_users(users, limit, seed, self.ranks)

    # --- training ---
    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def placed_feed(self) -> TrainFeed:
        """The feed where training gathers its batches (moved there once): on the training
        device, or in host memory (see the class doc)."""
        device = self._device()
        if self._device_feed is None or self._device_feed.device != device:
            self._device_feed = self._place(device)
        return self._device_feed

    def _place(self, device: torch.device) -> TrainFeed:
        if device.type == "cpu":
            return self.feed
        where = self.feed_setting
        if where == "auto":
            free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
            where = "device" if self.feed.nbytes <= DEVICE_FEED_SHARE * free else "host"
        _log.info(
            "training arrays (%.2f GiB) %s",
            self.feed.nbytes / 2**30,
            f"on {device}" if where == "device" else "in pinned host memory",
        )
        if where == "device":
            return self.feed.to(device)
        return self.feed.to("cpu", pin=device.type == "cuda")

    def train_dataloader(self) -> FeedLoader | DataLoader[int]:
        # not sharded by Lightning: under DDP the rank's data are its own users' already
        feed = self.placed_feed()
        device = self._device()
        if self.sequences:
            # new chunk boundaries each time (the trainer reloads this loader every epoch)
            self._chunks = sequence_chunks(
                self.train_history.offsets, self.sequence_targets, self._rng
            )
            first = torch.from_numpy(self._chunks[0]).to(feed.device)
            end = torch.from_numpy(self._chunks[1]).to(feed.device)
            rows = len(first)

            def make(j: Tensor, g: torch.Generator) -> Batch | SequenceBatch:
                return feed.sequence_batch(first[j], end[j], g)

        else:
            rows = feed.rows

            def make(j: Tensor, g: torch.Generator) -> Batch | SequenceBatch:
                return feed.batch(j, g)

        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        own = FeedLoader.batches_of(rows, self.batch_size)
        batches = self.ranks.min(own)
        if self.ranks.world > 1:
            if not batches:
                raise TailoredError(
                    "under DDP every rank trains on its own users' events, and some rank has "
                    "no training positive: train on fewer devices"
                )
            _log.info(
                "rank %d: %d of its %d batches an epoch (every rank takes the ranks' least)",
                self.ranks.rank,
                batches,
                own,
            )
        return FeedLoader(
            rows,
            self.batch_size,
            make,
            device=feed.device,
            seed=self.seed + epoch if self.sequences else self.seed,
            batches=batches,
            to=device if feed.device != device else None,
        )

    def _collate_train(self, idx: list[int] | np.ndarray) -> Batch:
        """The batch of training rows ``idx``, gathered on the CPU."""
        return self.feed.batch(torch.as_tensor(np.asarray(idx, np.int64)), self._generator)

    def _collate_sequences(self, idx: list[int]) -> SequenceBatch:
        j = np.asarray(idx, np.int64)
        return self._sequence_batch(self._chunks[0][j], self._chunks[1][j])

    def _sequence_batch(self, first: np.ndarray, end: np.ndarray) -> SequenceBatch:
        """The chunks whose targets are the training events ``first[i]:end[i]`` (int64 [S]
        each, within one user's events), with the history before them; on the CPU."""
        return self.feed.sequence_batch(
            torch.from_numpy(first), torch.from_numpy(end), self._generator
        )

    def transfer_batch_to_device(
        self, batch: object, device: torch.device, dataloader_idx: int
    ) -> object:
        if isinstance(batch, Batch | SequenceBatch | EvalBatch):
            for name, value in vars(batch).items():
                if value is not None and value.device != device:
                    setattr(batch, name, value.to(device))
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    # --- validation ---
    def val_dataloader(self) -> DataLoader[int]:
        # each rank scores its own users (a DistributedSampler would pad with repeats and
        # count some users twice); the task sums over ranks
        return self.eval_loader(self.val_users, history_splits=(TRAIN,), target=VALID)

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
                exclude=torch.from_numpy(_rows_padded(excl, u)),
                relevant=torch.from_numpy(_rows_padded(rel, u)),
            )

        return DataLoader(
            RowIndices(len(users)), batch_size=batch_size, shuffle=False, collate_fn=collate
        )
