"""FAISS backends: exact (flat) and HNSW here; IVF-Flat (``ivfflat.py``) and IVF-PQ with an
exact re-scoring of its shortlist (``ivfpq.py``) on the same plumbing.

Each keeps a CPU FAISS index, the one written to disk, whose rows are positions ``0..N-1``
(the base class maps them to item ids). Where FAISS sees a GPU (``faiss.get_num_gpus() > 0``,
i.e. a faiss-gpu build on a CUDA machine), exact and IVF search on a GPU copy made on first
search after a change; :func:`_gpu_copy` is the only place that decides. A copy FAISS refuses
(IVF's nprobe above its GPU limit of 2,048) leaves that search on the CPU until the contents
or the parameters change. HNSW has no FAISS GPU version and stays on the CPU.
"""

from __future__ import annotations

import functools
import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from tailored.retrieval._checks import IndexInputError
from tailored.retrieval.index import ItemIndex

__all__ = ["ExactIndex", "HNSWIndex", "faiss_gpu_count", "set_num_threads"]

_log = logging.getLogger(__name__)
_GPU_MAX_K = 2048  # FAISS GPU k-selection limit; deeper searches run on the CPU copy
_TRAIN_PER_LIST = 40  # k-means sample per IVF list / PQ centroid (FAISS warns under 39)


def set_num_threads(n: int) -> None:
    """Threads FAISS's OpenMP loops use, process-wide (searches, training, adds)."""
    if n <= 0:
        raise IndexInputError(f"threads must be >= 1, got {n}")
    faiss.omp_set_num_threads(int(n))


@functools.cache
def faiss_gpu_count() -> int:
    """GPUs this FAISS build can use: 0 for faiss-cpu or a machine without CUDA."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


@functools.cache
def _gpu_resources() -> Any:
    return faiss.StandardGpuResources()


def _gpu_copy(index: Any, want: bool | None) -> Any | None:
    """A GPU copy of ``index`` when ``want`` is True, or None (auto) and a GPU exists."""
    if want is False or faiss_gpu_count() == 0:
        if want:
            raise IndexInputError("gpu=True, but this FAISS build sees no GPU (faiss-gpu?)")
        return None
    try:
        return faiss.index_cpu_to_gpu(_gpu_resources(), 0, index)
    except (AttributeError, RuntimeError) as e:  # a kind or parameter the GPU lacks
        _log.warning("searching on the CPU: FAISS could not copy the index to the GPU (%s)", e)
        return None


class _FaissIndex(ItemIndex):
    """Shared FAISS plumbing; subclasses build the CPU index and set search parameters."""

    exact: ClassVar[bool] = False
    gpu_capable: ClassVar[bool] = False
    search_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, dim: int, *, gpu: bool | None = None) -> None:
        self._gpu = gpu if self.gpu_capable else False
        self._device_index: Any | None = None
        self._gpu_refused = False  # the copy failed for the current contents and parameters
        self._index: Any = None
        super().__init__(dim)

    def _changed(self) -> None:
        """Contents or search parameters changed: the next GPU search copies afresh (a copy
        refused for a parameter, IVF's nprobe above FAISS's GPU limit, may succeed now)."""
        self._device_index = None
        self._gpu_refused = False

    @abstractmethod
    def _new_index(self) -> Any:
        """An empty CPU FAISS index for ``self.dim``."""

    def _configure(self, index: Any) -> None:
        """Apply search-time parameters (efSearch, nprobe...) to a fresh or loaded index."""

    def set_search_params(self, **params: int) -> None:
        """Change search-time parameters (HNSW efSearch; IVF nprobe; IVF-PQ k_factor) without a
        rebuild; they are saved with the index."""
        for name, value in params.items():
            if name not in self.search_params:
                raise IndexInputError(f"{self.kind}: {name!r} is not one of {self.search_params}")
            if value <= 0:
                raise IndexInputError(f"{self.kind}: {name} must be >= 1, got {value}")
            setattr(self, name, int(value))
        self._configure(self._index)
        self._changed()

    def _train(self, vectors: np.ndarray) -> None:
        """Train an untrained index on the first vectors added (IVF-PQ)."""

    def _backend_reset(self) -> None:
        self._index = self._new_index()
        self._configure(self._index)
        self._changed()

    def _backend_add(self, vectors: np.ndarray) -> None:
        if not self._index.is_trained:
            self._train(vectors)
        self._index.add(vectors)
        self._changed()

    def _backend_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._index
        if self.gpu_capable and self._gpu is not False and k <= _GPU_MAX_K:
            if self._device_index is None and not self._gpu_refused:
                self._device_index = _gpu_copy(self._index, self._gpu)
                self._gpu_refused = self._device_index is None
            index = self._device_index if self._device_index is not None else index
        scores, rows = index.search(queries, k)
        return scores, rows.astype(np.int64, copy=False)

    def _backend_count(self) -> int:
        return int(self._index.ntotal)

    def _backend_write(self, path: Path) -> None:
        faiss.write_index(self._index, str(path))

    def _backend_read(self, path: Path) -> None:
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise IndexInputError(f"{path}: FAISS could not read it ({e})") from e
        if index.d != self.dim:
            raise IndexInputError(f"{path}: dimension {index.d}, index.json says {self.dim}")
        self._index = index
        self._configure(index)
        self._changed()

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["device"] = "gpu" if self._device_index is not None else "cpu"
        info["bytes"] = int(faiss.serialize_index(self._index).nbytes)
        return info


class ExactIndex(_FaissIndex):
    """Brute-force inner product (``IndexFlatIP``): the ground truth the others are held to."""

    kind = "exact"
    exact = True
    gpu_capable = True

    def _new_index(self) -> Any:
        return faiss.IndexFlatIP(self.dim)

    @property
    def params(self) -> dict[str, Any]:
        return {}


class HNSWIndex(_FaissIndex):
    """Graph search (``IndexHNSWFlat``, inner product). M: links per node (memory ~ 8 M bytes
    per item on top of the vectors); efConstruction: build-time beam (build time, quality);
    efSearch: query-time beam (speed vs recall; FAISS uses at least k)."""

    kind = "hnsw"
    search_params = ("efSearch",)

    def __init__(
        self,
        dim: int,
        *,
        M: int = 32,
        efConstruction: int = 80,
        efSearch: int = 128,
        gpu: bool | None = None,
    ) -> None:
        for name, value in (("M", M), ("efConstruction", efConstruction), ("efSearch", efSearch)):
            if value <= 0:
                raise IndexInputError(f"hnsw: {name} must be >= 1, got {value}")
        self.M, self.efConstruction, self.efSearch = int(M), int(efConstruction), int(efSearch)
        super().__init__(dim, gpu=gpu)

    def _new_index(self) -> Any:
        index = faiss.IndexHNSWFlat(self.dim, self.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.efConstruction
        return index

    def _configure(self, index: Any) -> None:
        index.hnsw.efSearch = self.efSearch

    @property
    def params(self) -> dict[str, Any]:
        return {"M": self.M, "efConstruction": self.efConstruction, "efSearch": self.efSearch}
