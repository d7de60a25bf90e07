"""The Lightning training task: loss, optimiser, logging, validation NDCG@10.

It owns no model code (that is :mod:`tailored.train.two_tower.model`) and no data code (that is
:mod:`tailored.train.two_tower.data`).
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from tailored.config import LossConfig
from tailored.train.two_tower.data import Batch, EvalBatch, SequenceBatch
from tailored.train.two_tower.loss import sampled_softmax_loss
from tailored.train.two_tower.model import TwoTower

__all__ = ["TwoTowerTask", "rank_all_items"]


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


class TwoTowerTask(pl.LightningModule):
    """Trains :class:`TwoTower` with sampled softmax; validates full-ranking NDCG@10."""

    log_q: Tensor  # float32 [N+1], log sampling probability of each item (a buffer)

    def __init__(
        self,
        model: TwoTower,
        loss: LossConfig,
        *,
        item_popularity: Tensor,
        lr: float,
        weight_decay: float,
        item_id_dropout: float = 0.0,
        context_dropout: float = 0.0,
        lr_patience: int = 0,
        lr_factor: float = 0.3,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss_cfg = loss
        self.lr = lr
        self.weight_decay = weight_decay
        self.item_id_dropout = item_id_dropout
        self.context_dropout = context_dropout
        self.lr_patience = lr_patience
        self.lr_factor = lr_factor
        p = item_popularity.double() / item_popularity.sum().clamp_min(1.0)
        # items never seen in training get the smallest observed probability
        floor = p[p > 0].min() if (p > 0).any() else torch.tensor(1.0, dtype=torch.float64)
        self.register_buffer("log_q", torch.log(torch.where(p > 0, p, floor)).float())
        self._item_emb: Tensor | None = None
        self._val_sums: Tensor | None = None

    def training_step(self, batch: Batch | SequenceBatch, batch_idx: int) -> Tensor:
        context = batch.context
        if self.context_dropout > 0:
            # per row: a sequence batch's row is a chunk, whose positions all lose it together
            drop = torch.rand(context.shape[0], 1, device=context.device) < self.context_dropout
            context = context.masked_fill(drop.view(-1, *[1] * (context.dim() - 1)), 0)
        if isinstance(batch, SequenceBatch):
            # every position of every chunk is one (user, next item) row
            valid = batch.targets > 0  # [S, L]
            user = self.model.sequence_user_embeddings(
                batch.user_hash, batch.user_cat, batch.user_num, context, batch.items
            )[valid]
            rows = torch.arange(valid.shape[0], device=valid.device)
            rows = rows.unsqueeze(1).expand_as(valid)[valid]
            mask = batch.positive_mask[rows] if batch.positive_mask is not None else None
            return self._loss(user, batch.targets[valid], batch.weight[valid], mask)
        user = self.model.user_embeddings(
            batch.user_hash, batch.user_cat, batch.user_num, context, batch.history
        )
        return self._loss(user, batch.item, batch.weight, batch.positive_mask)

    def _loss(
        self, user: Tensor, items: Tensor, weight: Tensor, positive_mask: Tensor | None
    ) -> Tensor:
        """Sampled softmax of user rows [B, dim] against their items [B] (in-batch negatives)."""
        item = self.model.item_embeddings(items, self.item_id_dropout)
        extra = extra_ids = None
        n_items = self.model.spec.n_items
        if self.loss_cfg.uniform_negatives:
            extra_ids = torch.randint(
                1, n_items + 1, (self.loss_cfg.uniform_negatives,), device=item.device
            )
            extra = self.model.item_embeddings(extra_ids, self.item_id_dropout)
        loss = sampled_softmax_loss(
            user,
            item,
            items,
            temperature=self.loss_cfg.temperature,
            log_q=self.log_q if self.loss_cfg.logq_correction else None,
            mask_accidental_hits=self.loss_cfg.mask_accidental_hits,
            positive_mask=positive_mask,
            extra=extra,
            extra_ids=extra_ids,
            n_items=n_items,
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

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if not self.lr_patience:
            return opt
        # lower the rate when validation NDCG stalls, so training settles on a good point
        # instead of early stopping at a noisy peak
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=self.lr_factor, patience=self.lr_patience
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "valid/ndcg@10"}}
