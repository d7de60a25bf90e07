"""The user tower's serving half and its ONNX export.

:class:`UserTowerServing` is the user tower reading its history as vectors gathered from
:func:`history_table` (one row per item: what the sequence encoder reads for it). The table
travels in the bundle as ``.npy``, so the graph stays small at any catalog size and items
added by a refresh are readable in histories at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tailored.train.onnx import export_onnx
from tailored.train.two_tower.model import TwoTower

__all__ = [
    "USER_TOWER_INPUTS",
    "UserTowerServing",
    "export_user_tower",
    "history_table",
    "user_tower_example",
]

USER_TOWER_INPUTS = (
    "user_hash",  # int64 [B] hashed id bucket (0 = none)
    "user_cat",  # int64 [B, C]
    "user_num",  # float32 [B, F]
    "context",  # int64 [B, K]
    "history",  # float32 [B, L, D] rows of the history table, most recent last
    "history_mask",  # bool [B, L] True where a history slot holds an item
)


class UserTowerServing(nn.Module):
    """User inputs (:data:`USER_TOWER_INPUTS`) -> user embedding float32 [B, dim]."""

    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.user_tower = model.user_tower

    def forward(
        self,
        user_hash: Tensor,
        user_cat: Tensor,
        user_num: Tensor,
        context: Tensor,
        history: Tensor,
        history_mask: Tensor,
    ) -> Tensor:
        return self.user_tower(user_hash, user_cat, user_num, context, history, history_mask)


@torch.no_grad()
def history_table(model: TwoTower, chunk: int = 65536) -> np.ndarray:
    """What the sequence encoder reads for each item index 0..N, float32 [N+1, id_dim]
    (row 0, the padding item, is never read: its slots are masked)."""
    n = model.spec.n_items + 1
    ids = torch.arange(n, device=model.item_cat.device)
    rows = [model.item_inputs(ids[i : i + chunk]).float().cpu() for i in range(0, n, chunk)]
    return torch.cat(rows).numpy()


def user_tower_example(model: TwoTower, history_length: int, batch: int = 2) -> tuple[Tensor, ...]:
    """Inputs of the right shapes and dtypes for tracing (random history vectors)."""
    spec, length = model.spec, history_length
    d = model.item_tower.input_dim
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, : length // 2] = False
    return (
        torch.zeros(batch, dtype=torch.long),
        torch.zeros(batch, len(spec.user_categorical), dtype=torch.long),
        torch.zeros(batch, spec.user_numeric),
        torch.zeros(batch, len(spec.context), dtype=torch.long),
        torch.randn(batch, length, d, generator=g),
        mask,
    )


def export_user_tower(model: TwoTower, history_length: int, path: Path) -> Path:
    """The user tower as ONNX (inputs :data:`USER_TOWER_INPUTS`, output ``user_emb``)."""
    example = user_tower_example(model, history_length)
    return export_onnx(UserTowerServing(model).cpu(), example, USER_TOWER_INPUTS, "user_emb", path)
