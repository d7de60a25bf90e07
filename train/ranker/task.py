"""Training the re-ranker: a thin LightningModule (listwise softmax loss over each request's
candidates, NDCG@10 of the re-ranked list on held-out requests) and :func:`train_ranker`.

Requests come from :func:`tailored.train.ranker.data.build_requests`: retrieval's own top-C
for users with held-out items, so the negatives are the hard ones the ranker will face.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import Tensor
from torch.utils.data import DataLoader

from tailored.config import RankerConfig
from tailored.data.features import FeatureTable
from tailored.data.ranking_features import DENSE_FEATURES, ranker_inputs
from tailored.errors import TailoredError
from tailored.train.quiet import quiet_lightning
from tailored.train.ranker.data import Requests
from tailored.train.ranker.model import RANKER_INPUTS, Ranker, RankerEnsemble, RankerSpec
from tailored.train.two_tower.data import RowIndices

__all__ = [
    "RankerTables",
    "RankerTask",
    "RankerTrainResult",
    "list_ndcg",
    "train_ranker",
]

_log = logging.getLogger(__name__)


@dataclass
class RankerTables:
    """What the ranker's inputs are gathered from: users [U, ...] and their request
    contexts int64 [U, K], items [N+1, ...] and the item tower's embeddings [N+1, D]."""

    users: FeatureTable
    context: np.ndarray
    items: FeatureTable
    item_emb: np.ndarray

    def batch(self, req: Requests) -> dict[str, Tensor]:
        arrays = ranker_inputs(
            users=self.users.take(req.users),
            context=self.context[req.users],
            items=self.items,
            item_emb=self.item_emb,
            candidates=req.candidates,
            dense=req.dense,
            user_emb=req.user_emb,
        )
        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        out["labels"] = torch.from_numpy(req.labels)
        out["gain"] = torch.from_numpy(req.gain)
        out["neg_weight"] = torch.from_numpy(req.neg_weight)
        out["valid"] = torch.from_numpy(req.candidates > 0)
        out["n_relevant"] = torch.from_numpy(req.n_relevant)
        return out


def list_ndcg(logits: Tensor, labels: Tensor, n_relevant: Tensor, k: int = 10) -> Tensor:
    """Per-request NDCG@k [R] of the candidates ordered by ``logits`` [R, C] (binary
    ``labels`` [R, C]); the ideal counts all ``n_relevant`` [R] items, retrieved or not."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    gains = labels.gather(1, top)
    disc = _discounts(top.shape[1])
    dcg = (gains * disc).sum(1)
    ideal_n = n_relevant.clamp(max=top.shape[1]).clamp(min=1) - 1
    return dcg / torch.cumsum(disc, 0)[ideal_n]


def _discounts(n: int, device: torch.device | None = None) -> Tensor:
    """1 / log2(position + 1) for positions 1..n."""
    return 1.0 / torch.log2(torch.arange(2, n + 2, dtype=torch.float32, device=device))


def softmax_loss(
    logits: Tensor, labels: Tensor, valid: Tensor, neg_weight: Tensor | None = None
) -> Tensor:
    """Listwise softmax cross-entropy: each list's positives share its probability mass.
    Rows need a positive; padding (``valid`` False) carries logits of -1e9. ``neg_weight``
    [R, C] (default 1): a negative counts as that many copies of itself in the normaliser (a
    skipped impression is a heavier negative than an unshown candidate)."""
    if neg_weight is not None:
        logits = logits + torch.where(labels > 0, 0.0, neg_weight.clamp(min=1e-6).log())
    logp = torch.log_softmax(logits, dim=1)
    return -(labels * logp).sum(1).div(labels.sum(1)).mean()


def lambdarank_loss(
    logits: Tensor, labels: Tensor, valid: Tensor, neg_weight: Tensor | None = None
) -> Tensor:
    """LambdaRank: a logistic loss on every (positive, negative) pair of a list, weighted by
    how much swapping the two would change the list's NDCG at the current ranking (ranks from
    the detached logits, binary gains, the ideal DCG of the list's positives). Pairs whose
    swap moves nothing near the top weigh little, so training spends itself on the head of the
    list that NDCG@10 reads. Padding (``valid`` False) takes part in no pair; a pair's
    weight is multiplied by its negative's ``neg_weight`` [R, C] (default 1)."""
    with torch.no_grad():
        ladder = _discounts(logits.shape[1], logits.device)
        rank = logits.argsort(dim=1, descending=True).argsort(dim=1)  # 0 = first
        disc = ladder[rank]  # [R, C]
        # binary gains: the ideal list has its positives at the top
        idcg = ladder.cumsum(0)[labels.sum(1).long().clamp(min=1) - 1]
        pos = labels > 0
        neg = ~pos & valid
        pair = pos.unsqueeze(2) & neg.unsqueeze(1)  # [R, C(pos), C(neg)]
        weight = (disc.unsqueeze(2) - disc.unsqueeze(1)).abs() / idcg.view(-1, 1, 1)
        weight = weight * pair
        if neg_weight is not None:
            weight = weight * neg_weight.unsqueeze(1)
    diff = logits.unsqueeze(2) - logits.unsqueeze(1)
    loss = (torch.nn.functional.softplus(-diff) * weight).sum((1, 2))
    return loss.mean()


RANKER_LOSSES = {"softmax": softmax_loss, "lambdarank": lambdarank_loss}


class RankerTask(pl.LightningModule):
    """Training loss over each request's candidates: listwise softmax (the default) or
    LambdaRank (:data:`RANKER_LOSSES`), padding masked."""

    def __init__(
        self, model: Ranker, *, lr: float, weight_decay: float, loss: str = "softmax"
    ) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.loss = RANKER_LOSSES[loss]
        self._val: list[Tensor] = []

    def _logits(self, batch: dict[str, Tensor]) -> Tensor:
        return task_logits(self.model, batch)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self._logits(batch)
        if "offset" in batch:  # [ranker] exposure_correction: while training only
            logits = logits + batch["offset"]
        # the labels' gains (1 each, or what each engagement weighed: [ranker] graded_labels)
        gain = batch["gain"]
        has = gain.sum(1) > 0
        loss = self.loss(logits[has], gain[has], batch["valid"][has], batch["neg_weight"][has])
        self.log("ranker/train_loss", loss, prog_bar=True, batch_size=int(has.sum()))
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._val.append(
            list_ndcg(
                self._logits(batch).float().cpu(), batch["labels"].cpu(), batch["n_relevant"].cpu()
            )
        )

    def on_validation_epoch_end(self) -> None:
        ndcg = torch.cat(self._val).mean() if self._val else torch.tensor(0.0)
        self._val.clear()
        self.log("ranker/valid_ndcg@10", ndcg, prog_bar=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


@dataclass
class RankerTrainResult:
    model: Ranker | RankerEnsemble
    holdout_ndcg10: float  # re-ranked, on the held-out training requests (out of fold)
    holdout_retrieval_ndcg10: float  # retrieval order, same requests
    epochs: list[int]  # per member


def _loader(
    tables: RankerTables,
    req: Requests,
    batch: int,
    shuffle: bool,
    item_offset: np.ndarray | None = None,
) -> DataLoader[int]:
    """Batches of ``req``; with ``item_offset`` (float32 [N + 1]), each carries its
    candidates' (``"offset"``, 0 for padding), which training adds to their logits."""

    def collate(idx: list[int]) -> dict[str, Tensor]:
        part = req.take(np.asarray(idx))
        out = tables.batch(part)
        if item_offset is not None:
            offset = np.where(part.candidates > 0, item_offset[part.candidates], 0.0)
            out["offset"] = torch.from_numpy(offset.astype(np.float32))
        return out

    return DataLoader(
        RowIndices(len(req.users)), batch_size=batch, shuffle=shuffle, collate_fn=collate
    )


def train_ranker(
    spec: RankerSpec,
    cfg: RankerConfig,
    tables: RankerTables,
    requests: Requests,
    *,
    seed: int = 0,
    progress_bar: bool = True,
    item_offset: np.ndarray | None = None,
) -> RankerTrainResult:
    """Fit a :class:`Ranker` on ``requests``, ``cfg.holdout`` of the users' requests held out
    to decide when to stop; or, with ``cfg.ensemble`` K > 1, K rankers, each holding out
    another of K disjoint folds of the users, averaged. Each member is its best epoch by
    NDCG@10 on its own held-out fold; the reported figure is over every held-out request,
    each scored by the member that did not train on it (one member, not the average; and
    optimistic, as that fold also chose the member's epoch). ``item_offset`` (float32
    [N + 1], ``[ranker] exposure_correction``) is added to the candidates' training logits
    (not to those that validate or rank)."""
    pl.seed_everything(seed, workers=True, verbose=False)
    rng = np.random.default_rng(seed)
    # held out by user: a user's several requests (lists_per_user) stay on one side
    people = rng.permutation(np.unique(requests.users))
    if cfg.ensemble == 1:
        folds = [people[: max(1, int(len(people) * cfg.holdout))]]
    else:
        if len(people) < cfg.ensemble:
            raise TailoredError(
                f"[ranker] ensemble = {cfg.ensemble}: only {len(people)} users have requests"
            )
        folds = np.array_split(people, cfg.ensemble)
    members: list[Ranker] = []
    epochs: list[int] = []
    ranked: list[Tensor] = []
    base: list[Tensor] = []
    for i, fold in enumerate(folds):
        held = np.isin(requests.users, fold)
        hold, fit = requests.take(np.flatnonzero(held)), requests.take(np.flatnonzero(~held))
        model, n_epochs = _fit_one(
            spec, cfg, tables, fit, hold, progress_bar, seed + i, item_offset
        )
        members.append(model)
        epochs.append(n_epochs)
        with torch.no_grad():
            logits = torch.cat(
                [task_logits(model, tables.batch(r)) for r in hold.batches(cfg.batch_users * 4)]
            )
        labels, n_rel = torch.from_numpy(hold.labels), torch.from_numpy(hold.n_relevant)
        ranked.append(list_ndcg(logits, labels, n_rel))
        order = torch.from_numpy(-np.arange(hold.candidates.shape[1], dtype=np.float32))
        base.append(list_ndcg(order.expand(len(hold.users), -1), labels, n_rel))
    best, retrieval = float(torch.cat(ranked).mean()), float(torch.cat(base).mean())
    _log.info(
        "ranker: %d member(s), held-out ndcg@10 %.4f (retrieval order %.4f)",
        len(members),
        best,
        retrieval,
    )
    final = members[0] if len(members) == 1 else RankerEnsemble(members).eval()
    return RankerTrainResult(final, best, retrieval, epochs)


def task_logits(model: Ranker | RankerEnsemble, batch: dict[str, Tensor]) -> Tensor:
    """Logits [R, C] of a batch of :meth:`RankerTables.batch` (padding at -1e9)."""
    r, c = batch["labels"].shape
    logits = model(*(batch[name] for name in RANKER_INPUTS)).view(r, c)
    return logits.masked_fill(~batch["valid"], -1e9)


def _fit_one(
    spec: RankerSpec,
    cfg: RankerConfig,
    tables: RankerTables,
    fit: Requests,
    hold: Requests,
    progress_bar: bool,
    seed: int,
    item_offset: np.ndarray | None = None,
) -> tuple[Ranker, int]:
    """One ranker fitted on ``fit``, its best epoch by NDCG@10 on ``hold``."""
    pl.seed_everything(seed, workers=True, verbose=False)
    fit = fit.take(np.flatnonzero(fit.labels.sum(1) > 0))  # lists without a positive teach nothing
    if len(fit.users) == 0:
        raise TailoredError("no training request has a held-out item among its candidates")
    model = Ranker(spec)
    valid = fit.candidates > 0
    dense = torch.from_numpy(fit.dense[valid].reshape(-1, len(DENSE_FEATURES)))
    model.set_dense_stats(dense.mean(0), dense.std(0))
    task = RankerTask(model, lr=cfg.lr, weight_decay=cfg.weight_decay, loss=cfg.loss)
    monitor = "ranker/valid_ndcg@10"
    with tempfile.TemporaryDirectory(prefix="tailored-ranker-") as tmp:
        ckpt = ModelCheckpoint(dirpath=tmp, monitor=monitor, mode="max", save_top_k=1)
        quiet_lightning()
        trainer = pl.Trainer(
            accelerator="auto",
            devices=1,
            max_epochs=cfg.max_epochs,
            callbacks=[EarlyStopping(monitor=monitor, mode="max", patience=cfg.patience), ckpt],
            logger=False,
            enable_progress_bar=progress_bar,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        try:
            trainer.fit(
                task,
                _loader(tables, fit, cfg.batch_users, True, item_offset),
                _loader(tables, hold, cfg.batch_users * 4, False),
            )
        except SIGTERMException as e:  # Lightning's own: a SystemExit whose status would be 0
            raise TailoredError(
                f"the ranker's training was stopped by SIGTERM at epoch {trainer.current_epoch}:"
                " nothing was written (run it again)"
            ) from e
        state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items()})
    return model.eval(), trainer.current_epoch
