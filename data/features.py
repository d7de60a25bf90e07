"""Encoding users' and items' declared fields into model inputs, with vocabularies.

Codes are ``int64`` with 0 reserved for "unknown / missing / padding", so a value never seen
in training (a new item's category, say) still has an input. Numeric fields are standardised
with the training table's mean and standard deviation; missing values become 0 (the mean).
Each numeric field is also cut at its training table's quantiles into at most
``NUMERIC_BUCKETS`` ranges, whose codes (0: missing) follow the categorical fields' columns as
one more categorical input (``<name>:bucket``): a tower then learns an embedding per range
(an age band, a price band) instead of one slope through a standardised value, as feature
pipelines bucketize numbers for embedding models. On the synthetic site, whose tastes are
planted per age band, the bucket raised the two-stage planted-truth recall@10 (see
``benchmarks/RESULTS.md``). An encoder saved before buckets existed has none and encodes as
it did.
Everything here is plain JSON-able state: vocabularies travel in the model bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tailored.data.schema import FieldSpec

__all__ = ["FeatureEncoder", "FeatureTable", "user_hash_buckets"]

MAX_MULTI = 8  # values kept per multi-categorical field (e.g. genres); more are rare
NUMERIC_BUCKETS = 10  # quantile ranges per numeric field (fewer where values repeat)
BUCKET_SUFFIX = ":bucket"


@dataclass
class FeatureTable:
    """Encoded fields of one table, one row per entity.

    ``categorical``: int64 [R, C]; ``multi``: int64 [R, M, MAX_MULTI] (0-padded);
    ``numeric``: float32 [R, F].
    """

    categorical: np.ndarray
    multi: np.ndarray
    numeric: np.ndarray

    def take(self, rows: np.ndarray) -> FeatureTable:
        return FeatureTable(self.categorical[rows], self.multi[rows], self.numeric[rows])

    def with_padding_row(self) -> FeatureTable:
        """A copy with an all-zero row 0 in front (for 1-based item indices)."""

        def pad(a: np.ndarray) -> np.ndarray:
            return np.concatenate([np.zeros((1, *a.shape[1:]), a.dtype), a])

        return FeatureTable(pad(self.categorical), pad(self.multi), pad(self.numeric))


@dataclass
class FeatureEncoder:
    """Vocabularies and numeric statistics for a set of fields, fitted on one table."""

    fields: list[FieldSpec]
    vocabs: dict[str, list[str]] = field(default_factory=dict)
    stats: dict[str, tuple[float, float]] = field(default_factory=dict)
    # numeric field -> its inner bucket edges, increasing (absent: no bucket column)
    edges: dict[str, list[float]] = field(default_factory=dict)

    @property
    def categorical(self) -> list[str]:
        """The declared categorical fields: the first columns of ``FeatureTable.categorical``."""
        return [f.name for f in self.fields if f.kind == "categorical"]

    @property
    def bucketed(self) -> list[str]:
        """The numeric fields with a bucket column, in column order."""
        return [n for n in self.numeric if n in self.edges]

    @property
    def columns(self) -> list[str]:
        """Every column of ``FeatureTable.categorical``: the categorical fields, then one
        ``<name>:bucket`` per bucketed numeric field."""
        return self.categorical + [n + BUCKET_SUFFIX for n in self.bucketed]

    @property
    def multi(self) -> list[str]:
        return [f.name for f in self.fields if f.kind == "multi_categorical"]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.fields if f.kind == "numeric"]

    def cardinalities(self, names: list[str]) -> list[int]:
        """Embedding table sizes (vocabulary + the 0 code) of ``names`` (fields or
        :attr:`columns`)."""
        return [self._size(n) for n in names]

    def _size(self, name: str) -> int:
        if name.endswith(BUCKET_SUFFIX) and name not in self.vocabs:
            return len(self.edges[name.removesuffix(BUCKET_SUFFIX)]) + 2
        return len(self.vocabs[name]) + 1

    def bucket(self, name: str, values: np.ndarray) -> np.ndarray:
        """Numeric field ``name``'s bucket codes of raw ``values`` float [R], int64 [R]:
        1 + the number of its edges at or below the value; 0 where the value is missing."""
        arr = np.asarray(values, np.float64)
        codes = np.searchsorted(np.asarray(self.edges[name], np.float64), arr, side="right") + 1
        return np.where(np.isfinite(arr), codes, 0).astype(np.int64)

    @classmethod
    def fit(
        cls, table: pa.Table, fields: tuple[FieldSpec, ...], buckets: int = NUMERIC_BUCKETS
    ) -> FeatureEncoder:
        """Vocabularies, statistics and (``buckets`` > 0) bucket edges of ``fields`` over
        ``table``'s rows."""
        enc = cls(fields=[f for f in fields if f.kind != "text"])
        for f in enc.fields:
            col = table.column(f.name)
            if f.kind == "categorical":
                values = pc.unique(pc.drop_null(col)).to_pylist()
                enc.vocabs[f.name] = sorted(str(v) for v in values)
            elif f.kind == "multi_categorical":
                flat = pc.list_flatten(col)
                enc.vocabs[f.name] = sorted(
                    str(v) for v in pc.unique(pc.drop_null(flat)).to_pylist()
                )
            else:
                arr = col.to_numpy(zero_copy_only=False).astype(np.float64)
                arr = arr[np.isfinite(arr)]
                mean = float(arr.mean()) if len(arr) else 0.0
                std = float(arr.std()) if len(arr) > 1 else 1.0
                enc.stats[f.name] = (mean, std if std > 0 else 1.0)
                if buckets > 0:
                    enc.edges[f.name] = _quantile_edges(arr, buckets)
        return enc

    def transform(self, table: pa.Table) -> FeatureTable:
        rows = table.num_rows
        cat = np.zeros((rows, len(self.columns)), np.int64)
        for j, name in enumerate(self.categorical):
            cat[:, j] = _codes(table.column(name), self.vocabs[name])
        first = len(self.categorical)
        for j, name in enumerate(self.bucketed):
            raw = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
            cat[:, first + j] = self.bucket(name, raw)
        multi = np.zeros((rows, len(self.multi), MAX_MULTI), np.int64)
        for j, name in enumerate(self.multi):
            col = table.column(name).combine_chunks()
            lists = col.to_pylist()
            lookup = {v: i + 1 for i, v in enumerate(self.vocabs[name])}
            for r, values in enumerate(lists):
                codes = [lookup.get(str(v), 0) for v in (values or [])][:MAX_MULTI]
                multi[r, j, : len(codes)] = codes
        num = np.zeros((rows, len(self.numeric)), np.float32)
        for j, name in enumerate(self.numeric):
            mean, std = self.stats[name]
            arr = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
            z = (arr - mean) / std
            num[:, j] = np.where(np.isfinite(z), z, 0.0)
        return FeatureTable(cat, multi, num)

    def to_json(self) -> dict[str, Any]:
        return {
            "fields": [{"name": f.name, "kind": f.kind} for f in self.fields],
            "vocabs": self.vocabs,
            "stats": {k: list(v) for k, v in self.stats.items()},
            "edges": self.edges,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FeatureEncoder:
        return cls(
            fields=[FieldSpec(f["name"], f["kind"]) for f in obj["fields"]],
            vocabs={k: list(v) for k, v in obj["vocabs"].items()},
            stats={k: (float(v[0]), float(v[1])) for k, v in obj["stats"].items()},
            edges={k: [float(x) for x in v] for k, v in obj.get("edges", {}).items()},
        )


def _quantile_edges(values: np.ndarray, buckets: int) -> list[float]:
    """The distinct inner quantiles of finite ``values`` cutting them into ``buckets`` ranges
    of about equal counts (fewer where values repeat; none without values)."""
    if not len(values):
        return []
    inner = np.quantile(values, np.linspace(0.0, 1.0, buckets + 1)[1:-1])
    edges = np.unique(inner)
    # an edge at the least value would leave its first range empty
    return [float(e) for e in edges if e > values.min()]


def _codes(col: pa.ChunkedArray | pa.Array, vocab: list[str]) -> np.ndarray:
    """1-based codes of ``col`` in ``vocab``; unknown and missing values are 0."""
    idx = pc.index_in(pc.cast(col, pa.string()), value_set=pa.array(vocab, pa.string()))
    return np.asarray(pc.fill_null(pc.add(idx, 1), 0).to_numpy(zero_copy_only=False), np.int64)


def user_hash_buckets(user_ids: np.ndarray, buckets: int) -> np.ndarray:
    """Hashed id bucket per user (1..buckets; 0 when disabled), int64 [U]. Pseudonyms are
    hex HMACs, so their leading digits are already uniformly distributed."""
    if buckets <= 0:
        return np.zeros(len(user_ids), np.int64)
    return np.array([int(str(u)[:12], 16) % buckets + 1 for u in user_ids], np.int64)
