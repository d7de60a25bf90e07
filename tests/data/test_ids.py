"""IdLookup gives the rows pyarrow's index_in gives, for every shape of id array."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tailored.data import ids as ids_module
from tailored.data.ids import IdLookup


def _expected(values: pa.Array, table: pa.Array) -> np.ndarray:
    found = pc.index_in(values, value_set=table)
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _hex_ids(rng: np.random.Generator, n: int) -> list[str]:
    return [f"{x:032x}" for x in rng.integers(0, 2**62, n)]


def test_fixed_length_ids_match_index_in() -> None:
    rng = np.random.default_rng(0)
    table = pa.array(_hex_ids(rng, 5000))
    values = pa.array(table.to_pylist()[::7] + _hex_ids(rng, 300) + ["short", ""])
    values = values.take(pa.array(rng.permutation(len(values))))
    got = IdLookup(table).rows(values)
    np.testing.assert_array_equal(got, _expected(values, table))
    assert (got >= 0).sum() == len(table.to_pylist()[::7])


@pytest.mark.parametrize("kind", [pa.string(), pa.large_string(), pa.binary()])
def test_variable_length_unicode_sliced_and_chunked(kind: pa.DataType) -> None:
    rng = np.random.default_rng(1)
    words = ["a", "ab", "b", "é", "éé", "user-1", "user-10", "x" * 40, "a\x00", "", "日本"]
    raw = words + [f"u{i}" for i in range(500)]
    table = pa.array(raw, pa.string()).cast(kind)
    picked = [raw[i] for i in rng.integers(0, len(raw), 2000)] + ["zz", "x" * 41, "u5000"]
    values = pa.array(picked, pa.string()).cast(kind)
    lookup = IdLookup(table)
    np.testing.assert_array_equal(lookup.rows(values), _expected(values, table))
    sliced = values.slice(17, 900)  # an array with an offset into its buffers
    np.testing.assert_array_equal(lookup.rows(sliced), _expected(sliced, table))
    chunked = pa.chunked_array([values.slice(0, 100), values.slice(100)])
    np.testing.assert_array_equal(lookup.rows(chunked), _expected(values, table))
    # a table given in chunks and with an offset
    np.testing.assert_array_equal(
        IdLookup(pa.chunked_array([table.slice(0, 5), table.slice(5)])).rows(values),
        _expected(values, table),
    )


def test_nulls_and_duplicates_and_empty() -> None:
    table = pa.array(["a", "b", "a", "c"])
    values = pa.array(["a", None, "c", "d"])
    np.testing.assert_array_equal(IdLookup(table).rows(values), [0, -1, 3, -1])
    assert IdLookup(pa.array([], pa.string())).rows(values).tolist() == [-1, -1, -1, -1]
    assert IdLookup(table).rows(pa.array([], pa.string())).tolist() == []


def test_a_hash_shared_by_two_ids_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # every id hashes alike: the binary search could not tell them apart, so index_in answers
    monkeypatch.setattr(ids_module, "_hash", lambda words, lengths: np.zeros(len(words), np.uint64))
    table = pa.array(["a", "b", "c"])
    lookup = IdLookup(table)
    assert lookup._fallback
    np.testing.assert_array_equal(lookup.rows(pa.array(["c", "z", "a"])), [2, -1, 0])
