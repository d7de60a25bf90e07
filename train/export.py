"""Serving halves of the models, and their export to ONNX (so that serving needs no torch).

* :class:`UserTowerServing`: the user tower reading its history as vectors gathered from
  :func:`history_table` (one row per item: what the sequence encoder reads for it). The
  table travels in the bundle as ``.npy``, so the graph stays small at any catalog size
  and items added by a refresh are readable in histories at once.
* The ranker (:class:`~tailored.train.ranker.Ranker`) is exported as it is.

Both graphs have one dynamic axis, the batch (requests for the user tower, candidate rows
for the ranker). :func:`max_abs_diff` runs the same inputs through torch and onnxruntime.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tailored.train.model import TwoTower
from tailored.train.ranker import RANKER_INPUTS, Ranker, RankerEnsemble

__all__ = [
    "USER_TOWER_INPUTS",
    "UserTowerServing",
    "export_onnx",
    "export_ranker",
    "export_user_tower",
    "history_table",
    "max_abs_diff",
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
    d = model.item_tower.id_embedding.embedding_dim
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


def export_onnx(
    module: nn.Module, example: tuple[Tensor, ...], names: tuple[str, ...], output: str, path: Path
) -> Path:
    """Export ``module`` to ``path`` (written to a temporary file, then renamed) with a dynamic
    batch axis on every input and the output."""
    module = module.eval()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    batch = torch.export.Dim("batch", min=1)
    shapes = tuple({0: batch} for _ in names)
    # the exporter's own INFO/WARNING chatter (passes run, optional torchvision ops missing)
    quiet = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx", "torch._dynamo")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example,
                tmp,
                input_names=list(names),
                output_names=[output],
                dynamic_shapes=shapes,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        os.replace(tmp, path)
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def export_user_tower(model: TwoTower, history_length: int, path: Path) -> Path:
    """The user tower as ONNX (inputs :data:`USER_TOWER_INPUTS`, output ``user_emb``)."""
    example = user_tower_example(model, history_length)
    return export_onnx(UserTowerServing(model).cpu(), example, USER_TOWER_INPUTS, "user_emb", path)


def export_ranker(ranker: Ranker | RankerEnsemble, example: dict[str, Tensor], path: Path) -> Path:
    """The ranker as ONNX (inputs :data:`RANKER_INPUTS`, output ``score`` [B])."""
    args = tuple(example[name] for name in RANKER_INPUTS)
    return export_onnx(ranker.cpu(), args, RANKER_INPUTS, "score", path)


@torch.no_grad()
def max_abs_diff(module: nn.Module, path: Path, inputs: dict[str, np.ndarray]) -> float:
    """Largest absolute difference between torch and onnxruntime on the same ``inputs``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    (got,) = session.run(None, {n: inputs[n] for n in names})
    want = module.eval()(*(torch.from_numpy(inputs[n]) for n in names)).numpy()
    return float(np.abs(got - want).max()) if want.size else 0.0
