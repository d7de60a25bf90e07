"""The ablation benchmark end to end on a tiny synthetic site: the baseline and the
availability row run, the latter on the baseline's own models, and the JSON holds every
figure the table reads."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from benchmarks._paths import ROOT
from benchmarks.quality.ablation import _cohorts, main
from tailored.config import load_config

pytestmark = pytest.mark.slow  # trains the towers and the ranker (about 20 s on 2 cores)


def test_the_availability_row_scores_the_baselines_models_again(tmp_path: Path) -> None:
    out = tmp_path / "ablation.json"
    site = ["--dataset", "synthetic", "--seeds", "0", "--users", "1000", "--items", "300"]
    main([*site, "--rows", "no_availability", "--new-item-slots", "1", "--out-json", str(out)])
    report = json.loads(out.read_text())
    assert list(report["rows"]) == ["baseline", "no_availability"]
    assert report["new_item_slots"] == 1 and report["plan"]["test_users"] > 0
    # the rows read a copy of the shipped file taken at the start, recorded by its hash
    shipped = ROOT / "configs" / "synthetic.toml"
    assert report["config"] == "configs/synthetic.toml"
    assert report["config_sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    base, row = report["rows"]["baseline"], report["rows"]["no_availability"]
    assert base["status"] == row["status"] == "ran"
    assert row["runs"][0]["train_seconds"] == row["runs"][0]["ranker_seconds"] == 0.0
    for name in ("two_stage", "retrieval"):
        figures = base["runs"][0][name]
        assert {"recall", "ndcg", "itemcoverage", "truth_recall"} <= set(figures)
        assert all(0.0 <= v <= 1.0 for v in figures.values())
        assert base["summary"][name]["ndcg"]["mean"] == figures["ndcg"]
    # the references scored from the planted model itself: its own taste finds more of the
    # truth than the segment's, which finds more than the item term alone
    refs = report["truth_references"]
    assert set(refs) == {"item_term_only", "segment_centroid", "taste_at_start"}
    assert refs["item_term_only"] < refs["segment_centroid"] < refs["taste_at_start"] <= 1.0


def test_the_cohorts_row_names_each_dataset_s_own_profile_fields(tmp_path: Path) -> None:
    # the MovieLens site is read from the fetched path, not a name: its fields all the same
    movielens = load_config(
        ROOT / "configs" / "movielens-100k.toml",
        overrides={"data.dataset": str(tmp_path / "cache" / "movielens-100k")},
    )
    synthetic = load_config(ROOT / "configs" / "synthetic.toml")
    assert _cohorts(movielens) == [["gender"], ["age"], ["occupation"]]
    assert _cohorts(synthetic) == [["gender"], ["age"], ["region"]]
