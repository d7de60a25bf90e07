"""Exact inner-product search with ``torch.topk``, on CUDA when torch sees a GPU.

torch is imported inside the class only (on construction), so importing this module, as
:meth:`ItemIndex.for_kind` does, costs a serving process nothing. The vectors are saved as a
FAISS flat index, the same file format as :class:`~tailored.retrieval.ExactIndex`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from tailored.retrieval._checks import IndexInputError
from tailored.retrieval.index import ItemIndex

__all__ = ["TorchTopKIndex"]

# Scores of one chunk of queries are a [chunk, N] float32 matrix; keep it near 256 MiB.
_CHUNK_SCORES = 1 << 26


class TorchTopKIndex(ItemIndex):
    """Brute force ``queries @ vectors.T`` then ``torch.topk``. device: "auto" (CUDA when
    available, else CPU), "cpu", "cuda" or "cuda:N"; not saved with the index."""

    kind = "torch"
    exact = True

    def __init__(self, dim: int, *, device: str = "auto") -> None:
        try:
            import torch
        except ImportError as e:  # serving installs may leave torch out
            raise IndexInputError(
                'the torch index (a bundle built with [index] kind = "torch") needs torch, '
                "which this environment lacks: pip install torch, or build the bundle with "
                "another [index] kind"
            ) from e
        self._torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as e:
            raise IndexInputError(f"torch index: bad device {device!r} ({e})") from e
        super().__init__(dim)

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def _backend_reset(self) -> None:
        self._vectors = self._torch.empty((0, self.dim), dtype=self._torch.float32)
        self._vectors = self._vectors.to(self.device)

    def _backend_add(self, vectors: np.ndarray) -> None:
        new = self._torch.from_numpy(vectors).to(self.device)
        self._vectors = self._torch.cat([self._vectors, new])

    def _backend_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        chunk = max(1, _CHUNK_SCORES // max(1, self._vectors.shape[0]))
        scores, rows = [], []
        with torch.inference_mode():
            for start in range(0, queries.shape[0], chunk):
                q = torch.from_numpy(queries[start : start + chunk]).to(self.device)
                top = torch.topk(q @ self._vectors.T, k, dim=1, sorted=True)
                scores.append(top.values.float().cpu().numpy())
                rows.append(top.indices.cpu().numpy().astype(np.int64))
        return np.concatenate(scores), np.concatenate(rows)

    def _backend_count(self) -> int:
        return int(self._vectors.shape[0])

    def _backend_write(self, path: Path) -> None:
        flat = faiss.IndexFlatIP(self.dim)
        flat.add(np.ascontiguousarray(self._vectors.cpu().numpy()))
        faiss.write_index(flat, str(path))

    def _backend_read(self, path: Path) -> None:
        try:
            flat = faiss.read_index(str(path))
        except RuntimeError as e:
            raise IndexInputError(f"{path}: FAISS could not read it ({e})") from e
        if not isinstance(flat, faiss.IndexFlat) or flat.d != self.dim:
            raise IndexInputError(f"{path}: not a flat index of dimension {self.dim}")
        self._backend_reset()
        if flat.ntotal:
            self._backend_add(np.ascontiguousarray(flat.reconstruct_n(0, flat.ntotal)))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": str(self.device)}
