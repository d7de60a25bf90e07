"""The ranker's ONNX export: the network (:class:`~tailored.train.ranker.model.Ranker`, or
the ensemble of them) is exported as it is, reading :data:`RANKER_INPUTS`."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from tailored.train.onnx import export_onnx
from tailored.train.ranker.model import RANKER_INPUTS, Ranker, RankerEnsemble

__all__ = ["export_ranker"]


def export_ranker(ranker: Ranker | RankerEnsemble, example: dict[str, Tensor], path: Path) -> Path:
    """The ranker as ONNX (inputs :data:`RANKER_INPUTS`, output ``score`` [B])."""
    args = tuple(example[name] for name in RANKER_INPUTS)
    return export_onnx(ranker.cpu(), args, RANKER_INPUTS, "score", path)
