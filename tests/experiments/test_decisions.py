"""A promoted variant is recorded beside the experiments file and applied on every load: the
experiment ends at the decision, the winner's changes are everyone's defaults, the losers'
bundles stay reserved; bad requests and bad decision files are refused by name."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path

import pytest

from tailored.experiments import (
    ExperimentError,
    decide,
    decisions_path,
    load_experiments,
)
from tailored.experiments.analysis import analyze
from tests.experiments.helpers import experiment_toml

START = dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp()
DAY = 86_400


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "experiments.toml"
    path.write_text(
        experiment_toml(
            "model",
            "model",
            "model-1",
            [("current", 0.5, {}), ("candidate", 0.5, {"bundle": "v000003", "mmr_lambda": 0.8})],
        )
        + experiment_toml(
            "ranker", "ranking", "ranker-1", [("on", 0.5, {}), ("off", 0.5, {"ranker": False})]
        )
    )
    return path


def _exposed_and_clicking(t0: int, users: int = 40) -> list[tuple[str, str, str, int, float]]:
    """``users`` users exposed at ``t0`` (ms), half to each variant, each clicking once."""
    events = []
    for i in range(users):
        variant = "current" if i % 2 else "candidate"
        events.append((f"u{i}", "exposure", f"model:{variant}", t0, 0.0))
        events.append((f"u{i}", "click", "7", t0 + 1000, 0.0))
    return events


def test_an_undecided_file_reserves_its_candidates_and_changes_nothing(tmp_path: Path) -> None:
    exps = load_experiments(_file(tmp_path))
    assert exps.decisions == () and exps.defaults() == {} and exps.promoted_bundle() is None
    assert exps.reserved() == {"v000003"}
    assert not decisions_path(tmp_path / "experiments.toml").exists()


def test_promoting_a_candidate_ends_its_experiment_and_makes_its_changes_everyones(
    tmp_path: Path,
) -> None:
    path = _file(tmp_path)
    at = START + 3 * DAY
    d = decide(path, "model", "candidate", at, "better clicks")
    assert (d.variant, d.rejected, d.reason) == ("candidate", (), "better clicks")
    exps = load_experiments(path)
    model = exps.get("model")
    assert model.decided == d and model.end.timestamp() == pytest.approx(at)
    assert not model.running(at - 1) and model.status(at - 1) == "promoted candidate"
    assert exps.get("ranker").decided is None and exps.get("ranker").running(at + 1)
    assert exps.defaults() == {"mmr_lambda": 0.8}
    assert exps.promoted_bundle() == "v000003" and exps.reserved() == frozenset()
    # a decision is made once
    with pytest.raises(ExperimentError, match="decided already"):
        decide(path, "model", "current", at + 1)
    # a later decision adds to the defaults; the file holds both, oldest first
    decide(path, "ranker", "off", at + DAY)
    exps = load_experiments(path)
    assert exps.defaults() == {"mmr_lambda": 0.8, "ranker": False}
    doc = json.loads(decisions_path(path).read_text())
    assert [x["experiment"] for x in doc["decisions"]] == ["model", "ranker"]


def test_keeping_the_control_leaves_the_candidate_reserved(tmp_path: Path) -> None:
    path = _file(tmp_path)
    decide(path, "model", "current", START + DAY)
    exps = load_experiments(path)
    assert exps.defaults() == {} and exps.promoted_bundle() is None
    assert exps.reserved() == {"v000003"}  # it lost: never everyone's unasked
    # the decision outlives the experiment's removal from the file
    path.write_text(
        experiment_toml(
            "ranker", "ranking", "ranker-1", [("on", 0.5, {}), ("off", 0.5, {"ranker": False})]
        )
    )
    assert load_experiments(path).reserved() == {"v000003"}


def test_a_bad_promotion_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    path = _file(tmp_path)
    with pytest.raises(ExperimentError, match="no variant 'winner'"):
        decide(path, "model", "winner", START + DAY)
    with pytest.raises(ExperimentError, match="no experiment 'nope'"):
        decide(path, "nope", "on", START + DAY)
    with pytest.raises(ExperimentError, match="has not started"):
        decide(path, "model", "candidate", 0.0)
    assert not decisions_path(path).exists()


def test_exposures_after_the_decision_do_not_join_the_analysis(tmp_path: Path) -> None:
    path = _file(tmp_path)
    t0 = int((START + DAY) * 1000)
    events = _exposed_and_clicking(t0)
    for i in range(40, 80):  # a process that had not applied the decision yet
        events.append((f"u{i}", "exposure", "model:candidate", t0 + 3 * DAY * 1000, 0.0))
    decide(path, "model", "candidate", START + 2 * DAY)
    result = analyze(load_experiments(path).get("model"), events, now_ms=t0 + 4 * DAY * 1000)
    assert result["users"] == 40


def test_a_decision_that_cannot_be_written_is_refused_by_name(tmp_path: Path) -> None:
    from tailored.experiments import DecisionRefused

    path = _file(tmp_path)
    # the temporary file cannot be created, as in a read-only folder (tests run as root)
    (tmp_path / f".{decisions_path(path).name}.{os.getpid()}.tmp").mkdir()
    with pytest.raises(DecisionRefused, match="cannot record the decision") as err:
        decide(path, "model", "candidate", START + DAY)
    assert str(decisions_path(path)) in str(err.value)


def test_two_deciders_at_once_lose_neither_decision(tmp_path: Path) -> None:
    path = _file(tmp_path)
    errors: list[Exception] = []

    def one(name: str, variant: str) -> None:
        try:
            decide(path, name, variant, START + DAY)
        except Exception as e:  # collected: the assertion below shows it
            errors.append(e)

    threads = [
        threading.Thread(target=one, args=("model", "candidate")),
        threading.Thread(target=one, args=("ranker", "off")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {d.experiment for d in load_experiments(path).decisions} == {"model", "ranker"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "expected an object with a 'decisions' list"),
        ("{", "not valid JSON"),
        ('{"decisions": [{"experiment": "model"}]}', "decision #1: 'variant'"),
        (
            '{"decisions": [{"experiment": "model", "variant": "x", "at": "yesterday"}]}',
            "decision #1: at: not an ISO 8601 time",
        ),
        (
            '{"decisions": [{"experiment": "model", "variant": "x", '
            '"at": "2026-12-02T00:00:00Z", "changes": {"colour": "red"}}]}',
            "changes: unknown key 'colour'",
        ),
    ],
)
def test_a_bad_decisions_file_is_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    path = _file(tmp_path)
    decisions_path(path).write_text(text)
    with pytest.raises(ExperimentError, match=message) as err:
        load_experiments(path)
    assert str(decisions_path(path)) in str(err.value)


def test_the_analysis_stops_counting_at_the_decision(tmp_path: Path) -> None:
    path = _file(tmp_path)
    t0 = int((START + DAY) * 1000)
    events = _exposed_and_clicking(t0)
    events += [(f"u{i}", "click", "8", t0 + 3 * DAY * 1000, 0.0) for i in range(40)]  # after
    before = analyze(load_experiments(path).get("model"), events, now_ms=t0 + 4 * DAY * 1000)
    decide(path, "model", "candidate", START + 2 * DAY)
    after = analyze(load_experiments(path).get("model"), events, now_ms=t0 + 4 * DAY * 1000)
    clicks = before["metrics"]["clicks"]["candidate"]["fixed"]
    assert clicks["mean_treatment"] == pytest.approx(2.0)
    clicks = after["metrics"]["clicks"]["candidate"]["fixed"]
    assert clicks["mean_treatment"] == pytest.approx(1.0)
    assert after["status"] == "promoted candidate"
