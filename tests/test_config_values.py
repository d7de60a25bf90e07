"""Configuration refuses nonsense at load: every number finite and in its range (hypothesis
over every numeric field of every table), misspelled tables, and nothing left behind."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tailored.cli import main
from tailored.config import (
    Config,
    ServeConfig,
    load_config,
    load_serve_config,
)
from tailored.errors import ConfigError

_TRAINING = {f.name: f.type for f in dataclasses.fields(Config)}
# (table, key, int or float) for every numeric key of every table
NUMERIC = [
    (table, f.name, hint)
    for table, cls in [
        *((t, typing.get_type_hints(Config)[t]) for t in _TRAINING),
        ("serve", ServeConfig),
    ]
    for f in dataclasses.fields(cls)
    if (hint := typing.get_type_hints(cls)[f.name]) in (int, float)
]
# keys where a negative number has a meaning (a rating scale may be centred on 0: thumbs -1/1)
NEGATIVE_ALLOWED = {("data", "min_rating"), ("serve", "rating_min")}


def _load(table: str, key: str, value: object) -> None:
    if table == "serve":
        load_serve_config(overrides={key: value})
    else:
        load_config(values={table: {key: value}})


def test_every_table_has_numeric_keys_under_test() -> None:
    assert {t for t, _, _ in NUMERIC} == {*_TRAINING, "serve"}
    assert len(NUMERIC) > 60


@settings(max_examples=150, deadline=None)
@given(
    field=st.sampled_from([(t, k) for t, k, hint in NUMERIC if hint is float]),
    value=st.sampled_from([math.nan, math.inf, -math.inf]),
)
def test_a_number_that_is_not_finite_is_refused_naming_the_key(
    field: tuple[str, str], value: float
) -> None:
    table, key = field
    with pytest.raises(ConfigError, match=rf"\[{table}\] {key}: must be a finite number"):
        _load(table, key, value)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_negative_number_is_refused_naming_the_key(data: st.DataObject) -> None:
    table, key, hint = data.draw(
        st.sampled_from([f for f in NUMERIC if f[:2] not in NEGATIVE_ALLOWED])
    )
    value = data.draw(
        st.integers(max_value=-1)
        if hint is int
        else st.floats(max_value=-1e-6, allow_nan=False, allow_infinity=False)
    )
    with pytest.raises(ConfigError, match=rf"\b{key}\b"):
        _load(table, key, value)


@pytest.mark.parametrize(
    ("table", "key", "value", "message"),
    [
        ("train", "lr", math.inf, "finite"),
        ("loss", "temperature", math.inf, "finite"),
        ("data", "min_view_seconds", -5.0, "must be >= 0"),
        ("data", "min_rating", math.nan, "finite"),
        ("train", "weight_decay", math.nan, "finite"),
        ("train", "max_minutes", math.nan, "finite"),
        ("serve", "watch_seconds", math.nan, "finite"),
        ("data", "positive_events", {"click": math.inf}, "finite"),
        ("index", "params", {"nprobe": math.nan}, "finite"),
        ("index", "params", {"nprobe": 0}, "params.nprobe: must be > 0"),
        ("train", "seed", 2**40, "seed"),
    ],
)
def test_the_values_a_hostile_user_tried_are_refused(
    table: str, key: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(table, key, value)


def test_a_misspelled_table_in_a_serving_configuration_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text("[serv]\nworkers = 2\n")
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['serv'\]"):
        load_serve_config(path)


def test_one_file_may_hold_the_training_and_the_serving_tables(tmp_path: Path) -> None:
    path = tmp_path / "both.toml"
    path.write_text("[train]\nseed = 3\n\n[serve]\nworkers = 2\n")
    assert load_config(path).train.seed == 3
    assert load_serve_config(path).workers == 2


def test_a_refused_configuration_leaves_no_run_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nweight_decay = nan\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out)]) == 2
    assert "[train] weight_decay: must be a finite number" in capsys.readouterr().err
    assert not out.exists()
