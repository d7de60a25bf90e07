"""User-level differentially private training of the two towers (``[privacy] dp = true``).

The unit of privacy is the user, not the rating: the guarantee bounds what the trained
weights can reveal about everything one user did. Four things make it so.

1. **Sampling.** Each step includes every user independently with probability
   ``q = dp_users_per_step / users`` (Poisson sampling, :func:`~tailored.privacy.dp.
   poisson_sample`): the amplification by subsampling the accountant assumes. An "epoch" is
   ``users / dp_users_per_step`` steps, and training runs exactly ``[train] max_epochs`` of
   them (or until ``max_minutes``): no early stopping, since stopping on the validation split
   would let it choose the released weights.
2. **Bounded contribution.** A sampled user brings at most ``dp_examples_per_user`` of their
   training examples, drawn at random each time (with ``causal_history``: one chunk of at
   most that many consecutive targets, with the history before it). Their loss is the mean
   over those examples, and the gradient *of that whole loss* is what is clipped to
   ``dp_max_grad_norm``; so one user's influence on a step is bounded however many events
   they have.
3. **Negatives that belong to nobody.** With in-batch negatives, user u's positives enter
   every other sampled user's loss as negatives: removing u would change many users'
   gradients, and clipping each of them bounds nothing about u. Here every row is scored
   against ``dp_negatives`` items drawn uniformly from the catalog, shared by the step and
   independent of any user's data (:func:`~tailored.train.two_tower.loss.
   shared_negatives_loss`); each user's loss then reads only that user's data.
4. **No statistic of the data feeds training.** The popularity (logQ) correction is off (it is
   computed from every user's events), as is ``[model] reset_untrained_ids`` (which items have
   a training positive is a fact about users), the learning-rate drop on a validation plateau,
   and the choice of the best checkpoint: the run keeps its last weights (or their EMA,
   post-processing of the private iterates). Validation metrics are still logged, to watch.

Opacus (:mod:`tailored.privacy.dp`) clips, adds noise and accounts; the per-user gradients
come from ``torch.func`` (``vmap`` over users), which Opacus's per-layer hooks cannot provide
for a unit of several rows. The Lightning loop stays: this task uses manual optimisation (one
vmapped backward and one DPOptimizer step per batch of users), and the loop's validation,
checkpoints, EMA and logging are unchanged. Hyper-parameters tuned on the validation split
are outside the guarantee, as usual in the DP literature. Not covered either: the ranker and
the bundle's popularity features, trained or counted from the same users' data without noise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from tailored.config import Config
from tailored.data.interactions import Interactions
from tailored.privacy.dp import (
    DPPlan,
    attach_grad_samples,
    bounded_contributions,
    dp_compatible,
    per_unit_gradients,
    poisson_sample,
)
from tailored.train.two_tower.data import Batch, RowIndices, SequenceBatch, TwoTowerDataModule
from tailored.train.two_tower.loss import shared_negatives_loss
from tailored.train.two_tower.model import TwoTower
from tailored.train.two_tower.task import TwoTowerTask

__all__ = [
    "PrivateDataModule",
    "PrivateTwoTowerTask",
    "UserBatch",
    "UserLoss",
    "keep_final",
    "private_setup",
]

_log = logging.getLogger(__name__)


@dataclass
class UserBatch:
    """The examples of the users sampled for one step: every tensor of ``rows`` is
    [S, R, ...], S users (may be 0) with R rows each (``Batch``: R = dp_examples_per_user,
    padding rows weigh 0; ``SequenceBatch``: R = 1 chunk of at most that many targets)."""

    rows: Batch | SequenceBatch
    examples: int  # real (user, item) examples in the step

    @property
    def users(self) -> int:
        return int(self.rows.user_hash.shape[0])

    def unit_inputs(self) -> tuple[Tensor, ...]:
        """What :class:`UserLoss` reads, each [S, R, ...]."""
        r = self.rows
        if isinstance(r, SequenceBatch):
            return (r.user_hash, r.user_cat, r.user_num, r.context, r.items, r.targets, r.weight)
        return (r.user_hash, r.user_cat, r.user_num, r.context, r.history, r.item, r.weight)


class UserLoss(nn.Module):
    """One user's loss (a scalar): the weighted mean, over their rows, of the sampled softmax
    against the step's shared negatives. ``forward`` takes one user's tensors ([R, ...], as
    :meth:`UserBatch.unit_inputs` lists) and the negative item ids [M]."""

    def __init__(
        self,
        model: TwoTower,
        *,
        temperature: float,
        item_id_dropout: float,
        context_dropout: float,
        sequences: bool,
    ) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.item_id_dropout = item_id_dropout
        self.context_dropout = context_dropout
        self.sequences = sequences

    def forward(
        self,
        user_hash: Tensor,
        user_cat: Tensor,
        user_num: Tensor,
        context: Tensor,
        history: Tensor,
        items: Tensor,
        weight: Tensor,
        negatives: Tensor,
    ) -> Tensor:
        if self.context_dropout > 0:
            # per row; a chunk's positions lose it together (as in TwoTowerTask)
            keep = torch.rand(context.shape[0], device=context.device) >= self.context_dropout
            context = context * keep.view(-1, *[1] * (context.dim() - 1)).to(context.dtype)
        m = self.model
        if self.sequences:  # history [1, L] the chunk's inputs, items [1, L] its targets
            user = m.sequence_user_embeddings(user_hash, user_cat, user_num, context, history)
            # every position is a row; those that are no target weigh 0
            user, items, weight = user.flatten(0, 1), items.flatten(), weight.flatten()
        else:
            user = m.user_embeddings(user_hash, user_cat, user_num, context, history)
        return shared_negatives_loss(
            user,
            m.item_embeddings(items, self.item_id_dropout),
            items,
            m.item_embeddings(negatives, self.item_id_dropout),
            negatives,
            temperature=self.temperature,
            n_items=m.spec.n_items,
            weight=weight,
        )


class PrivateDataModule(TwoTowerDataModule):
    """Training batches of Poisson-sampled users with bounded contributions (validation as
    :class:`TwoTowerDataModule`'s). The sampling has its own generator, seeded from ``seed``."""

    def __init__(
        self,
        data: Interactions,
        *,
        users_per_step: int,
        examples_per_user: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(data, mask_user_positives=False, **kwargs)
        offsets = self.train_history.offsets
        counts = np.diff(offsets)
        # users who can contribute: a sequence needs an input before its first target
        self.users = np.flatnonzero(counts >= (2 if self.sequences else 1)).astype(np.int64)
        self.examples_per_user = examples_per_user
        self.steps_per_epoch = max(1, round(len(self.users) / users_per_step))
        self.sample_rate = min(1.0, users_per_step / max(len(self.users), 1))
        self._sampler = np.random.default_rng([self.seed, 0xD9])

    def train_dataloader(self) -> DataLoader[int]:
        # one item per step: the collate function draws the step's users
        return DataLoader(
            RowIndices(self.steps_per_epoch), batch_size=1, collate_fn=self._collate_users
        )

    def _collate_users(self, idx: list[int]) -> UserBatch:
        users = self.users[poisson_sample(len(self.users), self.sample_rate, self._sampler)]
        k = self.examples_per_user
        offsets = self.train_history.offsets
        if self.sequences:
            start, count = offsets[users], offsets[users + 1] - offsets[users]
            # a random chunk of at most k consecutive targets (a target needs an input first)
            end = start + 2 + (self._sampler.random(len(users)) * (count - 1)).astype(np.int64)
            end = np.minimum(end, start + count)
            seq = self._sequence_batch(np.maximum(start + 1, end - k), end)
            for name, value in vars(seq).items():
                if isinstance(value, Tensor):
                    setattr(seq, name, value.unsqueeze(1))
            return UserBatch(seq, int((seq.targets > 0).sum()))
        rows, real = bounded_contributions(offsets, users, k, self._sampler)
        batch = self._collate_train(list(rows.ravel()))
        batch.weight = batch.weight * torch.from_numpy(real.ravel()).to(batch.weight.dtype)
        for name, value in vars(batch).items():
            if isinstance(value, Tensor):
                setattr(batch, name, value.reshape(len(users), k, *value.shape[1:]))
        return UserBatch(batch, int(real.sum()))

    def transfer_batch_to_device(
        self, batch: object, device: torch.device, dataloader_idx: int
    ) -> object:
        if isinstance(batch, UserBatch):
            super().transfer_batch_to_device(batch.rows, device, dataloader_idx)
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


class PrivateTwoTowerTask(TwoTowerTask):
    """DP-SGD on :class:`TwoTowerTask`'s model: per-user gradients (``torch.func``), clipped,
    noised and averaged by Opacus's DPOptimizer, each step accounted by ``plan``. Validation
    is the parent's. Logs ``train/loss`` and ``privacy/epsilon`` (spent so far, at the plan's
    delta)."""

    def __init__(
        self,
        model: TwoTower,
        cfg: Config,
        plan: DPPlan,
    ) -> None:
        n = model.spec.n_items
        super().__init__(
            model,
            cfg.loss,
            item_popularity=torch.ones(n + 1),  # unused: no logQ correction under DP
            lr=cfg.train.lr,
            weight_decay=cfg.train.weight_decay,
            item_id_dropout=cfg.model.item_id_dropout,
            context_dropout=cfg.model.context_dropout,
        )
        self.automatic_optimization = False
        self.plan = plan
        self.negatives = cfg.privacy.dp_negatives
        # a tuple, so that the model is not registered twice (state dict, optimiser)
        self._user_loss = (
            UserLoss(
                model,
                temperature=cfg.loss.temperature,
                item_id_dropout=cfg.model.item_id_dropout,
                context_dropout=cfg.model.context_dropout,
                sequences=cfg.model.causal_history,
            ),
        )

    def training_step(self, batch: UserBatch, batch_idx: int) -> None:  # type: ignore[override]
        opt = self.optimizers()
        assert not isinstance(opt, list)  # configure_optimizers returns one
        loss_fn = self._user_loss[0]
        negatives = torch.randint(
            1, self.model.spec.n_items + 1, (self.negatives,), device=self.device
        )
        if batch.users:
            grads, losses = per_unit_gradients(loss_fn, batch.unit_inputs(), (negatives,))
            attach_grad_samples(loss_fn, grads)
            self.log("train/loss", losses.mean(), prog_bar=True, batch_size=batch.users)
        else:  # nobody sampled: the step is noise alone, and is accounted as any other
            attach_grad_samples(loss_fn, None)
        opt.step()
        opt.zero_grad()

    def on_train_epoch_end(self) -> None:
        self.log("privacy/epsilon", self.plan.epsilon(), prog_bar=True)

    def configure_optimizers(self) -> Any:
        # no plateau schedule: it would read the validation split
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return self.plan.optimizer(opt)


def private_setup(
    cfg: Config, data: Interactions, model: TwoTower, dm_kwargs: dict[str, Any]
) -> tuple[PrivateTwoTowerTask, PrivateDataModule]:
    """The task and data of a DP run of ``model`` (which is left as is: the task trains an
    Opacus-compatible copy, :func:`keep_final` copies its weights back)."""
    p, t = cfg.privacy, cfg.train  # one device: Config.validate refuses DP on several
    dm = PrivateDataModule(
        data,
        users_per_step=p.dp_users_per_step,
        examples_per_user=p.dp_examples_per_user,
        **dm_kwargs,
    )
    if p.dp_delta >= 1.0 / max(len(dm.users), 1):
        _log.warning(
            "[privacy] dp_delta %g is not below 1 / users (%d users): the guarantee is weak",
            p.dp_delta,
            len(dm.users),
        )
    plan = DPPlan.for_target(
        units=len(dm.users),
        units_per_step=p.dp_users_per_step,
        steps=t.max_epochs * dm.steps_per_epoch,
        max_grad_norm=p.dp_max_grad_norm,
        delta=p.dp_delta,
        epsilon=p.dp_epsilon,
        noise_multiplier=p.dp_noise_multiplier,
        accountant=p.dp_accountant,
    )
    _log.info(
        "user-level DP-SGD: noise multiplier %.4g (%s), sampling rate %.4g (%.1f of %d users "
        "per step), %d steps planned (%d epochs x %d), clip %.3g, at most %d examples per "
        "user and step; target epsilon %s at delta %g (%s accountant)",
        plan.noise_multiplier,
        "given" if p.dp_noise_multiplier else "derived from the target",
        plan.sample_rate,
        plan.expected_units,
        len(dm.users),
        plan.steps,
        t.max_epochs,
        dm.steps_per_epoch,
        p.dp_max_grad_norm,
        p.dp_examples_per_user,
        "none (noise given)" if p.dp_noise_multiplier else f"{p.dp_epsilon:g}",
        p.dp_delta,
        p.dp_accountant,
    )
    task = PrivateTwoTowerTask(dp_compatible(model), cfg, plan)  # type: ignore[arg-type]
    return task, dm


@torch.no_grad()
def keep_final(model: TwoTower, trained: nn.Module) -> None:
    """Copy the DP-trained copy's final weights into ``model`` (Opacus's ``DPGRU`` keeps
    ``nn.GRU``'s state-dict names beside its own; those are the ones ``model`` reads)."""
    mine = model.state_dict()
    model.load_state_dict({k: v for k, v in trained.state_dict().items() if k in mine})
