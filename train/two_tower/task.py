"""The Lightning training task: loss, optimiser, logging, validation NDCG@10.

It owns no model code (that is :mod:`tailored.train.two_tower.model`) and no data code (that is
:mod:`tailored.train.two_tower.data`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from tailored.config import LossConfig
from tailored.errors import TailoredError
from tailored.train.two_tower.data import Batch, EvalBatch, SequenceBatch
from tailored.train.two_tower.loss import sampled_softmax_loss
from tailored.train.two_tower.model import TwoTower

__all__ = ["PlateauScale", "TwoTowerTask", "lr_multiplier", "rank_all_items"]

_log = logging.getLogger(__name__)


def rank_all_items(model: TwoTower, batch: EvalBatch, item_emb: Tensor, k: int) -> Tensor:
    """Top-``k`` item indices [B, k] (1-based) over all items, with the padding item and each
    user's ``exclude`` items masked. ``item_emb``: [N+1, dim]."""
    user = model.user_embeddings(
        batch.user_hash, batch.user_cat, batch.user_num, batch.context, batch.history
    )
    scores = user.float() @ item_emb.float().T
    scores[:, 0] = -math.inf
    scores.scatter_(1, batch.exclude, -math.inf)  # exclude is 0-padded: 0 is masked anyway
    return scores.topk(min(k, scores.shape[1] - 1), dim=1).indices


def _ndcg_recall(topk: Tensor, relevant: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-user NDCG@k and Recall@k (binary gains; RecBole's definitions)."""
    top = topk[:, :k]
    hits = (top.unsqueeze(-1) == relevant.unsqueeze(1)) & (relevant.unsqueeze(1) > 0)
    hit = hits.any(-1).float()  # [B, k]
    n_rel = (relevant > 0).sum(1).float()
    disc = 1.0 / torch.log2(torch.arange(2, k + 2, device=top.device, dtype=torch.float32))
    dcg = (hit * disc).sum(1)
    ideal = torch.cumsum(disc, 0)[(n_rel.clamp(max=k) - 1).long().clamp(min=0)]
    return dcg / ideal, hit.sum(1) / n_rel.clamp_min(1.0)


def lr_multiplier(
    step: int, *, schedule: str, warmup_steps: int, total_steps: int, min_ratio: float
) -> float:
    """The share of ``[train] lr`` that optimizer step ``step`` (0-based) uses: a linear
    warm-up over the first ``warmup_steps`` (from 1/warmup_steps to 1), then for "cosine" half
    a cosine from 1 down to ``min_ratio`` at step ``total_steps - 1`` (and there after);
    "constant" and "plateau" stay at 1 (the plateau's drops multiply this)."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if schedule != "cosine":
        return warm
    peak = max(warmup_steps - 1, 0)  # the warm-up's last step, at the full rate
    t = min(1.0, max(0, step - peak) / max(1, total_steps - 1 - peak))
    return warm * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t)))


class PlateauScale:
    """torch's ReduceLROnPlateau rule (mode "max", relative threshold 1e-4, no cooldown) as a
    factor on the schedule, so that it composes with a warm-up: after more than ``patience``
    checks without a new best, ``scale`` is multiplied by ``factor``."""

    def __init__(self, patience: int, factor: float) -> None:
        self.patience = patience
        self.factor = factor
        self.best = -math.inf
        self.bad = 0
        self.scale = 1.0

    def step(self, value: float) -> bool:
        """Record a validation check's metric; whether the rate drops now."""
        if value > self.best * (1.0 + 1e-4):  # -inf at first: any value is a new best
            self.best, self.bad = value, 0
            return False
        self.bad += 1
        if self.bad <= self.patience:
            return False
        self.scale *= self.factor
        self.bad = 0
        return True


class TwoTowerTask(pl.LightningModule):
    """Trains :class:`TwoTower` with sampled softmax; validates full-ranking NDCG@10."""

    log_q: Tensor  # float32 [N+1], log sampling probability of each item (a buffer)
    # float32 [N+1] added to each item's training logits: [loss] exposure_correction x log of
    # its share of the exposures (tailored.data.exposures.exposure_offset; None: none)
    exposure_offset: Tensor | None

    def __init__(
        self,
        model: TwoTower,
        loss: LossConfig,
        *,
        item_popularity: Tensor,
        exposure_offset: Tensor | None = None,
        lr: float,
        weight_decay: float,
        item_id_dropout: float = 0.0,
        context_dropout: float = 0.0,
        lr_patience: int = 0,
        lr_factor: float = 0.3,
        lr_schedule: str = "auto",
        lr_warmup_steps: int = 0,
        lr_min_ratio: float = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if len(model.blocks) > 1:
            raise TailoredError(
                "a task trains one pair of towers; an ensemble's pairs are trained one by one "
                "(tailored.train.two_tower.fit) and put side by side"
            )
        self.model = model
        # [train] compile: compiled views of the towers' training passes (in a tuple, so that
        # the modules are not registered twice)
        self._passes = (
            (
                torch.compile(model.user_tower.forward),
                torch.compile(model.user_tower.forward_all),
                torch.compile(model.item_tower.output),
            )
            if compile
            else (model.user_tower.forward, model.user_tower.forward_all, model.item_tower.output)
        )
        self.loss_cfg = loss
        self.lr = lr
        self.weight_decay = weight_decay
        self.item_id_dropout = item_id_dropout
        self.context_dropout = context_dropout
        self.lr_patience = lr_patience
        self.lr_factor = lr_factor
        # [train] lr_schedule (its "auto" resolved as TrainConfig.schedule does)
        self.lr_schedule = (
            ("plateau" if lr_patience else "constant") if lr_schedule == "auto" else lr_schedule
        )
        self.lr_warmup_steps = lr_warmup_steps
        self.lr_min_ratio = lr_min_ratio
        self._plateau = (
            PlateauScale(lr_patience, lr_factor) if self.lr_schedule == "plateau" else None
        )
        self._scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self._total_steps = 0  # "cosine": the steps it is planned over
        p = item_popularity.double() / item_popularity.sum().clamp_min(1.0)
        # items never seen in training get the smallest observed probability
        floor = p[p > 0].min() if (p > 0).any() else torch.tensor(1.0, dtype=torch.float64)
        self.register_buffer("log_q", torch.log(torch.where(p > 0, p, floor)).float())
        self.register_buffer(
            "exposure_offset", None if exposure_offset is None else exposure_offset.float()
        )
        self._item_emb: Tensor | None = None
        self._val_sums: Tensor | None = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # the rate this step uses ([train] lr_schedule), in the run's log as train/lr
        self.log("train/lr", float(self.trainer.optimizers[0].param_groups[0]["lr"]))

    def training_step(self, batch: Batch | SequenceBatch, batch_idx: int) -> Tensor:
        context = batch.context
        if self.context_dropout > 0:
            # per row: a sequence batch's row is a chunk, whose positions all lose it together
            drop = torch.rand(context.shape[0], 1, device=context.device) < self.context_dropout
            context = context.masked_fill(drop.view(-1, *[1] * (context.dim() - 1)), 0)
        m = self.model
        # the histories' and targets' item inputs computed once per distinct item
        uniform = self._uniform_negatives(batch.context.device)
        if isinstance(batch, SequenceBatch):
            # every position of every chunk is one (user, next item) row
            valid = batch.targets > 0  # [S, L]
            targets = batch.targets[valid]
            h, t, x = m.shared_item_inputs(
                (batch.items, 0.0), (targets, self.item_id_dropout), (uniform, self.item_id_dropout)
            )
            if not m.user_tower.causal:
                raise ValueError("a sequence batch needs a model built with causal_history")
            user = self._passes[1](
                batch.user_hash, batch.user_cat, batch.user_num, context, h, batch.items > 0
            )[valid]
            return self._loss(
                user, t, targets, x, uniform, batch.weight[valid], batch.not_negatives
            )
        h, t, x = m.shared_item_inputs(
            (batch.history, 0.0),
            (batch.item, self.item_id_dropout),
            (uniform, self.item_id_dropout),
        )
        user = self._passes[0](
            batch.user_hash, batch.user_cat, batch.user_num, context, h, batch.history > 0
        )
        return self._loss(user, t, batch.item, x, uniform, batch.weight, batch.not_negatives)

    def _uniform_negatives(self, device: torch.device) -> Tensor:
        """``[loss] uniform_negatives`` items drawn uniformly (int64 [M]; M may be 0)."""
        n = self.loss_cfg.uniform_negatives
        return torch.randint(1, self.model.spec.n_items + 1, (n,), device=device)

    def _loss(
        self,
        user: Tensor,
        item_inputs: Tensor,
        items: Tensor,
        extra_inputs: Tensor,
        extra_ids: Tensor,
        weight: Tensor,
        not_negatives: Tensor | None,
    ) -> Tensor:
        """Sampled softmax of user rows [B, dim] against their items [B] (in-batch negatives,
        and the uniform ones if any), from the items' tower inputs."""
        output = self._passes[2]
        uniform = len(extra_ids) > 0
        loss = sampled_softmax_loss(
            user,
            output(item_inputs),
            items,
            temperature=self.loss_cfg.temperature,
            log_q=self.log_q if self.loss_cfg.logq_correction else None,
            offset=self.exposure_offset,
            mask_accidental_hits=self.loss_cfg.mask_accidental_hits,
            not_negatives=not_negatives,
            extra=output(extra_inputs) if uniform else None,
            extra_ids=extra_ids if uniform else None,
            n_items=self.model.spec.n_items,
            weight=weight,
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=items.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._item_emb = self.model.all_item_embeddings()
        self._val_sums = torch.zeros(3, device=self.device, dtype=torch.float64)

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        assert self._item_emb is not None and self._val_sums is not None
        topk = rank_all_items(self.model, batch, self._item_emb, 10)
        ndcg, recall = _ndcg_recall(topk, batch.relevant, 10)
        self._val_sums += torch.stack(
            [ndcg.sum(), recall.sum(), torch.tensor(float(len(ndcg)), device=ndcg.device)]
        ).double()

    def on_validation_epoch_end(self) -> None:
        assert self._val_sums is not None
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        assert isinstance(sums, Tensor)
        n = sums[2].clamp_min(1.0)
        # already summed over ranks; sync_dist averages equal values and keeps Lightning quiet
        self.log("valid/ndcg@10", (sums[0] / n).float(), prog_bar=True, sync_dist=True)
        self.log("valid/recall@10", (sums[1] / n).float(), sync_dist=True)
        self._item_emb = None
        plateau = self._plateau if not self.trainer.sanity_checking else None
        # every rank saw the same summed metric, so every rank drops together
        if plateau is not None and plateau.step(float(sums[0] / n)):
            _log.info("valid/ndcg@10 stalled: learning rate x%g", self.lr_factor)
            self._apply_schedule()

    def configure_optimizers(self) -> Any:
        # fused: one kernel over every parameter instead of a dozen passes; at batch 1,024 on
        # the CPU it took the optimizer's step from 44 to 4.5 ms (the 6.4M-row id table)
        opt = torch.optim.AdamW(
            self.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=True
        )
        if self.lr_schedule == "constant" and not self.lr_warmup_steps:
            return opt
        # one LambdaLR, stepped after every optimizer step: warm-up, cosine, and the plateau's
        # drops (validation checks, not epochs: see on_validation_epoch_end)
        self._total_steps = self._planned_steps() if self.lr_schedule == "cosine" else 0
        self._scheduler = torch.optim.lr_scheduler.LambdaLR(opt, self._multiplier)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": self._scheduler, "interval": "step"},
        }

    def _multiplier(self, step: int) -> float:
        scale = self._plateau.scale if self._plateau is not None else 1.0
        return scale * lr_multiplier(
            step,
            schedule=self.lr_schedule,
            warmup_steps=self.lr_warmup_steps,
            total_steps=self._total_steps,
            min_ratio=self.lr_min_ratio,
        )

    def _planned_steps(self) -> int:
        """Optimizer steps in ``max_epochs`` epochs of the first epoch's length (a run stopped
        early, or by max_minutes, ends before the cosine's end)."""
        steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise TailoredError("the cosine learning-rate schedule needs epochs of known length")
        return int(steps)

    def _apply_schedule(self) -> None:
        """The rate the schedule now gives, at once (a plateau's drop would otherwise wait
        for the next step's scheduler update)."""
        sched = self._scheduler
        if sched is None:
            return
        for group, base in zip(sched.optimizer.param_groups, sched.base_lrs, strict=True):
            group["lr"] = base * self._multiplier(sched.last_epoch)
