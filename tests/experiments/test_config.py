"""An experiments file is checked whole at load, and each refusal names the file, the
experiment and the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tailored.experiments import ExperimentError, load_experiments, parse_experiments

BASE: dict[str, Any] = {
    "holdout": {"share": 0.05, "salt": "hold"},
    "experiment": [
        {
            "name": "ranker-off",
            "layer": "ranking",
            "salt": "r1",
            "traffic": 0.5,
            "start": "2026-12-01T00:00:00+00:00",
            "end": "2027-01-01T00:00:00+00:00",
            "variant": [
                {"name": "on", "weight": 0.5},
                {"name": "off", "weight": 0.5, "ranker": False},
            ],
        },
        {
            "name": "fewer-candidates",
            "layer": "ranking",
            "salt": "c1",
            "traffic": 0.5,
            "traffic_offset": 0.5,
            "start": "2026-12-01T00:00:00+00:00",
            "end": "2027-01-01T00:00:00+00:00",
            "variant": [
                {"name": "200", "weight": 0.5},
                {"name": "100", "weight": 0.5, "candidates": 100},
            ],
        },
        {
            "name": "popularity-control",
            "layer": "content",
            "salt": "p1",
            "start": "2026-12-01T00:00:00+00:00",
            "end": "2027-01-01T00:00:00+00:00",
            "control": "popular",
            "variant": [
                {"name": "popular", "weight": 0.2, "popularity": True},
                {"name": "personalized", "weight": 0.8},
            ],
        },
    ],
}


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    at: Any = doc
    for key in path[:-1]:
        at = at[key]
    if value is _DELETE:
        del at[path[-1]]
    else:
        at[path[-1]] = value
    return doc


_DELETE = object()


def test_a_good_file_loads_with_every_field(tmp_path: Path) -> None:
    path = tmp_path / "experiments.toml"
    path.write_text(
        """
[holdout]
share = 0.05
salt = "hold"

[[experiment]]
name = "ranker-off"
layer = "ranking"
salt = "r1"
start = 2026-12-01T00:00:00Z
end = 2027-01-01T00:00:00Z

[[experiment.variant]]
name = "on"
weight = 0.5

[[experiment.variant]]
name = "off"
weight = 0.5
ranker = false
mmr_lambda = 0.5
bundle = "v000002"
"""
    )
    exps = load_experiments(path)
    e = exps.get("ranker-off")
    assert e.control == "on" and e.traffic == 1.0 and e.weights == (0.5, 0.5)
    assert dict(e.variant("off").changes) == {
        "ranker": False,
        "mmr_lambda": 0.5,
        "bundle": "v000002",
    }
    assert exps.bundles() == {"v000002"} and exps.holdout.share == 0.05
    assert e.status(e.start.timestamp() - 1) == "scheduled"
    assert e.status(e.start.timestamp()) == "running" and e.running(e.start.timestamp())
    assert e.status(e.end.timestamp()) == "ended"
    assert parse_experiments(BASE).get("popularity-control").control == "popular"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        # weights that overlap (sum past 1) or leave a gap
        (
            ("experiment", 0, "variant", 1, "weight"),
            0.7,
            r"'ranker-off': variant weights sum to 1.2",
        ),
        (
            ("experiment", 0, "variant", 1, "weight"),
            0.0,
            r"'ranker-off', variant 'off': weight: must be > 0",
        ),
        (
            ("experiment", 0, "variant", 1, "rankr"),
            False,
            r"'ranker-off', variant 'off': unknown key 'rankr'",
        ),
        (("experiment", 0, "variant", 1, "ranker"), "no", r"variant 'off': ranker: must be a bool"),
        (
            ("experiment", 1, "variant", 1, "candidates"),
            0,
            r"variant '100': candidates: must be >= 1",
        ),
        (("experiment", 0, "variant", 1, "mmr_lambda"), 2.0, r"mmr_lambda: must be in \[0, 1\]"),
        (
            ("experiment", 0, "variant", 1, "popularity_penalty"),
            -0.5,
            r"variant 'off': popularity_penalty: must be >= 0",
        ),
        (
            ("experiment", 0, "variant", 1, "popularity_penalty_below"),
            -2,
            r"variant 'off': popularity_penalty_below: must be >= 0",
        ),
        (
            ("experiment", 0, "variant", 1, "popularity_penalty_below"),
            1.5,
            r"variant 'off': popularity_penalty_below: must be an integer",
        ),
        (
            ("experiment", 0, "variant", 1, "weight"),
            float("nan"),
            r"weight: must be a finite number",
        ),
        # a salt reused in another layer (or anywhere)
        (
            ("experiment", 2, "salt"),
            "r1",
            r"'popularity-control': salt 'r1' is already used by experiment 'ranker-off'",
        ),
        (("experiment", 2, "salt"), "hold", r"salt 'hold' is already used by \[holdout\]"),
        # two experiments of one layer taking the same users at the same time
        (
            ("experiment", 1, "traffic_offset"),
            0.25,
            r"'ranker-off' and 'fewer-candidates' run at the same time in layer 'ranking'",
        ),
        (
            ("experiment", 1, "traffic"),
            0.75,
            r"'fewer-candidates': traffic_offset \+ traffic must lie within \[0, 1\]",
        ),
        (("experiment", 0, "traffic"), 0.0, r"'ranker-off': traffic: must be in \(0, 1\]"),
        (
            ("experiment", 0, "end"),
            "2026-11-01T00:00:00+00:00",
            r"'ranker-off': end .* is not after start",
        ),
        (
            ("experiment", 0, "start"),
            "2026-12-01T00:00:00",
            r"'ranker-off': start: .* has no UTC offset",
        ),
        (("experiment", 0, "start"), "yesterday", r"'ranker-off': start: not an ISO 8601 time"),
        (
            ("experiment", 0, "control"),
            "offf",
            r"'ranker-off': control 'offf' is not one of its variants",
        ),
        (
            ("experiment", 0, "variant"),
            [{"name": "on", "weight": 1.0}],
            r"'ranker-off': needs at least two variants",
        ),
        (("experiment", 0, "layr"), "x", r"'ranker-off': unknown key\(s\) \['layr'\]"),
        (("experiment", 0, "salt"), _DELETE, r"'ranker-off': 'salt' must be a non-empty string"),
        (("experiment", 1, "name"), "ranker-off", r"experiment 'ranker-off' is declared twice"),
        (("holdout", "share"), 1.0, r"\[holdout\] share: must be in \[0, 1\)"),
        (("experiments",), [], r"unknown table\(s\) \['experiments'\]"),
    ],
)
def test_a_bad_file_is_refused_naming_the_experiment_and_field(
    path: tuple[Any, ...], value: Any, message: str
) -> None:
    with pytest.raises(ExperimentError, match=message):
        parse_experiments(_with(path, value), "exp.toml")


def test_experiments_of_two_layers_may_not_change_one_thing_at_the_same_time() -> None:
    doc = _with(("experiment", 2, "variant", 1, "ranker"), True)
    both = r"\(layer 'content'\) run at the same time and both change \['ranker'\]"
    with pytest.raises(ExperimentError, match=rf"'ranker-off' \(layer 'ranking'\) .*{both}"):
        parse_experiments(doc)
    # one after the other, they may
    later = _with(("experiment", 2, "start"), "2027-01-01T00:00:00+00:00")
    later["experiment"][2]["end"] = "2027-02-01T00:00:00+00:00"
    later["experiment"][2]["variant"][1]["ranker"] = True
    assert len(parse_experiments(later).experiments) == 3
    # the penalty's strength and its places are one thing: the penalty
    doc = _with(("experiment", 0, "variant", 1, "popularity_penalty"), 0.4)
    doc["experiment"][2]["variant"][1]["popularity_penalty_below"] = 8
    both = r"both change \['popularity_penalty'\]"
    with pytest.raises(ExperimentError, match=both):
        parse_experiments(doc)


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match="cannot read"):
        load_experiments(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[experiment]\nname = ")
    with pytest.raises(ExperimentError, match=rf"{bad}: not valid TOML"):
        load_experiments(bad)
