"""IVF-PQ with exact re-scoring: ``IndexRefineFlat(IndexIVFPQ)``, inner product.

The IVF-PQ part finds a shortlist of ``k * k_factor`` candidates cheaply (the query visits
``nprobe`` of ``nlist`` k-means cells and scores their items by product-quantized codes,
``m`` codes of ``nbits`` bits per item); the refine part re-scores the shortlist with the
full float32 vectors, so returned scores are exact inner products and the ranking within
the shortlist is exact. Memory: the float vectors (``4 d`` bytes per item) plus ``m nbits/8``
bytes of codes and 8 bytes of id per item.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from tailored.retrieval._checks import IndexInputError
from tailored.retrieval.faiss_indexes import _TRAIN_PER_LIST, _FaissIndex

__all__ = ["IVFPQIndex"]


class IVFPQIndex(_FaissIndex):
    """IVF-PQ shortlist + exact refine. nlist: k-means cells (~4 sqrt(N)); m: PQ sub-vectors
    (must divide d); nbits: bits per sub-vector code; nprobe: cells visited per query
    (speed vs recall); k_factor: shortlist size as a multiple of k.

    Trained on the first vectors added (:meth:`build` with the whole catalog). A catalog too
    small for the requested nlist/nbits trains with fewer (at least 39 items per cell, at
    most ``2**nbits <= N`` codes); :meth:`describe` reports the effective values.
    """

    kind = "ivfpq"
    gpu_capable = True
    search_params = ("nprobe", "k_factor")

    def __init__(
        self,
        dim: int,
        *,
        nlist: int = 4096,
        m: int = 16,
        nbits: int = 8,
        nprobe: int = 32,
        k_factor: int = 4,
        gpu: bool | None = None,
    ) -> None:
        values = {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": nprobe, "k_factor": k_factor}
        for name, value in values.items():
            if value <= 0:
                raise IndexInputError(f"ivfpq: {name} must be >= 1, got {value}")
        if dim % m:
            divisors = [i for i in range(1, dim + 1) if dim % i == 0]
            raise IndexInputError(f"ivfpq: m={m} must divide dim={dim}; choose from {divisors}")
        if nbits > 16:
            raise IndexInputError(f"ivfpq: nbits must be <= 16, got {nbits}")
        self.nlist, self.m, self.nbits = int(nlist), int(m), int(nbits)
        self.nprobe, self.k_factor = int(nprobe), int(k_factor)
        super().__init__(dim, gpu=gpu)

    @property
    def params(self) -> dict[str, Any]:
        return {
            "nlist": self.nlist,
            "m": self.m,
            "nbits": self.nbits,
            "nprobe": self.nprobe,
            "k_factor": self.k_factor,
        }

    def _new_index(self, nlist: int | None = None, nbits: int | None = None) -> Any:
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFPQ(
            quantizer,
            self.dim,
            nlist or self.nlist,
            self.m,
            nbits or self.nbits,
            faiss.METRIC_INNER_PRODUCT,
        )
        return faiss.IndexRefineFlat(ivf)

    def _configure(self, index: Any) -> None:
        index.k_factor = float(self.k_factor)
        faiss.extract_index_ivf(index).nprobe = self.nprobe

    def _train(self, vectors: np.ndarray) -> None:
        n = vectors.shape[0]
        nlist = min(self.nlist, max(1, n // 39))
        nbits = min(self.nbits, max(1, int(math.log2(max(n, 2)))))
        if (nlist, nbits) != (self.nlist, self.nbits):
            self._index = self._new_index(nlist, nbits)
            self._configure(self._index)
        # k-means on a seeded sample: 40 points per cell is enough (FAISS asks for 39), and
        # all of a 1M catalog would cost minutes; tiny catalogs repeat rows so that PQ has
        # 2**nbits points to fit.
        rng = np.random.default_rng(0)
        size = min(n, _TRAIN_PER_LIST * max(nlist, 2**nbits))
        sample = vectors[np.sort(rng.choice(n, size, replace=False))] if size < n else vectors
        if sample.shape[0] < 2**nbits:
            sample = np.resize(sample, (2**nbits, self.dim))
        ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(self._index))
        ivf.pq.cp.max_points_per_centroid = _TRAIN_PER_LIST  # PQ k-means in 2-4 dims is slow
        self._index.train(np.ascontiguousarray(sample))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(self._index))  # IndexIVFPQ
        info["effective"] = {"nlist": int(ivf.nlist), "nbits": int(ivf.pq.nbits)}
        return info
