"""Encoding users' and items' declared fields into model inputs, with vocabularies.

Codes are ``int64`` with 0 reserved for "unknown / missing / padding", so a value never seen
in training (a new item's category, say) still has an input. Numeric fields are standardised
with the training table's mean and standard deviation; missing values become 0 (the mean).
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

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.fields if f.kind == "categorical"]

    @property
    def multi(self) -> list[str]:
        return [f.name for f in self.fields if f.kind == "multi_categorical"]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.fields if f.kind == "numeric"]

    def cardinalities(self, names: list[str]) -> list[int]:
        """Embedding table sizes (vocabulary + the 0 code) of ``names``."""
        return [len(self.vocabs[n]) + 1 for n in names]

    @classmethod
    def fit(cls, table: pa.Table, fields: tuple[FieldSpec, ...]) -> FeatureEncoder:
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
        return enc

    def transform(self, table: pa.Table) -> FeatureTable:
        rows = table.num_rows
        cat = np.zeros((rows, len(self.categorical)), np.int64)
        for j, name in enumerate(self.categorical):
            cat[:, j] = _codes(table.column(name), self.vocabs[name])
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
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FeatureEncoder:
        return cls(
            fields=[FieldSpec(f["name"], f["kind"]) for f in obj["fields"]],
            vocabs={k: list(v) for k, v in obj["vocabs"].items()},
            stats={k: (float(v[0]), float(v[1])) for k, v in obj["stats"].items()},
        )


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
