"""Rows of string ids in a fixed table of ids, for many lookups against the same table.

``pyarrow.compute.index_in`` hashes its whole value set on every call: reading 100M events in
batches of a million against 10M users hashed the users a hundred times (5.6 s a batch on the
2-vCPU machine, most of the time a 10M-user log took to read). :class:`IdLookup` hashes the
table once: each id's bytes, right-padded with zeros to the longest id, are folded into a
64-bit hash, the hashes are sorted, and a batch is looked up by binary search and confirmed
byte for byte, so a hash collision can never give a wrong row. Where two different ids of the
table share a hash (about one table in 10^6 at 10M ids), it falls back to ``index_in``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["IdLookup"]

_MUL = np.uint64(0x9E3779B97F4A7C15)  # the 64-bit golden-ratio constant
_SHIFT = np.uint64(31)


def _bytes(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The values' bytes and offsets (uint8 [total], int64 [n + 1]) of a string or binary
    array, without copying the data where the array allows it."""
    if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type):
        off_type: type[np.integer] = np.int64
    elif pa.types.is_string(arr.type) or pa.types.is_binary(arr.type):
        off_type = np.int32
    else:
        arr = pc.cast(arr, pa.large_string())
        off_type = np.int64
    bufs = arr.buffers()
    n = len(arr)
    offsets = np.frombuffer(
        bufs[1], off_type, count=n + 1, offset=arr.offset * off_type(0).itemsize
    )
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return data, offsets.astype(np.int64)


def _padded(arr: pa.Array, width: int) -> tuple[np.ndarray, np.ndarray]:
    """uint64 [n, width / 8]: each value's first ``width`` bytes (a multiple of 8), right-padded
    with zeros; and int64 [n] the values' lengths in bytes (nulls: -1)."""
    data, off = _bytes(arr)
    n = len(arr)
    lengths = np.diff(off)
    start = int(off[0]) if n else 0
    if n and (lengths == width).all():  # every value the same length: a view of the buffer
        mat = data[start : start + n * width].reshape(n, width)
    else:
        mat = np.zeros((n, width), np.uint8)
        take = np.minimum(lengths, width)
        row = np.repeat(np.arange(n), take)
        col = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
        mat[row, col] = data[np.repeat(off[:-1], take) + col]
    if arr.null_count:
        lengths = np.where(arr.is_null().to_numpy(zero_copy_only=False), -1, lengths)
    return np.ascontiguousarray(mat).view(np.uint64), lengths


def _hash(words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """uint64 [n]: a hash of each row's words and its length."""
    h = lengths.astype(np.uint64) * _MUL
    for j in range(words.shape[1]):
        h ^= words[:, j]
        h *= _MUL
        h ^= h >> _SHIFT
    return h


class IdLookup:
    """Each value's row in ``ids`` (string or binary, the first row of an id that occurs
    twice), hashed once for any number of :meth:`rows` calls."""

    def __init__(self, ids: pa.Array | pa.ChunkedArray) -> None:
        self.ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        if not len(self.ids):
            self._width = 8
        else:
            longest = pc.max(pc.binary_length(self.ids)).as_py() or 0
            self._width = max(8, -(-int(longest) // 8) * 8)
        self._words, self._lengths = _padded(self.ids, self._width)
        h = _hash(self._words, self._lengths)
        self._order = np.argsort(h, kind="stable")
        self._sorted = h[self._order]
        same = np.flatnonzero(self._sorted[1:] == self._sorted[:-1])
        a, b = self._order[same], self._order[same + 1]
        # two different ids with one hash: the binary search could not tell them apart
        self._fallback = bool(
            len(same)
            and not (
                (self._words[a] == self._words[b]).all(axis=1)
                & (self._lengths[a] == self._lengths[b])
            ).all()
        )

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """int64 [len(values)]: the row in ``ids`` of each value, -1 where none (nulls too)."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if self._fallback or not len(self.ids):
            found = pc.index_in(values, value_set=self.ids)
            return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        words, lengths = _padded(values, self._width)
        h = _hash(words, lengths)
        # sorted queries walk the sorted table in order: 6x faster than random ones at 10M
        by_hash = np.argsort(h)
        at = np.empty(len(h), np.int64)
        at[by_hash] = np.searchsorted(self._sorted, h[by_hash])
        at = np.minimum(at, len(self._sorted) - 1)
        row = self._order[at]
        ok = (self._sorted[at] == h) & (self._lengths[row] == lengths)
        ok &= (self._words[row] == words).all(axis=1) & (lengths >= 0)
        return np.where(ok, row, -1)
