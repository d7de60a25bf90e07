"""IVF with the full vectors in its cells: ``IndexIVFFlat``, inner product.

The query visits ``nprobe`` of ``nlist`` k-means cells and scores every item in them with its
float32 vector, so the scores are exact inner products and recall is limited only by the
cells visited. Memory: the float vectors (``4 d`` bytes per item) and 8 bytes of id per item,
less than IVF-PQ with its exact re-scoring, which keeps the same vectors and its codes too.
At small ``d`` (64 here) scanning a cell's floats costs about what scanning its PQ codes does,
and there is no shortlist to re-score, so at serving depth (a few hundred candidates) it is
the cheaper of the two; IVF-PQ pays off where the vectors are large.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from tailored.retrieval._checks import IndexInputError
from tailored.retrieval.faiss_indexes import _TRAIN_PER_LIST, _FaissIndex

__all__ = ["IVFFlatIndex"]


class IVFFlatIndex(_FaissIndex):
    """IVF over flat vectors. nlist: k-means cells (~4 sqrt(N)); nprobe: cells visited per
    query (speed vs recall). Trained on the first vectors added (:meth:`build` with the whole
    catalog); a catalog too small for ``nlist`` (fewer than 39 items a cell) trains with
    fewer cells, which :meth:`describe` reports."""

    kind = "ivfflat"
    gpu_capable = True
    search_params = ("nprobe",)

    def __init__(
        self, dim: int, *, nlist: int = 4096, nprobe: int = 32, gpu: bool | None = None
    ) -> None:
        for name, value in (("nlist", nlist), ("nprobe", nprobe)):
            if value <= 0:
                raise IndexInputError(f"ivfflat: {name} must be >= 1, got {value}")
        self.nlist, self.nprobe = int(nlist), int(nprobe)
        super().__init__(dim, gpu=gpu)

    @property
    def params(self) -> dict[str, Any]:
        return {"nlist": self.nlist, "nprobe": self.nprobe}

    def _new_index(self, nlist: int | None = None) -> Any:
        quantizer = faiss.IndexFlatIP(self.dim)
        return faiss.IndexIVFFlat(
            quantizer, self.dim, nlist or self.nlist, faiss.METRIC_INNER_PRODUCT
        )

    def _configure(self, index: Any) -> None:
        index.nprobe = self.nprobe

    def _train(self, vectors: np.ndarray) -> None:
        n = vectors.shape[0]
        nlist = min(self.nlist, max(1, n // 39))
        if nlist != self.nlist:
            self._index = self._new_index(nlist)
            self._configure(self._index)
        # k-means on a seeded sample of 40 points per cell (FAISS asks for 39)
        size = min(n, _TRAIN_PER_LIST * nlist)
        rng = np.random.default_rng(0)
        sample = vectors[np.sort(rng.choice(n, size, replace=False))] if size < n else vectors
        self._index.train(np.ascontiguousarray(sample))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["effective"] = {"nlist": int(self._index.nlist)}
        return info
