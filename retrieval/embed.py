"""Batch embedding with the current model, through Lightning's predict loop: every item (and
every user) in batches, with a progress bar; under DDP each rank embeds a share and writes
its own shard, which rank 0 merges.

Items are given as rows of encoded metadata plus the id the model was trained with (0 for
an item that arrived after training: the item tower embeds it from its metadata alone).
Shards go to a work directory all ranks see (one machine, or a shared file system).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tailored.data.features import FeatureTable
from tailored.train.two_tower.model import TwoTower

__all__ = ["EmbeddedItems", "embed_items", "embed_users"]


@dataclass
class EmbeddedItems:
    embeddings: np.ndarray  # float32 [N, dim], L2-normalised
    history: np.ndarray  # float32 [N, id_dim], what the user tower's encoder reads per item


class _ItemPredictor(pl.LightningModule):
    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.model = model

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        tower = self.model.item_tower
        x = tower.inputs(batch["ids"], batch["cat"], batch["multi"], batch["num"])
        return {"row": batch["row"], "emb": tower.output(x).float(), "hist": x.float()}


class _UserPredictor(pl.LightningModule):
    table: Tensor

    def __init__(self, model: TwoTower, history_table: np.ndarray) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("table", torch.from_numpy(history_table))

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        history = batch["history"]
        emb = self.model.user_tower(
            batch["user_hash"],
            batch["user_cat"],
            batch["user_num"],
            batch["context"],
            self.table[history],
            history > 0,
        )
        return {"row": batch["row"], "emb": emb.float()}


class _Blocks(Dataset[np.ndarray]):
    """Consecutive blocks of row numbers, one batch each: the loader hands whole blocks to
    the collate function (no per-row Python objects; DDP's sampler splits the blocks)."""

    def __init__(self, n: int, batch: int) -> None:
        self.n, self.batch = n, batch

    def __len__(self) -> int:
        return -(-self.n // self.batch)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.arange(i * self.batch, min((i + 1) * self.batch, self.n), dtype=np.int64)


def _loader(n: int, batch: int, devices: int, collate: Any) -> DataLoader[np.ndarray]:
    """One block per loader batch (batch_size 1, so DDP's sampler can split the blocks);
    blocks small enough that every rank gets at least one."""
    block = max(1, min(batch, -(-n // max(devices, 1))))
    return DataLoader(_Blocks(n, block), batch_size=1, collate_fn=lambda blocks: collate(blocks[0]))


class _ShardWriter(BasePredictionWriter):
    """Each rank writes the rows it embedded to ``shard-<rank>-<key>.npy``."""

    def __init__(self, directory: Path) -> None:
        super().__init__(write_interval="epoch")
        self.directory = directory

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Any,
        batch_indices: Any,
    ) -> None:
        outs = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        for key in outs[0] if outs else ():
            arr = torch.cat([o[key].cpu() for o in outs]).numpy()
            np.save(self.directory / f"shard-{trainer.global_rank}-{key}.npy", arr)


def _predict(
    module: pl.LightningModule,
    loader: DataLoader[Any],
    n: int,
    keys: tuple[str, ...],
    work: Path,
    *,
    devices: int,
    progress_bar: bool,
) -> dict[str, np.ndarray]:
    work.mkdir(parents=True, exist_ok=True)
    shard = devices > 1  # one process keeps its predictions in memory; DDP ranks use files
    trainer = pl.Trainer(
        accelerator="auto",
        devices=devices,
        strategy="ddp" if shard else "auto",
        precision="bf16-mixed" if torch.cuda.is_available() else "32-true",
        logger=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        callbacks=[_ShardWriter(work)] if shard else [],
    )
    predictions = trainer.predict(module, loader, return_predictions=not shard)
    if not shard:
        outs = cast(list[dict[str, Tensor]], predictions or [])
        return {k: torch.cat([o[k] for o in outs]).float().numpy() for k in keys}
    trainer.strategy.barrier()  # every shard is written; each rank reads them all
    out: dict[str, np.ndarray] = {}
    shards = sorted(work.glob("shard-*-row.npy"))
    rows = np.concatenate([np.load(p) for p in shards])
    for key in keys:
        parts = [np.load(str(p).replace("-row.npy", f"-{key}.npy")) for p in shards]
        values = np.concatenate(parts)
        full = np.zeros((n, values.shape[1]), np.float32)
        full[rows] = values  # DDP pads with repeats of real rows: same values, harmless
        out[key] = full
    trainer.strategy.barrier()  # nobody removes the shards while another rank reads them
    return out


def embed_items(
    model: TwoTower,
    train_ids: np.ndarray,
    items: FeatureTable,
    work: Path,
    *,
    batch_size: int = 8192,
    devices: int = 1,
    progress_bar: bool = True,
) -> EmbeddedItems:
    """Embed N items: ``train_ids`` int64 [N] (the model's item index, 0 = new item) and
    their encoded metadata ``items`` [N, ...]. ``work``: a directory every rank sees."""
    n = len(train_ids)

    def collate(j: np.ndarray) -> dict[str, Tensor]:
        rows = slice(int(j[0]), int(j[-1]) + 1)  # a block of consecutive rows: views
        return {
            "row": torch.from_numpy(j),
            "ids": torch.from_numpy(train_ids[rows].astype(np.int64)),
            "cat": torch.from_numpy(items.categorical[rows]),
            "multi": torch.from_numpy(items.multi[rows]),
            "num": torch.from_numpy(items.numeric[rows]),
        }

    loader = _loader(n, batch_size, devices, collate)
    out = _predict(
        _ItemPredictor(model.eval()),
        loader,
        n,
        ("emb", "hist"),
        work,
        devices=devices,
        progress_bar=progress_bar,
    )
    return EmbeddedItems(out["emb"], out["hist"])


def embed_users(
    model: TwoTower,
    inputs: dict[str, np.ndarray],
    history_table: np.ndarray,
    work: Path,
    *,
    batch_size: int = 4096,
    devices: int = 1,
    progress_bar: bool = True,
) -> np.ndarray:
    """Embed U users from their tower inputs (``user_hash`` [U], ``user_cat`` [U, C],
    ``user_num`` [U, F], ``context`` [U, K], ``history`` int64 [U, L] rows of
    ``history_table`` float32 [N+1, id_dim], 0-padded on the left), as serving computes them:
    float32 [U, dim]. ``work``: a directory every rank sees."""
    n = len(inputs["user_hash"])

    def collate(j: np.ndarray) -> dict[str, Tensor]:
        rows = slice(int(j[0]), int(j[-1]) + 1)
        batch = {k: torch.from_numpy(np.ascontiguousarray(v[rows])) for k, v in inputs.items()}
        batch["row"] = torch.from_numpy(j)
        return batch

    loader = _loader(n, batch_size, devices, collate)
    out = _predict(
        _UserPredictor(model.eval(), history_table),
        loader,
        n,
        ("emb",),
        work,
        devices=devices,
        progress_bar=progress_bar,
    )
    return out["emb"]
