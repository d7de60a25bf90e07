"""Export to ONNX, so that serving needs no torch, and the check that the graph computes
what the module does. Each model's own export (its serving half, its example inputs) lives
beside it: :mod:`tailored.train.two_tower.export`, :mod:`tailored.train.ranker.export`.

Every graph has one dynamic axis, the batch (requests for the user tower, candidate rows for
the ranker). :func:`max_abs_diff` runs the same inputs through torch and onnxruntime.
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

__all__ = ["export_onnx", "max_abs_diff"]


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


@torch.no_grad()
def max_abs_diff(module: nn.Module, path: Path, inputs: dict[str, np.ndarray]) -> float:
    """Largest absolute difference between torch and onnxruntime on the same ``inputs``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    (got,) = session.run(None, {n: inputs[n] for n in names})
    want = module.eval()(*(torch.from_numpy(inputs[n]) for n in names)).numpy()
    return float(np.abs(got - want).max()) if want.size else 0.0
