"""Input validation for indexes: one place, errors that name the argument and the fix."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from tailored.errors import TailoredError

__all__ = ["IndexInputError", "as_ids", "as_vectors", "exclusion_arrays"]


class IndexInputError(TailoredError, ValueError):
    """Vectors, ids, queries, k or an exclusion list given to an index are wrong."""


def as_vectors(x: object, dim: int, name: str) -> np.ndarray:
    """``x`` as float32 C-contiguous ``[n, dim]``; raises for another shape or non-finite
    values (NaN or inf would silently corrupt every ranking they take part in)."""
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise IndexInputError(f"{name}: not an array ({e})") from e
    if arr.dtype.kind not in "fiu":
        raise IndexInputError(f"{name}: expected a float array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        hint = " (one vector: pass x.reshape(1, -1))" if arr.ndim == 1 else ""
        raise IndexInputError(f"{name}: expected shape [n, {dim}], got {arr.shape}{hint}")
    if arr.shape[1] != dim:
        raise IndexInputError(f"{name}: dimension {arr.shape[1]} does not match the index's {dim}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        raise IndexInputError(f"{name}: row {bad} holds NaN or inf (as float32)")
    return out


def as_ids(ids: object, n: int, existing: np.ndarray) -> np.ndarray:
    """``ids`` as int64 ``[n]``: integers >= 0 (``-1`` marks padding in results), unique
    among themselves and against ``existing`` (the ids already in the index)."""
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise IndexInputError(f"ids: expected shape [{n}] (one per vector), got {arr.shape}")
    if n and arr.dtype.kind not in "iu":
        raise IndexInputError(f"ids: expected integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and n and arr.max() > np.iinfo(np.int64).max:
        raise IndexInputError("ids: values above the int64 range")
    out = np.ascontiguousarray(arr, dtype=np.int64)
    if n and out.min() < 0:
        raise IndexInputError(f"ids: must be >= 0 (-1 marks padding), got {out.min()}")
    uniq = np.unique(out)
    if uniq.shape[0] != n:
        dup = out[np.flatnonzero(np.diff(np.sort(out)) == 0)[0]]
        raise IndexInputError(f"ids: id {dup} appears more than once")
    clash = out[np.isin(out, existing)] if existing.size else out[:0]
    if clash.size:
        raise IndexInputError(f"ids: id {clash[0]} is already in the index")
    return out


def exclusion_arrays(
    exclude: Sequence[Collection[int] | np.ndarray | None] | None, n_queries: int
) -> list[np.ndarray]:
    """One int64 array of ids per query (empty where nothing is excluded)."""
    if exclude is None:
        return [np.empty(0, dtype=np.int64)] * n_queries
    if len(exclude) != n_queries:
        raise IndexInputError(
            f"exclude: {len(exclude)} entries for {n_queries} queries (one per query, or None)"
        )
    out = []
    for i, e in enumerate(exclude):
        arr = np.asarray(list(e) if isinstance(e, set | frozenset) else e if e is not None else [])
        if arr.size and (arr.ndim != 1 or arr.dtype.kind not in "iu"):
            raise IndexInputError(f"exclude[{i}]: expected a flat collection of integer ids")
        out.append(np.unique(arr.astype(np.int64, copy=False)))
    return out
