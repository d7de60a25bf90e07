"""Numeric fields' quantile buckets (``FeatureEncoder``): codes, JSON, old encoders."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pytest

from tailored.config import ModelConfig
from tailored.data.features import BUCKET_SUFFIX, FeatureEncoder
from tailored.data.schema import FieldSpec
from tailored.errors import ConfigError

FIELDS = (
    FieldSpec("gender", "categorical"),
    FieldSpec("age", "numeric"),
    FieldSpec("income", "numeric"),
)


def _table(ages: Sequence[float | None], incomes: Sequence[float | None] | None = None) -> pa.Table:
    n = len(ages)
    return pa.table(
        {
            "gender": pa.array(["f", "m"] * (n // 2) + ["f"] * (n % 2)),
            "age": pa.array(ages, pa.float64()),
            "income": pa.array(incomes if incomes is not None else [1.0] * n, pa.float64()),
        }
    )


def test_buckets_cut_at_quantiles_and_follow_the_categorical_columns() -> None:
    ages = [float(a) for a in range(20, 60)]  # 40 distinct values
    enc = FeatureEncoder.fit(_table(ages), FIELDS, buckets=4)
    assert enc.edges["age"] == pytest.approx(list(np.quantile(ages, [0.25, 0.5, 0.75])))
    # a field of one repeated value has no inner edge: one range
    assert enc.edges["income"] == []
    assert enc.columns == ["gender", "age" + BUCKET_SUFFIX, "income" + BUCKET_SUFFIX]
    assert enc.cardinalities(enc.columns) == [3, 5, 2]
    out = enc.transform(_table([20.0, 29.0, 30.0, 45.0, 59.0, 200.0, None, -5.0]))
    assert out.categorical.shape == (8, 3)
    np.testing.assert_array_equal(out.categorical[:, 1], [1, 1, 2, 3, 4, 4, 0, 1])
    # every row's code is an index its embedding table has
    assert (out.categorical < np.array(enc.cardinalities(enc.columns))).all()
    # each range holds about a quarter of the fitted rows
    counts = np.bincount(enc.transform(_table(ages)).categorical[:, 1], minlength=5)[1:]
    assert counts.tolist() == [10, 10, 10, 10]
    # the standardised value is still there
    assert out.numeric.shape == (8, 2)
    assert np.isnan(_table([None]).column("age").to_numpy(zero_copy_only=False)[0])
    assert out.numeric[6, 0] == 0.0


def test_bucket_edges_travel_in_the_json_and_an_old_encoder_has_none() -> None:
    enc = FeatureEncoder.fit(_table([float(a) for a in range(100)]), FIELDS)
    back = FeatureEncoder.from_json(enc.to_json())
    assert back.edges == enc.edges and back.columns == enc.columns
    table = _table([3.0, 50.0, None, 99.0])
    np.testing.assert_array_equal(
        back.transform(table).categorical, enc.transform(table).categorical
    )
    # an encoder saved before buckets existed (no "edges"): the declared columns only
    old = enc.to_json()
    del old["edges"]
    legacy = FeatureEncoder.from_json(old)
    assert legacy.columns == ["gender"]
    assert legacy.transform(table).categorical.shape == (4, 1)


def test_no_buckets_when_turned_off_and_the_setting_is_checked() -> None:
    enc = FeatureEncoder.fit(_table([1.0, 2.0, 3.0, 4.0]), FIELDS, buckets=0)
    assert enc.edges == {} and enc.columns == ["gender"]
    for bad in (-1, 1):
        with pytest.raises(ConfigError, match="numeric_buckets"):
            ModelConfig(numeric_buckets=bad).validate()
    ModelConfig(numeric_buckets=0).validate()


def test_a_field_with_a_heavy_repeated_value_gets_no_empty_range() -> None:
    ages = [18.0] * 60 + [float(a) for a in range(19, 59)]
    enc = FeatureEncoder.fit(_table(ages), FIELDS, buckets=10)
    codes = enc.transform(_table(ages)).categorical[:, 1]
    used = np.unique(codes)
    # every range between the first and the last holds fitted rows
    np.testing.assert_array_equal(used, np.arange(1, len(enc.edges["age"]) + 2))


def test_item_tags_leave_out_the_bucket_columns() -> None:
    from tailored.data.ranking_features import item_tags

    fields = (FieldSpec("category", "categorical"), FieldSpec("price", "numeric"))
    table = pa.table(
        {"category": pa.array(["a", "b", "a", "c"]), "price": pa.array([1.0, 5.0, 9.0, 20.0])}
    )
    enc = FeatureEncoder.fit(table, fields, buckets=4)
    items = enc.transform(table).with_padding_row()
    assert items.categorical.shape[1] == 2
    tags = item_tags(items, len(enc.categorical))
    np.testing.assert_array_equal(tags[:, 0], items.categorical[:, 0])
    assert tags.shape[1] == 1  # the category only: the price range is no tag
