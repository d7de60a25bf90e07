"""The ranks of a distributed (DDP) training run, from before its events are read.

Each rank reads its own shard of the event log (:class:`~tailored.data.interactions.
UserShard`: the users whose row is the rank modulo the world size), so a node's memory holds
its ranks' shares rather than a whole copy per GPU. That needs the ranks up before the read:
:func:`launch` starts them through Lightning Fabric, which re-runs the command once per local
rank where nothing launched them (one machine), or joins the ranks a launcher started
(torchrun, SLURM), and sets up the process group that Lightning's Trainer then reuses.

Whatever is a fact about all events is then agreed between the ranks (:func:`agree`): each
split's item counts (logQ, the items without a training positive, the popularity baseline)
and exposure counts (``exposure_correction``), the context vocabularies (the towers'
embedding tables) and the slot propensities.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist

from tailored.data.exposures import SlotPropensity
from tailored.data.interactions import Interactions, UserShard
from tailored.data.schema import SchemaError
from tailored.data.splits import TRAIN
from tailored.errors import TailoredError

if TYPE_CHECKING:
    from tailored.config import TrainConfig

__all__ = ["Ranks", "agree", "launch", "read_shard", "sample_users"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run (``rank`` of ``world``) and the collectives the
    data needs; ``device``: where a collective's tensors go (NCCL's are on the rank's GPU).
    One process is a world of one: every collective returns its input."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def shard(self) -> UserShard:
        return UserShard(self.rank, self.world)

    def sum(self, a: np.ndarray) -> np.ndarray:
        """``a`` (numbers, the same shape on every rank) summed over the ranks, float64."""
        a = np.asarray(a, np.float64)
        if self.world == 1:
            return a
        t = torch.tensor(a, device=self.device)  # a copy: the caller's array stays as it was
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()

    def min(self, n: int) -> int:
        return self._reduce(n, dist.ReduceOp.MIN)

    def max(self, n: int) -> int:
        return self._reduce(n, dist.ReduceOp.MAX)

    def _reduce(self, n: int, op: Any) -> int:
        if self.world == 1:
            return n
        t = torch.tensor([n], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=op)
        return int(t.item())

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank."""
        return bool(self.max(int(flag)))

    def broadcast_weights(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers into every rank's ``module`` (the same
        architecture): after rank 0 alone has read its checkpoint."""
        if self.world == 1:
            return
        with torch.no_grad():
            for t in module.state_dict().values():
                moved = t.to(self.device)
                dist.broadcast(moved, src=0)
                t.copy_(moved)

    def barrier(self) -> None:
        """Wait until every rank is here."""
        if self.world > 1:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (small: vocabularies, counts, a rank's evaluated lists), in
        rank order, on every rank. They travel between this run's own processes."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def sample_users(
    users: np.ndarray, limit: int, seed: int, ranks: Ranks | None = None
) -> np.ndarray:
    """At most ``limit`` of ``users`` (sorted, distinct; 0: all), drawn with ``seed``. Under
    DDP ``users`` are this rank's and the draw is over every rank's: the rank gets its own
    part of the sample one process would draw from them all, so that a report over the ranks
    is of the same users as one process's."""
    ranks = ranks or Ranks()
    everyone = np.sort(np.concatenate(ranks.gather(users))) if ranks.world > 1 else users
    if not limit or len(everyone) <= limit:
        return users
    chosen = np.random.default_rng(seed).choice(everyone, limit, replace=False)
    return np.sort(chosen) if ranks.world == 1 else np.intersect1d(users, chosen)


def launch(t: TrainConfig) -> Ranks:
    """The ranks of ``[train]``'s devices x num_nodes, started or joined (see the module
    doc); one device: a world of one, nothing started."""
    world = t.devices * t.num_nodes
    if world == 1:
        return Ranks()
    from lightning_fabric import Fabric

    fabric = Fabric(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy="ddp"
    )
    fabric.launch()  # the other local ranks start here, running this same command
    ranks = Ranks(fabric.global_rank, fabric.world_size, fabric.device)
    _log.info("rank %d of %d: reading its shard of the events", ranks.rank, ranks.world)
    return ranks


def read_shard(read: Callable[[UserShard], Interactions], ranks: Ranks) -> Interactions:
    """``read(shard)`` of this rank's shard, agreed (:func:`agree`); every rank calls it. A
    read that fails on some rank (a bad row is only seen by the rank of its user) fails on
    every rank, the others saying so, rather than leaving them waiting for it."""
    if ranks.world == 1:
        return read(ranks.shard)
    error: Exception | None = None
    try:
        data = read(ranks.shard)
    except Exception as e:  # raised again below, once the others know
        error = e
    if ranks.any(error is not None):
        if error is not None:
            raise error
        raise TailoredError(
            f"rank {ranks.rank}: another rank could not read its shard of the events "
            "(its error is in the output)"
        )
    return agree(data, ranks)


def agree(data: Interactions, ranks: Ranks) -> Interactions:
    """``data``, one rank's shard, with what the ranks agree on (module doc); every rank
    calls it. A world of one: ``data`` as it is."""
    if ranks.world == 1:
        return data
    users = ranks.gather(data.n_users)
    if len(set(users)) > 1:
        raise TailoredError(
            f"the ranks read users tables of {sorted(set(users))} users: the dataset changed "
            "while they read it (an erasure?); train again"
        )
    counts = ranks.sum(data.item_counts())
    if not counts[TRAIN].any():
        raise SchemaError(f"{data.meta.name}: no training positives in any rank's shard")
    vocabs: dict[str, list[str]] = {}
    for shard_vocabs in ranks.gather(data.context_vocabs):
        for name, vocab in shard_vocabs.items():
            vocabs.setdefault(name, []).extend(vocab)
    vocabs = {name: sorted(set(v)) for name, v in vocabs.items()}
    # the slot counts of estimate(), over every slot (a shard that saw no exposure in slot k
    # still counts its clicks there), summed and cut where the exposures end
    position = data.position if data.position is not None else np.zeros(0, np.int32)
    clicked = position[(data.split[: len(position)] == TRAIN) & (position >= 0)]
    parts = ranks.gather((data.propensity.exposures, np.bincount(clicked)))
    width = max(len(a) for part in parts for a in part)
    shown, clicks = (
        np.sum([np.pad(np.asarray(p[i], np.int64), (0, width - len(p[i]))) for p in parts], 0)
        for i in (0, 1)
    )
    nonzero = np.flatnonzero(shown)
    n = int(nonzero[-1]) + 1 if len(nonzero) else 0
    propensity = SlotPropensity.from_counts(shown[:n], clicks[:n])
    out = data.agreed(counts, vocabs, propensity, ranks.sum(data.exposure_counts()))
    _log.info(
        "rank %d of %d: %d of %d events (%.1f%%)",
        ranks.rank,
        ranks.world,
        len(data.user),
        int(counts.sum()),
        100 * len(data.user) / max(1, counts.sum()),
    )
    return out
