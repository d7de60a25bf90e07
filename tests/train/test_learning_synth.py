"""The two-tower model learns the tastes planted in a synthetic website."""

from __future__ import annotations

from pathlib import Path

import pytest

from tailored.config import load_config
from tailored.data.synth import generate_synthetic
from tailored.train.runs import load_run
from tailored.train.truth import planted_truth_recall
from tailored.train.two_tower.fit import train
from tests.helpers import ROOT, TEST_KEY

pytestmark = pytest.mark.slow  # trains on a synthetic site


def test_recall_against_the_planted_truth_beats_popularity(tmp_path: Path) -> None:
    site = tmp_path / "site"
    generate_synthetic(
        site, n_users=3000, n_items=300, events_per_user=60, n_categories=10, seed=5, key=TEST_KEY
    )
    cfg = load_config(
        ROOT / "configs" / "synthetic.toml",
        overrides={
            "data.dataset": str(site),
            "model.dim": 32,
            "model.id_dim": 32,
            "model.hidden": 64,
            "train.max_epochs": 4,
            "train.batch_size": 256,
            "train.limit_val_users": 0,
            "train.progress_bar": False,
        },
    )
    result = train(cfg, out=tmp_path / "run")
    recall = planted_truth_recall(load_run(result.out), site, users=1000)
    assert recall["users"] == 1000
    # the planted top-10 is partly popular items (b_i), so popularity is a real baseline;
    # the model has to find each user's own tastes to do clearly better
    assert recall["model"] > 1.3 * recall["popularity"], recall
