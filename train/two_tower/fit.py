"""``tailored train``: from a validated :class:`~tailored.config.Config` to a run directory
(its files: :mod:`tailored.train.runs`)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, EMAWeightAveraging, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from tailored.config import Config
from tailored.data.exposures import exposure_offset
from tailored.data.interactions import Interactions
from tailored.data.splits import TRAIN
from tailored.errors import TailoredError
from tailored.paths import write_json_atomic
from tailored.train.distributed import Ranks, launch, read_shard
from tailored.train.quiet import quiet_lightning
from tailored.train.runs import LoadedRun, load_data, save_model, shown_in_training
from tailored.train.threads import torch_threads
from tailored.train.two_tower.data import TwoTowerDataModule
from tailored.train.two_tower.model import (
    ItemTowers,
    TowerSpec,
    TwoTower,
    UserTowers,
    build_model,
    tower_spec,
)
from tailored.train.two_tower.task import TwoTowerTask

if TYPE_CHECKING:  # imported where DP is on: Opacus is not needed otherwise
    from tailored.train.two_tower.private import PrivateDataModule, PrivateTwoTowerTask

__all__ = ["RunResult", "ThroughputMeter", "train", "val_checks_per_epoch"]

_log = logging.getLogger(__name__)
_MONITOR = "valid/ndcg@10"  # the checkpoint kept, and early stopping, go by it
# [train] val_checks_per_epoch = 0 (auto): validate every this many steps at least, and at
# least 10 training steps per validation batch (one costs about a step: a tower's forward
# pass and a score for every item), so that validation stays near a tenth of the time or less
AUTO_VAL_MIN_STEPS = 1000
AUTO_VAL_MAX_CHECKS = 10


@dataclass
class RunResult:
    out: Path
    best_valid_ndcg10: float
    epochs: int
    samples_per_second: float  # training examples per second of training (validation excluded)
    train_seconds: float
    threads: int = 0  # torch's intra-op threads it trained on ([train] threads)
    val_checks_per_epoch: int = 1  # validations an epoch ([train] val_checks_per_epoch)


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


def _logger(cfg: Config, out: Path, pair: int = 0) -> Logger:
    """The run's log in ``out/logs`` (pair k > 0 of an ensemble: ``out/logs/pair<k>``)."""
    version = f"pair{pair}" if pair else ""
    if cfg.train.logger == "tensorboard":
        return TensorBoardLogger(save_dir=out, name="logs", version=version)
    return CSVLogger(save_dir=out, name="logs", version=version)


class ProgressLines(pl.Callback):
    """One log line every ``seconds`` of training (epoch, step, examples per second): what a
    log file or a job's output gets instead of a progress bar's carriage returns."""

    def __init__(self, seconds: float, meter: ThroughputMeter) -> None:
        self.seconds = seconds
        self.meter = meter
        self._last = time.monotonic()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = time.monotonic()
        if now - self._last < self.seconds or not trainer.is_global_zero:
            return
        self._last = now
        total = trainer.num_training_batches
        of = f"/{total}" if isinstance(total, int) else ""
        _log.info(
            "epoch %d, batch %d%s, step %d: %.0f examples/s",
            trainer.current_epoch,
            batch_idx + 1,
            of,
            trainer.global_step,
            self.meter.samples_per_second,
        )


def train(cfg: Config, *, out: Path, data: Interactions | None = None) -> RunResult:
    """Train the two-tower model and write the run directory ``out``; return its summary.
    torch runs on ``[train] threads`` meanwhile (restored afterwards)."""
    precision = torch.get_float32_matmul_precision()  # _trainer may set it for CUDA
    try:
        with torch_threads(cfg.train.threads, processes=cfg.train.devices) as threads:
            _log.info("training on %d torch thread(s)", threads)
            return _train(cfg, Path(out), data, threads)
    finally:
        torch.set_float32_matmul_precision(precision)


def val_checks_per_epoch(setting: int, steps_per_epoch: int, val_batches: int) -> int:
    """Validations an epoch: ``[train] val_checks_per_epoch``, or for 0 (auto) one every
    max(:data:`AUTO_VAL_MIN_STEPS`, 10 x ``val_batches``) of the epoch's ``steps_per_epoch``
    steps, at least 1 and at most :data:`AUTO_VAL_MAX_CHECKS`."""
    if setting:
        return setting
    every = max(AUTO_VAL_MIN_STEPS, 10 * val_batches)
    return max(1, min(AUTO_VAL_MAX_CHECKS, steps_per_epoch // every))


def _epoch_size(dm: TwoTowerDataModule) -> tuple[int, int]:
    """(training steps, validation batches) of an epoch on each device, estimated before the
    loaders exist (sequence chunks are cut afresh each epoch: about one per
    ``sequence_targets`` targets of a user, plus the random first one's half); under DDP the
    ranks agree on them (the least steps, the most validation batches), so that every rank
    validates at the same steps."""
    if dm.sequences:
        targets = np.diff(dm.train_history.offsets) - 1
        targets = targets[targets > 0]
        rows = int(np.ceil(targets / dm.sequence_targets).sum() + 0.5 * len(targets))
    else:
        rows = len(dm.train_item)
    val_batches = -(-len(dm.val_users) // 256)  # eval_loader's batch size
    return dm.ranks.min(rows // dm.batch_size), dm.ranks.max(val_batches)


def _train(cfg: Config, out: Path, data: Interactions | None, threads: int) -> RunResult:
    out = _clean_run_dir(out)
    if data is not None and cfg.train.devices * cfg.train.num_nodes > 1:
        raise TailoredError(
            "training on several devices reads each rank's shard of the events itself: "
            "call train() without data"
        )
    ranks = launch(cfg.train)  # under DDP the other ranks start here (tailored.train.distributed)
    if ranks.world > 1:  # Lightning's launcher set its own count (CPUs / processes)
        torch.set_num_threads(threads)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    if data is None:
        # the towers learn from positives only: exposures are read where they weigh positives
        # or correct the items' logits
        shown = cfg.data.position_debias or cfg.loss.exposure_correction > 0
        data = read_shard(lambda shard: load_data(cfg, exposures=shown, shard=shard), ranks)
    spec = tower_spec(data)
    m = cfg.model
    # items without a training positive: their id vectors would stay at random initial values
    # (under DP not done: which items have a positive is a fact about the users)
    untrained = torch.from_numpy(data.item_popularity((TRAIN,)) == 0)
    reset = m.reset_untrained_ids and not cfg.privacy.dp
    quiet_lightning()
    # [model] ensemble: each pair of towers is a run of its own (its seed, initial weights,
    # batches, early stopping), written side by side into one model afterwards
    pairs = [
        _fit_pair(cfg, data, spec, out, ranks, k, untrained if reset else None)
        for k in range(m.ensemble)
    ]
    model = pairs[0].model if len(pairs) == 1 else _side_by_side(cfg, data, spec, pairs)
    first = pairs[0].trainer
    epochs = sum(p.epochs for p in pairs)
    seconds = sum(p.meter.seconds for p in pairs)
    speed = sum(p.meter.samples_per_second for p in pairs) / len(pairs)
    if first.is_global_zero:
        save_model(out, cfg, spec, data, model)
    report = _write_metrics(
        out,
        cfg,
        model,
        data,
        pairs,
        samples_per_second=speed,
        seconds=seconds,
        threads=threads,
        ranks=ranks,
    )
    best = float(report["best_valid_ndcg@10"])
    if first.is_global_zero:
        _log.info(
            "best validation ndcg@10 %.4f after %d epochs (%.0f samples/s)", best, epochs, speed
        )
    return RunResult(
        out=out,
        best_valid_ndcg10=best,
        epochs=epochs,
        samples_per_second=speed,
        train_seconds=seconds,
        threads=threads,
        val_checks_per_epoch=pairs[0].val_checks,
    )


@dataclass
class _Pair:
    """One pair of towers trained: its model (the kept weights), how training went."""

    model: TwoTower
    trainer: pl.Trainer
    best: float
    epochs: int
    meter: ThroughputMeter
    val_checks: int
    privacy: dict[str, Any] | None


def _fit_pair(
    cfg: Config,
    data: Interactions,
    spec: TowerSpec,
    out: Path,
    ranks: Ranks,
    k: int,
    untrained: torch.Tensor | None,
) -> _Pair:
    """Train pair ``k`` of ``[model] ensemble`` (0: the only one, where there is one): seeded
    ``[train] seed + k`` (pair 0 as a run without an ensemble), checkpoints in
    ``out/checkpoints`` (pair k > 0: its ``pair<k>`` folder); items ``untrained`` (bool
    [N+1], or None) embedded from their metadata afterwards."""
    if k:
        pl.seed_everything(cfg.train.seed + k, workers=True, verbose=False)
        _log.info("training pair %d of %d of towers", k + 1, cfg.model.ensemble)
    m = replace(cfg.model, ensemble=1)
    model = build_model(spec, m, data.items.categorical, data.items.multi, data.items.numeric)
    dp = cfg.privacy.dp  # user-level DP-SGD (tailored.train.two_tower.private)
    if untrained is not None:
        model.item_tower.treat_as_new(untrained)
    ckpt = ModelCheckpoint(
        dirpath=out / "checkpoints" / (f"pair{k}" if k else ""),
        filename="best",
        monitor=None if dp else _MONITOR,  # DP keeps the last weights, not the best on valid
        mode="max",
        save_top_k=1,
        save_last=True,
    )
    meter = ThroughputMeter()
    callbacks: list[pl.Callback] = [ckpt, meter]
    if not _terminal():
        callbacks.append(ProgressLines(cfg.train.progress_seconds, meter))
    private = _private(cfg, model, data) if dp else None
    dm = private[1] if private is not None else _data_module(cfg, data, ranks)
    t = cfg.train
    if private is not None:  # under DP validation decides nothing: once an epoch unless asked
        checks = t.val_checks_per_epoch or 1
    else:
        checks = val_checks_per_epoch(t.val_checks_per_epoch, *_epoch_size(dm))
        if checks > 1 and not k:
            _log.info("validating %d times an epoch (patience counts validations)", checks)
    if t.scaled_lr != t.lr and not k:
        _log.info(
            "learning rate %g: %g scaled %s from a batch of %d to %d",
            t.scaled_lr,
            t.lr,
            t.lr_scaling,
            t.lr_reference_batch,
            t.global_batch,
        )
    trainer = _trainer(cfg, out, callbacks, early_stopping=not dp, val_checks=checks, pair=k)
    try:
        if private is not None:
            trainer.fit(private[0], datamodule=dm)
        else:
            trainer.fit(_task(cfg, model, data), datamodule=dm)
    except SIGTERMException as e:  # Lightning's own: a SystemExit whose status would be 0
        raise TailoredError(
            f"training was stopped by SIGTERM at epoch {trainer.current_epoch}, step "
            f"{trainer.global_step}: no model was written to {out} (run it again)"
        ) from e
    best = float(ckpt.best_model_score) if ckpt.best_model_score is not None else float("nan")
    privacy = None
    if private is not None:
        last = trainer.callback_metrics.get(_MONITOR)
        best = float(last) if last is not None else float("nan")  # the kept (last) weights'
        privacy = private[0].plan.report()
        _log.info("privacy: epsilon %.3f spent at delta %g", privacy["epsilon"], privacy["delta"])
    if private is not None:  # one device
        from tailored.train.two_tower.private import keep_final

        keep_final(model, private[0].model)
    else:  # rank 0 reads the checkpoint; every rank needs it for the final evaluation
        if ranks.rank == 0:
            _keep_best(model, ckpt.best_model_path, untrained)
        ranks.broadcast_weights(model)
    return _Pair(model, trainer, best, trainer.current_epoch, meter, checks, privacy)


def _side_by_side(cfg: Config, data: Interactions, spec: TowerSpec, pairs: list[_Pair]) -> TwoTower:
    """One model of ``[model] ensemble`` pairs holding each trained pair's weights."""
    model = build_model(
        spec, cfg.model, data.items.categorical, data.items.multi, data.items.numeric
    )
    items, users = model.item_tower, model.user_tower
    if not isinstance(items, ItemTowers) or not isinstance(users, UserTowers):
        raise TypeError("an ensemble model holds ItemTowers and UserTowers")
    for it, ut, pair in zip(items.towers(), users.towers(), pairs, strict=True):
        it.load_state_dict(pair.model.item_tower.state_dict())
        ut.load_state_dict(pair.model.user_tower.state_dict())
    return model.to(pairs[0].model.item_cat.device)


def _terminal() -> bool:
    """Whether the run's output is a terminal (Lightning's bar writes to stderr)."""
    return sys.stderr.isatty()


def _clean_run_dir(out: Path) -> Path:
    """``out``, created; a run directory trained into again starts clean: stale checkpoints
    would be picked up as "best" and old logs mixed with new ones (other DDP ranks start
    after rank 0 has done this)."""
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        for stale in ("checkpoints", "logs"):
            shutil.rmtree(out / stale, ignore_errors=True)
    return out


def _data_module(cfg: Config, data: Interactions, ranks: Ranks | None = None) -> TwoTowerDataModule:
    m = cfg.model
    return TwoTowerDataModule(
        data,
        history_length=m.history_length,
        batch_size=cfg.train.batch_size,
        user_id_buckets=m.user_id_buckets,
        feed=cfg.train.feed,
        limit_val_users=cfg.train.limit_val_users,
        seed=cfg.train.seed,
        target_window=cfg.train.target_window,
        mask_user_positives=cfg.loss.mask_user_positives,
        sequences=m.causal_history,
        sequence_targets=cfg.train.sequence_targets,
        ranks=ranks,
    )


def _private(
    cfg: Config, model: TwoTower, data: Interactions
) -> tuple[PrivateTwoTowerTask, PrivateDataModule]:
    from tailored.train.two_tower.private import private_setup

    m = cfg.model
    return private_setup(
        cfg,
        data,
        model,
        dict(
            history_length=m.history_length,
            batch_size=cfg.train.batch_size,  # validation only
            user_id_buckets=m.user_id_buckets,
            limit_val_users=cfg.train.limit_val_users,
            seed=cfg.train.seed,
            target_window=cfg.train.target_window,
            sequences=m.causal_history,
            sequence_targets=cfg.train.sequence_targets,
        ),
    )


def _task(cfg: Config, model: TwoTower, data: Interactions) -> TwoTowerTask:
    strength = cfg.loss.exposure_correction
    offset = exposure_offset(shown_in_training(data, "loss"), strength) if strength else None
    return TwoTowerTask(
        model,
        cfg.loss,
        item_popularity=torch.from_numpy(data.item_popularity()),
        exposure_offset=None if offset is None else torch.from_numpy(offset),
        lr=cfg.train.scaled_lr,
        weight_decay=cfg.train.weight_decay,
        item_id_dropout=cfg.model.item_id_dropout,
        context_dropout=cfg.model.context_dropout,
        lr_patience=cfg.train.lr_patience,
        lr_factor=cfg.train.lr_factor,
        lr_schedule=cfg.train.schedule,
        lr_warmup_steps=cfg.train.lr_warmup_steps,
        lr_min_ratio=cfg.train.lr_min_ratio,
        compile=cfg.train.compile,
    )


def _trainer(
    cfg: Config,
    out: Path,
    callbacks: list[pl.Callback],
    *,
    early_stopping: bool = True,
    val_checks: int = 1,
    pair: int = 0,
) -> pl.Trainer:
    """Lightning's Trainer as ``[train]`` configures it: early stopping on validation
    ndcg@10 (not under DP), EMA weights if asked, bf16 on CUDA, DDP on several devices;
    validation ``val_checks`` times an epoch (the checkpoint and early stopping then act at
    each, and patience counts them)."""
    t = cfg.train
    if early_stopping:
        stop = EarlyStopping(monitor=_MONITOR, mode="max", patience=t.patience)
        callbacks = [stop, *callbacks]
    if t.ema_decay:
        # validation runs on the averaged weights, and checkpoints hold them as "state_dict"
        callbacks.append(EMAWeightAveraging(decay=t.ema_decay))
    cuda = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
    if cuda:  # the in-batch softmax's float32 products on tensor cores (TF32: 10-bit mantissa,
        # finer than the bf16 the towers run in)
        torch.set_float32_matmul_precision("high")
    return pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy="ddp" if t.devices * t.num_nodes > 1 else "auto",
        precision=_precision(t.precision, cuda),
        max_epochs=t.max_epochs,
        max_time=timedelta(minutes=t.max_minutes) if t.max_minutes else None,
        # after every 1/N of an epoch's batches (Lightning: every int(batches / N)); 1.0
        # keeps Lightning's checks at the epoch's end
        val_check_interval=1.0 if val_checks == 1 else 1.0 / val_checks,
        callbacks=callbacks,
        logger=_logger(cfg, out, pair),
        enable_progress_bar=t.progress_bar and _terminal(),
        enable_model_summary=False,
        use_distributed_sampler=False,  # the data module shards (see its loaders)
        deterministic=False,
        num_sanity_val_steps=0,
        # sequence chunks are cut afresh each epoch
        reload_dataloaders_every_n_epochs=1 if cfg.model.causal_history else 0,
        log_every_n_steps=10,
    )


def _keep_best(model: TwoTower, best_path: str, untrained: torch.Tensor | None) -> None:
    """Load the best checkpoint's weights into ``model``; items without a training positive
    (``untrained``, bool [N+1]) are then embedded from their metadata alone."""
    if not best_path:
        raise TailoredError(
            "training stopped before the first validation (max_minutes too small?); "
            "no checkpoint to keep"
        )
    state = torch.load(best_path, map_location="cpu", weights_only=True)
    prefix = "model."
    weights = {
        k.removeprefix(prefix): v for k, v in state["state_dict"].items() if k.startswith(prefix)
    }
    model.load_state_dict(weights)
    if untrained is not None:
        n = model.item_tower.reset_ids(untrained)
        _log.info(
            "%d of %d items had no training positive: embedded from metadata", n, len(untrained) - 1
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
    pairs: list[_Pair],
    *,
    samples_per_second: float,
    seconds: float,
    threads: int = 0,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """``metrics.json``, returned: the kept model on valid and test (full ranking, on at most
    ``[train] final_eval_users`` sampled users), beside the popularity baseline, and how
    training went (its torch threads, validations an epoch); under DP, ``privacy``: epsilon
    spent at delta and how (DPPlan.report). With an ensemble, each pair's best validation
    and epochs, and ``best_valid_ndcg@10`` is the whole model's on the final report's users.
    Under DDP every rank evaluates its own users and rank 0 writes the file."""
    from tailored.train.evaluate import evaluate

    model.eval()
    run = LoadedRun(cfg, model, data)
    report: dict[str, Any] = {
        "best_valid_ndcg@10": pairs[0].best,
        "epochs": sum(p.epochs for p in pairs),
        "samples_per_second": samples_per_second,
        "train_seconds": seconds,
        "threads": threads,
        "val_checks_per_epoch": pairs[0].val_checks,
    }
    if pairs[0].privacy is not None:
        report["privacy"] = pairs[0].privacy
    if len(pairs) > 1:
        report["pairs"] = [{"best_valid_ndcg@10": p.best, "epochs": p.epochs} for p in pairs]
    for split in ("valid", "test"):
        r = evaluate(
            run,
            split=split,
            history="all",
            max_users=cfg.train.final_eval_users,
            seed=cfg.train.seed,
            ranks=ranks,
        )
        report[split] = {
            "users": r["users"],
            "metrics": r["metrics"],
            "popularity": r["popularity"],
        }
    if len(pairs) > 1:
        report["best_valid_ndcg@10"] = float(report["valid"]["metrics"]["ndcg@10"])
    if ranks is None or ranks.rank == 0:
        write_json_atomic(out / "metrics.json", report)
    return report
