"""Batch embedding with the current model, through Lightning's predict loop: every item (and
every user) in blocks, with a progress bar; under DDP each rank embeds a share and writes
its own shard, which rank 0 merges.

The inputs go to the device once, each block is sliced from them there, and the outputs stay
there until the last block: no host round trip per block (on a GPU too small for them, each
block is copied over and back from pinned host memory instead).

Items are given as rows of encoded metadata plus the id the model was trained with (0 for
an item that arrived after training: the item tower embeds it from its metadata alone).
Shards go to a work directory all ranks see (one machine, or a shared file system).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tailored.data.features import FeatureTable
from tailored.train.quiet import quiet_lightning
from tailored.train.two_tower.model import TwoTower

__all__ = ["EmbeddedItems", "embed_items", "embed_users"]


@dataclass
class EmbeddedItems:
    embeddings: np.ndarray  # float32 [N, dim], L2-normalised
    history: np.ndarray  # float32 [N, id_dim], what the user tower's encoder reads per item


# on a GPU, the inputs and outputs go there whole where they take at most this share of its
# free memory; beyond it (a site of 100M users) each block is copied over and back instead
DEVICE_SHARE = 0.4


class _Predictor(pl.LightningModule):
    """Embeds blocks of consecutive rows on the device. A block is two row numbers that stay
    on the host. The inputs go to the device once and every output is written into one tensor
    per key there, read back once at the end (Lightning's own predictions would come back to
    the host block by block); where they would take more than :data:`DEVICE_SHARE` of a GPU's
    free memory they stay in pinned host memory and each block is copied over and back."""

    def __init__(self, model: TwoTower, inputs: dict[str, np.ndarray], dims: dict[str, int]):
        super().__init__()
        self.model = model
        self.host = {name: torch.from_numpy(values) for name, values in inputs.items()}
        self.placed: dict[str, Tensor] = {}
        self.dims = dims
        self.rows = len(next(iter(inputs.values())))
        self.outputs: dict[str, Tensor] = {}
        self.done: list[tuple[int, int]] = []  # the blocks this process embedded

    def inputs(self, name: str, lo: int, hi: int) -> Tensor:
        return self.placed[name][lo:hi].to(self.device, non_blocking=True)

    def on_predict_start(self) -> None:
        device = self.device
        where = device
        if device.type == "cuda":
            need = sum(t.numel() * t.element_size() for t in self.host.values())
            need += 4 * self.rows * sum(self.dims.values())
            if need > DEVICE_SHARE * torch.cuda.mem_get_info(device)[0]:
                where = torch.device("cpu")
        pin = where.type == "cpu" and device.type == "cuda"
        self.placed = {k: (v.pin_memory() if pin else v.to(where)) for k, v in self.host.items()}
        self.outputs = {
            k: torch.empty((self.rows, d), dtype=torch.float32, device=where, pin_memory=pin)
            for k, d in self.dims.items()
        }
        self.done = []

    def on_predict_end(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the last blocks' copies back have landed

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        return batch  # (first row, end): the block's data is on the device already

    def predict_step(self, block: Tensor, batch_idx: int) -> None:
        lo, hi = (int(v) for v in block.tolist())
        for key, value in self.embed(lo, hi).items():
            out = self.outputs[key]
            out[lo:hi].copy_(value.float(), non_blocking=True)
        self.done.append((lo, hi))

    def embed(self, lo: int, hi: int) -> dict[str, Tensor]:
        raise NotImplementedError


class _ItemPredictor(_Predictor):
    def embed(self, lo: int, hi: int) -> dict[str, Tensor]:
        tower = self.model.item_tower
        x = tower.inputs(*(self.inputs(k, lo, hi) for k in ("ids", "cat", "multi", "num")))
        return {"emb": tower.output(x), "hist": x}


class _UserPredictor(_Predictor):
    table: Tensor  # float32 [N+1, id_dim]: what the user tower's encoder reads per item

    def __init__(
        self, model: TwoTower, inputs: dict[str, np.ndarray], table: np.ndarray, dim: int
    ) -> None:
        super().__init__(model, inputs, {"emb": dim})
        self.register_buffer("table", torch.from_numpy(table), persistent=False)

    def embed(self, lo: int, hi: int) -> dict[str, Tensor]:
        history = self.inputs("history", lo, hi)
        parts = (self.inputs(k, lo, hi) for k in ("user_hash", "user_cat", "user_num", "context"))
        return {"emb": self.model.user_tower(*parts, self.table[history], history > 0)}


class _Blocks(Dataset[Tensor]):
    """Consecutive blocks of rows, one batch each, as (first row, end): the loader hands
    whole blocks over (no per-row Python objects; DDP's sampler splits the blocks)."""

    def __init__(self, n: int, batch: int) -> None:
        self.n, self.batch = n, batch

    def __len__(self) -> int:
        return -(-self.n // self.batch)

    def __getitem__(self, i: int) -> Tensor:
        return torch.tensor([i * self.batch, min((i + 1) * self.batch, self.n)])


def _loader(n: int, batch: int, devices: int) -> DataLoader[Tensor]:
    """One block per loader batch (batch_size 1, so DDP's sampler can split the blocks);
    blocks small enough that every rank gets at least one."""
    block = max(1, min(batch, -(-n // max(devices, 1))))
    return DataLoader(_Blocks(n, block), batch_size=1, collate_fn=lambda blocks: blocks[0])


def _predict(
    module: _Predictor,
    n: int,
    batch: int,
    work: Path,
    *,
    devices: int,
    progress_bar: bool,
) -> dict[str, np.ndarray]:
    """Every row of ``module``'s inputs through it, ``batch`` rows a block: one process
    returns its outputs; DDP ranks each write the rows they embedded to
    ``shard-<rank>-<key>.npy`` in ``work`` (a directory every rank sees) and read all."""
    work.mkdir(parents=True, exist_ok=True)
    shard = devices > 1
    quiet_lightning()
    trainer = pl.Trainer(
        accelerator="auto",
        devices=devices,
        strategy="ddp" if shard else "auto",
        precision="bf16-mixed" if torch.cuda.is_available() else "32-true",
        logger=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
    )
    trainer.predict(module, _loader(n, batch, devices), return_predictions=False)
    if not shard:
        return {k: v.cpu().numpy() for k, v in module.outputs.items()}
    rank = trainer.global_rank
    rows = (
        np.concatenate([np.arange(lo, hi) for lo, hi in module.done])
        if module.done
        else np.zeros(0, np.int64)
    )
    np.save(work / f"shard-{rank}-row.npy", rows)
    for key, value in module.outputs.items():
        np.save(
            work / f"shard-{rank}-{key}.npy",
            value[torch.from_numpy(rows).to(value.device)].cpu().numpy(),
        )
    trainer.strategy.barrier()  # every shard is written; each rank reads them all
    out: dict[str, np.ndarray] = {}
    shards = sorted(work.glob("shard-*-row.npy"))
    rows = np.concatenate([np.load(p) for p in shards])
    for key in module.outputs:
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
    tower = model.item_tower
    module = _ItemPredictor(
        model.eval(),
        {
            "ids": np.ascontiguousarray(train_ids, np.int64),
            "cat": items.categorical,
            "multi": items.multi,
            "num": items.numeric,
        },
        {"emb": model.user_tower.out_dim, "hist": tower.input_dim},
    )
    out = _predict(module, n, batch_size, work, devices=devices, progress_bar=progress_bar)
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
    module = _UserPredictor(
        model.eval(),
        {k: np.ascontiguousarray(v) for k, v in inputs.items()},
        np.ascontiguousarray(history_table, np.float32),
        model.user_tower.out_dim,
    )
    out = _predict(
        module,
        len(inputs["user_hash"]),
        batch_size,
        work,
        devices=devices,
        progress_bar=progress_bar,
    )
    return out["emb"]
