"""``tailored train``: from a validated :class:`~tailored.config.Config` to a run directory.

A run directory holds::

    config.json      the resolved configuration
    model.json       TowerSpec, model hyper-parameters, feature vocabularies, dataset identity
    model.pt         the TwoTower state dict (tensors only; read with weights_only=True)
    checkpoints/     Lightning checkpoints (best by validation ndcg@10, and last)
    logs/            the CSV or TensorBoard logger's files
    metrics.json     validation and test metrics of the best checkpoint, and the baseline
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger

from tailored.config import Config, ModelConfig
from tailored.data.interactions import Interactions, PositiveRule, load_interactions
from tailored.data.splits import TRAIN
from tailored.errors import TailoredError
from tailored.paths import dataset_dir, write_json_atomic
from tailored.train.datamodule import TwoTowerDataModule
from tailored.train.model import TowerSpec, TwoTower
from tailored.train.task import TwoTowerTask

__all__ = ["RunResult", "ThroughputMeter", "build_model", "load_data", "train"]

_log = logging.getLogger(__name__)


@dataclass
class RunResult:
    out: Path
    best_valid_ndcg10: float
    epochs: int
    samples_per_second: float  # training examples per second of training (validation excluded)
    train_seconds: float


class ThroughputMeter(pl.Callback):
    """Training examples per second of wall time spent training, validation excluded; on
    several devices, examples of this rank times the world size."""

    def __init__(self) -> None:
        self.samples = 0
        self.seconds = 0.0
        self._start: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # from the end of the previous step (or the epoch's start): data loading included,
        # validation (which runs after the epoch's last step) excluded
        now = time.perf_counter()
        if self._start is not None:
            self.seconds += now - self._start
            self.samples += batch.examples * trainer.world_size
        self._start = now

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


def load_data(cfg: Config) -> Interactions:
    d = cfg.data
    rule = PositiveRule(dict(d.positive_events), d.min_view_seconds, d.min_rating)
    return load_interactions(
        dataset_dir(d.dataset),
        rule,
        split=d.split,
        valid_ratio=d.valid_ratio,
        test_ratio=d.test_ratio,
        valid_start=d.valid_start,
        test_start=d.test_start,
    )


def tower_spec(data: Interactions) -> TowerSpec:
    ue, ie = data.user_encoder, data.item_encoder
    return TowerSpec(
        n_items=data.n_items,
        item_categorical=tuple(ie.cardinalities(ie.categorical)),
        item_multi=tuple(ie.cardinalities(ie.multi)),
        item_numeric=len(ie.numeric),
        user_categorical=tuple(ue.cardinalities(ue.categorical)),
        user_numeric=len(ue.numeric),
        context=tuple(len(v) + 1 for v in data.context_vocabs.values()),
    )


def build_model(
    spec: TowerSpec,
    m: ModelConfig,
    item_cat: np.ndarray,
    item_multi: np.ndarray,
    item_num: np.ndarray,
) -> TwoTower:
    return TwoTower(
        spec,
        torch.from_numpy(item_cat),
        torch.from_numpy(item_multi),
        torch.from_numpy(item_num),
        dim=m.dim,
        id_dim=m.id_dim,
        feature_dim=m.feature_dim,
        hidden=m.hidden,
        dropout=m.dropout,
        encoder=m.sequence_encoder,
        history_length=m.history_length,
        layers=m.encoder_layers,
        heads=m.encoder_heads,
        user_id_buckets=m.user_id_buckets,
        causal_history=m.causal_history,
    )


def _logger(cfg: Config, out: Path) -> Logger:
    if cfg.train.logger == "tensorboard":
        return TensorBoardLogger(save_dir=out, name="logs", version="")
    return CSVLogger(save_dir=out, name="logs", version="")


def train(cfg: Config, *, out: Path, data: Interactions | None = None) -> RunResult:
    """Train the two-tower model and write the run directory ``out``; return its summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        # a run directory trained into again starts clean: stale checkpoints would be picked
        # up as "best" and old logs mixed with new ones (other ranks start after this)
        for stale in ("checkpoints", "logs"):
            shutil.rmtree(out / stale, ignore_errors=True)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    data = data if data is not None else load_data(cfg)
    spec = tower_spec(data)
    m = cfg.model
    model = build_model(spec, m, data.items.categorical, data.items.multi, data.items.numeric)
    # items without a training positive: their id vectors would stay at random initial values
    untrained = torch.from_numpy(data.item_popularity((TRAIN,)) == 0)
    if m.reset_untrained_ids:
        model.item_tower.treat_as_new(untrained)
    dm = TwoTowerDataModule(
        data,
        history_length=m.history_length,
        batch_size=cfg.train.batch_size,
        user_id_buckets=m.user_id_buckets,
        num_workers=cfg.train.num_workers,
        limit_val_users=cfg.train.limit_val_users,
        seed=cfg.train.seed,
        target_window=cfg.train.target_window,
        mask_user_positives=cfg.loss.mask_user_positives,
        sequences=m.causal_history,
        sequence_targets=cfg.train.sequence_targets,
    )
    task = TwoTowerTask(
        model,
        cfg.loss,
        item_popularity=torch.from_numpy(data.item_popularity()),
        lr=cfg.train.lr,
        weight_decay=cfg.train.weight_decay,
        item_id_dropout=m.item_id_dropout,
        context_dropout=m.context_dropout,
        lr_patience=cfg.train.lr_patience,
        lr_factor=cfg.train.lr_factor,
    )
    monitor = "valid/ndcg@10"
    ckpt = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="max",
        save_top_k=1,
        save_last=True,
    )
    cuda = torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda")
    meter = ThroughputMeter()
    callbacks: list[pl.Callback] = [
        EarlyStopping(monitor=monitor, mode="max", patience=cfg.train.patience),
        ckpt,
        meter,
    ]
    if cfg.train.ema_decay:
        # validation runs on the averaged weights, and checkpoints hold them as "state_dict"
        callbacks.append(EMAWeightAveraging(decay=cfg.train.ema_decay))
    trainer = pl.Trainer(
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        strategy=cfg.train.strategy if cfg.train.devices > 1 else "auto",
        precision=_precision(cfg.train.precision, cuda),
        max_epochs=cfg.train.max_epochs,
        max_time=timedelta(minutes=cfg.train.max_minutes) if cfg.train.max_minutes else None,
        callbacks=callbacks,
        logger=_logger(cfg, out),
        enable_progress_bar=cfg.train.progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,  # the data module shards (see its loaders)
        deterministic=False,
        num_sanity_val_steps=0,
        # sequence chunks are cut afresh each epoch
        reload_dataloaders_every_n_epochs=1 if m.causal_history else 0,
        log_every_n_steps=10,
    )
    trainer.fit(task, datamodule=dm)
    epochs = trainer.current_epoch
    best = float(ckpt.best_model_score) if ckpt.best_model_score is not None else float("nan")
    if trainer.is_global_zero:
        if not ckpt.best_model_path:
            raise TailoredError(
                "training stopped before the first validation (max_minutes too small?); "
                "no checkpoint to keep"
            )
        state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)
        weights = {
            k.removeprefix("model."): v
            for k, v in state["state_dict"].items()
            if k.startswith("model.")
        }
        model.load_state_dict(weights)
        if m.reset_untrained_ids:
            n = model.item_tower.reset_ids(untrained)
            _log.info(
                "%d of %d items had no training positive: embedded from metadata",
                n,
                data.n_items,
            )
        _save_model(out, cfg, spec, data, model)
        _write_metrics(out, cfg, model, data, best, epochs, meter)
        _log.info(
            "best validation ndcg@10 %.4f after %d epochs (%.0f samples/s)",
            best,
            epochs,
            meter.samples_per_second,
        )
    return RunResult(
        out=out,
        best_valid_ndcg10=best,
        epochs=epochs,
        samples_per_second=meter.samples_per_second,
        train_seconds=meter.seconds,
    )


def _precision(name: str, cuda: bool) -> Literal["32-true", "bf16-mixed"]:
    if name == "auto":
        return "bf16-mixed" if cuda else "32-true"
    return "bf16-mixed" if name == "bf16-mixed" else "32-true"


def _write_metrics(
    out: Path,
    cfg: Config,
    model: TwoTower,
    data: Interactions,
    best: float,
    epochs: int,
    meter: ThroughputMeter,
) -> None:
    """``metrics.json``: the kept checkpoint on valid and test (full ranking, on at most
    ``[train] final_eval_users`` sampled users), beside the popularity baseline, and how
    training went."""
    from tailored.train.evaluate import LoadedRun, evaluate

    model.eval()
    run = LoadedRun(cfg, model, data)
    report: dict[str, Any] = {
        "best_valid_ndcg@10": best,
        "epochs": epochs,
        "samples_per_second": meter.samples_per_second,
        "train_seconds": meter.seconds,
    }
    for split in ("valid", "test"):
        r = evaluate(
            run,
            split=split,
            history="all",
            max_users=cfg.train.final_eval_users,
            seed=cfg.train.seed,
        )
        report[split] = {
            "users": r["users"],
            "metrics": r["metrics"],
            "popularity": r["popularity"],
        }
    write_json_atomic(out / "metrics.json", report)


def _save_model(
    out: Path, cfg: Config, spec: TowerSpec, data: Interactions, model: TwoTower
) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".model.pt.", dir=out)
    os.close(fd)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, out / "model.pt")
    write_json_atomic(out / "config.json", cfg.to_dict())
    write_json_atomic(
        out / "model.json",
        {
            "spec": spec.to_json(),
            "user_encoder": data.user_encoder.to_json(),
            "item_encoder": data.item_encoder.to_json(),
            "context_vocabs": data.context_vocabs,
            "dataset": {
                "name": data.meta.name,
                "path": str(dataset_dir(cfg.data.dataset)),
                "key_fingerprint": data.meta.key_fingerprint,
                "counts": data.meta.counts,
            },
        },
    )
