"""The item index interface: every backend (exact, HNSW, IVF-Flat, IVF-PQ, torch) is an
:class:`ItemIndex`.

An index holds item vectors (float32 ``[N, d]``) under the caller's item ids (int64 ``[N]``,
unique, >= 0) and answers maximum-inner-product queries. The base class owns everything the
backends share: input validation, the id array (backends store rows ``0..N-1``; ids are
mapped back here), exclusion of per-query ids by over-fetching, padding (id ``-1``, score
``-inf``) when fewer than ``k`` items are found, and the on-disk format::

    path/index.faiss   the FAISS index (``faiss.write_index``; the torch backend writes a flat one)
    path/ids.npy       int64 [N], row i's item id (``np.save``, loaded with allow_pickle=False)
    path/index.json    {"format": 1, "kind": ..., "dim": d, "count": N, "params": {...}}

Nothing here imports torch: serving loads indexes without it.
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tailored.errors import TailoredError
from tailored.retrieval._checks import IndexInputError, as_ids, as_vectors, exclusion_arrays

__all__ = ["FORMAT", "Exclude", "IndexInputError", "ItemIndex", "load_index"]

FORMAT = 1
Exclude = Sequence[Collection[int] | np.ndarray | None] | None
"""Per query, the item ids it must not return (a set, list or int array), or None."""

# Modules defining the implementations, imported on first load() so this one stays light.
_IMPLEMENTATIONS = (
    "tailored.retrieval.faiss_indexes",
    "tailored.retrieval.ivfflat",
    "tailored.retrieval.ivfpq",
    "tailored.retrieval.torch_index",
)


class ItemIndex(ABC):
    """Maximum inner product search over item vectors kept under caller ids.

    Subclasses set ``kind`` and ``exact`` and implement the four ``_backend_*`` hooks; they
    see only validated float32 arrays and row positions, never ids or exclusions.
    """

    kind: ClassVar[str]
    exact: ClassVar[bool]
    _kinds: ClassVar[dict[str, type[ItemIndex]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            ItemIndex._kinds[cls.kind] = cls

    def __init__(self, dim: int) -> None:
        if not isinstance(dim, int | np.integer) or dim <= 0:
            raise IndexInputError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self._ids = np.empty(0, dtype=np.int64)
        self._backend_reset()

    # -- the backend's part -------------------------------------------------------------
    @abstractmethod
    def _backend_reset(self) -> None:
        """Drop all vectors (and any training)."""

    @abstractmethod
    def _backend_add(self, vectors: np.ndarray) -> None:
        """Append float32 C-contiguous ``[n, d]`` rows at positions ``len(self)..``."""

    @abstractmethod
    def _backend_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """float32 ``[B, d]``, ``1 <= k <= len(self)`` -> (scores ``[B, k]``, rows int64
        ``[B, k]``); rows ``-1`` where nothing was found."""

    @abstractmethod
    def _backend_count(self) -> int:
        """How many vectors the backend holds (checked against the ids on load)."""

    @abstractmethod
    def _backend_write(self, path: Path) -> None:
        """Write the vectors (and structure) as a FAISS index file at ``path``."""

    @abstractmethod
    def _backend_read(self, path: Path) -> None:
        """Replace the contents with the FAISS index file at ``path``."""

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The construction parameters, JSON-serializable; ``type(self)(dim, **params)``."""

    # -- the shared part ----------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._ids.shape[0])

    @property
    def ids(self) -> np.ndarray:
        """The ids of the vectors, in the order added (int64 ``[N]``, read-only)."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    def build(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Replace the contents with ``vectors`` (float ``[N, d]``) under ``ids`` (int ``[N]``).

        Approximate indexes train on these vectors, so build with the whole catalog. Bad
        input raises before anything is replaced."""
        x = as_vectors(vectors, self.dim, "vectors")
        new = as_ids(ids, x.shape[0], np.empty(0, dtype=np.int64))
        self._ids = np.empty(0, dtype=np.int64)
        self._backend_reset()
        self._append(x, new)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Append ``vectors`` (float ``[n, d]``) under new, unique ``ids`` (int ``[n]``).
        Not safe while another thread searches: build a new index and swap it in instead."""
        x = as_vectors(vectors, self.dim, "vectors")
        self._append(x, as_ids(ids, x.shape[0], self._ids))

    def _append(self, x: np.ndarray, ids: np.ndarray) -> None:
        if x.shape[0]:
            self._backend_add(x)
            self._ids = np.concatenate([self._ids, ids])

    def search(
        self, queries: np.ndarray, k: int, exclude: Exclude = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items by inner product for each query row.

        queries: float ``[B, d]``; exclude: ``B`` entries of ids to leave out (or None).
        Returns (scores float32 ``[B, k]``, ids int64 ``[B, k]``), best first; rows with fewer
        than ``k`` items (small catalog, exclusions) end in id ``-1`` with score ``-inf``.
        """
        q = as_vectors(queries, self.dim, "queries")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
            raise IndexInputError(f"k must be a positive integer, got {k!r}")
        excluded = exclusion_arrays(exclude, q.shape[0])
        if len(self) == 0 or q.shape[0] == 0:
            return (
                np.full((q.shape[0], k), -np.inf, dtype=np.float32),
                np.full((q.shape[0], k), -1, dtype=np.int64),
            )
        n_excl = np.array([len(e) for e in excluded], dtype=np.int64)
        # First pass: room for a typical exclusion list. Rows that come back short of k while
        # the catalog has more are searched again with room for every excluded id, which is
        # exact for exact backends (the k + |exclude| best always hold the k best kept).
        fetch = min(len(self), k + int(min(n_excl.max(), 4 * k)))
        if fetch == k and not n_excl.any():  # the common case, kept cheap for batch 1
            raw, pos = self._backend_search(q, k)
            if (pos >= 0).all():
                return raw, self._ids[pos]
        scores, ids = self._top(q, fetch, k, excluded)
        for row in np.flatnonzero((ids >= 0).sum(axis=1) < k):
            full = min(len(self), k + int(n_excl[row]))
            if full > fetch:
                one = self._top(q[row : row + 1], full, k, excluded[row : row + 1])
                scores[row], ids[row] = one[0][0], one[1][0]
        return scores, ids

    def _top(
        self, q: np.ndarray, fetch: int, k: int, excluded: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search ``fetch`` deep; the best ``k`` kept (found, not excluded) items per row as
        (scores float32 [B, k], ids int64 [B, k]), padded."""
        raw, pos = self._backend_search(q, fetch)
        keep = pos >= 0
        found = np.where(keep, self._ids[np.maximum(pos, 0)], -1)
        for i, excl in enumerate(excluded):
            if excl.size:  # sorted and unique (exclusion_arrays): a binary search each
                at = np.minimum(np.searchsorted(excl, found[i]), excl.size - 1)
                keep[i] &= excl[at] != found[i]
        if not keep.all():  # kept entries first, their order unchanged
            order = np.argsort(~keep, axis=1, kind="stable")
            raw, found, keep = (np.take_along_axis(a, order, 1) for a in (raw, found, keep))
        width = min(k, fetch)
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        ids = np.full((q.shape[0], k), -1, dtype=np.int64)
        scores[:, :width] = np.where(keep[:, :width], raw[:, :width], -np.inf)
        ids[:, :width] = np.where(keep[:, :width], found[:, :width], -1)
        return scores, ids

    def describe(self) -> dict[str, Any]:
        """What the index is, for a manifest or a log line (JSON-serializable)."""
        return {
            "kind": self.kind,
            "exact": self.exact,
            "dim": self.dim,
            "count": len(self),
            "params": self.params,
        }

    def save(self, path: str | Path) -> Path:
        """Write the index into the directory ``path`` (created; files overwritten)."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self._backend_write(out / "index.faiss")
        np.save(out / "ids.npy", self._ids, allow_pickle=False)
        meta = {"format": FORMAT, "kind": self.kind, "dim": self.dim, "count": len(self)}
        (out / "index.json").write_text(json.dumps({**meta, "params": self.params}, indent=2))
        return out

    @classmethod
    def load(cls, path: str | Path) -> ItemIndex:
        """Read an index written by :meth:`save`; the kind comes from ``index.json``."""
        return load_index(path)

    @classmethod
    def for_kind(cls, kind: str) -> type[ItemIndex]:
        """The implementation registered under ``kind`` ("exact", "hnsw", "ivfflat", "ivfpq",
        "torch")."""
        for module in _IMPLEMENTATIONS:
            importlib.import_module(module)  # registers its classes; imports no torch
        if kind not in cls._kinds:
            raise IndexInputError(f"unknown index kind {kind!r}; known: {sorted(cls._kinds)}")
        return cls._kinds[kind]


def load_index(path: str | Path, **options: Any) -> ItemIndex:
    """Read the index saved in directory ``path``; ``options`` go to the constructor
    (e.g. ``gpu=False``). Raises :class:`TailoredError` for a missing or inconsistent one."""
    root = Path(path)
    try:
        meta = json.loads((root / "index.json").read_text())
        ids = np.load(root / "ids.npy", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise TailoredError(f"{root}: not a readable saved index ({e})") from e
    if meta.get("format") != FORMAT:
        raise TailoredError(f"{root}/index.json: format {meta.get('format')!r}, expected {FORMAT}")
    try:
        index = ItemIndex.for_kind(meta["kind"])(int(meta["dim"]), **meta["params"], **options)
    except TailoredError as e:  # the file is named here, the constructor cannot
        raise type(e)(f"{root}: {e}") from e
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise TailoredError(f"{root}/ids.npy: {ids.dtype} {ids.shape}, expected 1-d integers")
    index._backend_read(root / "index.faiss")
    index._ids = np.ascontiguousarray(ids, dtype=np.int64)
    if index._backend_count() != ids.shape[0] or ids.shape[0] != meta["count"]:
        raise TailoredError(
            f"{root}/ids.npy: {ids.shape[0]} ids, but index.faiss holds "
            f"{index._backend_count()} vectors and index.json says {meta['count']}"
        )
    return index
