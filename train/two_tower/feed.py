"""The training split as tensors on the training device, and every batch gathered there.

:class:`TrainFeed` holds the training positives (user, item, weight, context: grouped by user,
in time order, so user ``u``'s events are ``offsets[u]:offsets[u+1]`` and event ``j``'s history
is the events before it) and the users' tower inputs as tensors, and assembles a batch from
row indices with tensor gathers alone: the history windows, a sequence batch's chunks, and the
in-batch pairs that are no negative (another positive of the row's user). No per-example
Python, no numpy per step, no host round trip where the arrays live on the GPU.

:class:`FeedLoader` walks the rows in a fresh random order each epoch (a permutation drawn on
the device), and yields batches already on the device (under DDP each rank's feed holds
its own users' events, :mod:`tailored.train.distributed`). Where the
arrays do not fit the device (``[train] feed = "host"``), they stay in (pinned) host memory,
each batch is gathered there and copied over without blocking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from tailored.data.features import user_hash_buckets
from tailored.data.splits import TRAIN

if TYPE_CHECKING:
    from tailored.data.interactions import Interactions
    from tailored.train.two_tower.data import Batch, SequenceBatch

__all__ = ["FeedLoader", "TrainFeed", "equal_cells", "not_negative_pairs", "window"]


def window(items: Tensor, start: Tensor, end: Tensor, length: int) -> Tensor:
    """``items[max(start, end - length):end]`` per row, right-aligned in int64 [B, length],
    left-padded with 0 (most recent last)."""
    idx = end.unsqueeze(1) - torch.arange(length, 0, -1, device=end.device).unsqueeze(0)
    valid = idx >= start.unsqueeze(1)
    if not len(items):
        return torch.zeros(idx.shape, dtype=torch.long, device=end.device)
    out = items[idx.clamp(0, len(items) - 1)].long()
    return out.masked_fill_(~valid, 0)


def _expand(counts: Tensor) -> tuple[Tensor, Tensor]:
    """For counts [R]: (the row of each of the counts.sum() slots, its index within the row)."""
    total = int(counts.sum())  # one host sync: the size of what follows
    rows = torch.repeat_interleave(
        torch.arange(len(counts), device=counts.device), counts, output_size=total
    )
    starts = torch.cumsum(counts, 0) - counts
    within = torch.arange(total, device=counts.device) - starts[rows]
    return rows, within


def equal_cells(row_ids: Tensor, col_ids: Tensor) -> Tensor:
    """The cells (i, j) where ``col_ids[j] == row_ids[i]``, int64 [2, M]: the columns sorted
    once, each row's run of equal columns found by two binary searches."""
    col_sorted, order = torch.sort(col_ids)
    lo = torch.searchsorted(col_sorted, row_ids.to(col_sorted.dtype))
    rows, within = _expand(
        torch.searchsorted(col_sorted, row_ids.to(col_sorted.dtype), right=True) - lo
    )
    return torch.stack([rows, order[lo[rows] + within]])


def not_negative_pairs(
    row_users: Tensor, col_items: Tensor, offsets: Tensor, items: Tensor
) -> Tensor:
    """The (row, column) cells of a batch's [R, R] logits whose column item is a positive of
    the row's user (its own positive included, off the diagonal): int64 [2, M].

    ``row_users`` int64 [R], ``col_items`` int64 [R] (row r's own positive is column r);
    ``offsets`` [U+1] and ``items`` [E] the users' positives. Each distinct user's positives
    are looked up once among the batch's items, sorted once (a user with many rows in the
    batch, or many positives, is not expanded once per row), and the (user, column) matches
    are then joined to the user's rows: work in the batch's users' positives and in the
    cells found, not R x R."""
    users, row_user = torch.unique(row_users, return_inverse=True)
    start = offsets[users]
    user_of, within = _expand(offsets[users + 1] - start)
    hit, col_of_hit = equal_cells(items[start[user_of] + within], col_items)
    # (user, column) matches, once each (a user's repeated positive finds the same columns)
    key = torch.unique(user_of[hit] * len(col_items) + col_of_hit)
    user, col = key // len(col_items), key % len(col_items)
    # joined to each of the user's rows
    rows_by_user = torch.argsort(row_user)
    counts = torch.bincount(row_user, minlength=len(users))
    first = torch.cumsum(counts, 0) - counts
    match, j = _expand(counts[user])
    rows = rows_by_user[first[user[match]] + j]
    cols = col[match]
    off_diagonal = rows != cols
    return torch.stack([rows[off_diagonal], cols[off_diagonal]])


@dataclass
class TrainFeed:
    """The training split's tensors (see the module doc), all on one device: ``user``,
    ``item`` int32 [E], ``weight`` float32 [E], ``context`` int64 [E, K], ``offsets`` int64
    [U+1]; per user ``user_hash`` int64 [U], ``user_cat`` int64 [U, C], ``user_num`` float32
    [U, F]."""

    user: Tensor
    item: Tensor
    weight: Tensor
    context: Tensor
    offsets: Tensor
    user_hash: Tensor
    user_cat: Tensor
    user_num: Tensor
    history_length: int
    target_window: int = 1
    mask_user_positives: bool = False

    @classmethod
    def of(
        cls,
        data: Interactions,
        *,
        history_length: int,
        user_id_buckets: int = 0,
        target_window: int = 1,
        mask_user_positives: bool = False,
    ) -> TrainFeed:
        """``data``'s training split, on the CPU (:meth:`to` moves it)."""
        train = data.split == TRAIN
        user = data.user[train]
        counts = np.bincount(user, minlength=data.n_users)
        return cls(
            user=torch.from_numpy(np.ascontiguousarray(user, np.int32)),
            item=torch.from_numpy(np.ascontiguousarray(data.item[train], np.int32)),
            weight=torch.from_numpy(np.ascontiguousarray(data.weight[train], np.float32)),
            context=torch.from_numpy(np.ascontiguousarray(data.context[train], np.int64)),
            offsets=torch.from_numpy(np.r_[0, np.cumsum(counts)].astype(np.int64)),
            user_hash=torch.from_numpy(user_hash_buckets(data.user_ids, user_id_buckets)),
            user_cat=torch.from_numpy(np.ascontiguousarray(data.users.categorical, np.int64)),
            user_num=torch.from_numpy(np.ascontiguousarray(data.users.numeric, np.float32)),
            history_length=history_length,
            target_window=target_window,
            mask_user_positives=mask_user_positives,
        )

    def _tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.type == "Tensor"}

    @property
    def device(self) -> torch.device:
        return self.item.device

    @property
    def rows(self) -> int:
        """Training positives."""
        return len(self.item)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors().values())

    def to(self, device: torch.device | str, *, pin: bool = False) -> TrainFeed:
        """The same feed on ``device``; ``pin``: on the host in page-locked memory, so that a
        batch's copy to a GPU does not block."""
        moved = {k: (v.pin_memory() if pin else v.to(device)) for k, v in self._tensors().items()}
        return TrainFeed(
            **moved,
            history_length=self.history_length,
            target_window=self.target_window,
            mask_user_positives=self.mask_user_positives,
        )

    def batch(self, j: Tensor, generator: torch.Generator | None = None) -> Batch:
        """The batch of training rows ``j`` (int64 [B], on this feed's device): row i's user
        tower reads the ``history_length`` events before event ``j[i]`` of its user (with a
        target window W, before an event a random 0..W-1 earlier), its item tower event
        ``j[i]``'s item."""
        from tailored.train.two_tower.data import Batch

        users = self.user[j].long()
        start = self.offsets[users]
        end = j
        if self.target_window > 1:
            back = torch.randint(
                0, self.target_window, j.shape, device=j.device, generator=generator
            )
            end = torch.maximum(j - back, start)
        item = self.item[j].long()
        return Batch(
            user_hash=self.user_hash[users],
            user_cat=self.user_cat[users],
            user_num=self.user_num[users],
            context=self.context[j],
            history=window(self.item, start, end, self.history_length),
            item=item,
            weight=self.weight[j],
            not_negatives=(
                not_negative_pairs(users, item, self.offsets, self.item)
                if self.mask_user_positives
                else None
            ),
        )

    def sequence_batch(
        self, first: Tensor, end: Tensor, generator: torch.Generator | None = None
    ) -> SequenceBatch:
        """The chunks whose targets are the training events ``first[i]:end[i]`` (int64 [S]
        each, within one user's events), each read with the events before its targets in a
        window of ``history_length`` (see :class:`~tailored.train.two_tower.data.
        SequenceBatch`). With a target window W, the history up to each event is scored
        against one of the user's next W training events (drawn with ``generator``; not
        scored where the draw falls past the user's last) rather than the next: each event
        but the user's first W is a target once in expectation."""
        from tailored.train.two_tower.data import SequenceBatch

        length = self.history_length
        users = self.user[first].long()
        # the window is the L events before the chunk's last target (within the user's): its
        # first targets keep the history before them, as they would at serving time
        start = torch.maximum(self.offsets[users], end - 1 - length)
        event = start.unsqueeze(1) + torch.arange(length, device=first.device).unsqueeze(0)
        real = event < (end - 1).unsqueeze(1)
        event = event.masked_fill(~real, 0)
        scored = real & (event + 1 >= first.unsqueeze(1))
        target = event + 1
        if self.target_window > 1:
            ahead = torch.randint(
                0, self.target_window, target.shape, device=target.device, generator=generator
            )
            target = target + ahead
            # a draw past the user's last training event scores nothing (clipped to the last
            # instead, the last would be everyone's target (W + 1) / 2 times)
            scored &= target < self.offsets[users + 1].unsqueeze(1)
        target = target.masked_fill(~scored, 0)
        items = self.item[event].long().masked_fill_(~real, 0)
        targets = self.item[target].long().masked_fill_(~scored, 0)
        not_negatives = None
        if self.mask_user_positives:
            # the loss's rows and columns are the scored targets, row-major
            row_users = users.unsqueeze(1).expand_as(scored)[scored]
            not_negatives = not_negative_pairs(row_users, targets[scored], self.offsets, self.item)
        return SequenceBatch(
            user_hash=self.user_hash[users],
            user_cat=self.user_cat[users],
            user_num=self.user_num[users],
            context=self.context[target].masked_fill_(~scored.unsqueeze(-1), 0),
            items=items,
            targets=targets,
            weight=self.weight[target].masked_fill_(~scored, 0.0),
            not_negatives=not_negatives,
        )


class FeedLoader:
    """One epoch of training batches: ``rows`` row numbers in a random order (seeded by
    ``seed`` and the epoch, drawn on the host, so that every device draws the same), cut into
    batches of ``batch_size`` (the last, shorter one dropped where there is more than a batch)
    and turned into batches by ``make``, which gets the row numbers [B] on ``device`` and a
    generator there. ``batches``: at most this many an epoch (under DDP each rank's rows are its
    own users' and the ranks agree on the least of their counts: DDP deadlocks on unequal
    steps). Each iteration is the next epoch."""

    def __init__(
        self,
        rows: int,
        batch_size: int,
        make: Callable[[Tensor, torch.Generator], Batch | SequenceBatch],
        *,
        device: torch.device,
        seed: int,
        batches: int | None = None,
        to: torch.device | None = None,
    ) -> None:
        self.rows, self.batch_size, self.make = rows, batch_size, make
        self.device, self.seed = device, seed
        self.to = to  # the training device, where the batches are gathered elsewhere
        self.epoch = 0
        n = self.batches_of(rows, batch_size)
        self._len = n if batches is None else min(n, batches)

    @staticmethod
    def batches_of(rows: int, batch_size: int) -> int:
        """The batches an epoch of ``rows`` rows makes (before any cap)."""
        return rows // batch_size if rows > batch_size else -(-rows // batch_size)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Batch | SequenceBatch]:
        seed = self.seed * 1_000_003 + self.epoch
        self.epoch += 1
        order = torch.randperm(self.rows, generator=torch.Generator().manual_seed(seed))
        order = order.to(self.device)
        g = torch.Generator(device=self.device)
        g.manual_seed(seed)
        for b in range(self._len):
            batch = self.make(order[b * self.batch_size : (b + 1) * self.batch_size], g)
            if self.to is not None:
                batch = _moved(batch, self.to)
            yield batch


def _moved(batch: Batch | SequenceBatch, device: torch.device) -> Batch | SequenceBatch:
    """A batch gathered in host memory, copied to ``device``: pinned first where that is a
    GPU (a gather from pinned memory is pageable), so that the copy does not block."""
    pin = device.type == "cuda"
    for name, value in vars(batch).items():
        if isinstance(value, Tensor):
            setattr(
                batch, name, (value.pin_memory() if pin else value).to(device, non_blocking=True)
            )
    return batch
