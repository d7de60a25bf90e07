"""[train] lr_schedule, lr_warmup_steps, val_checks_per_epoch and threads: the rate a run's
steps use (its log's train/lr), how often it validates, and the torch threads it trains on."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tailored.config import TrainConfig, load_config
from tailored.data.synth import generate_synthetic
from tailored.errors import ConfigError
from tailored.train import threads as threads_module
from tailored.train.two_tower import fit as fit_module
from tailored.train.two_tower.fit import train, val_checks_per_epoch
from tailored.train.two_tower.task import PlateauScale, lr_multiplier
from tests.helpers import ROOT, TEST_KEY

LR = 2e-3


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic site: 1,000 users, 758 training positives (clicks, purchases)."""
    out = tmp_path_factory.mktemp("schedule") / "site"
    generate_synthetic(
        out, n_users=1000, n_items=100, events_per_user=20, n_categories=5, seed=1, key=TEST_KEY
    )
    return out


def _config(site: Path, **train: Any) -> Any:
    overrides = {
        "data.dataset": str(site),
        "model.dim": 16,
        "model.id_dim": 16,
        "model.feature_dim": 8,
        "model.hidden": 32,
        "model.history_length": 10,
        "train.batch_size": 16,  # 758 training rows: 47 steps an epoch
        "train.lr": LR,
        "train.limit_val_users": 200,
        "train.final_eval_users": 100,
        "train.progress_bar": False,
    }
    overrides.update({f"train.{k}": v for k, v in train.items()})
    return load_config(ROOT / "configs" / "synthetic.toml", overrides=overrides)


def _log_rows(run: Path) -> list[dict[str, str]]:
    with (run / "logs" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def _logged(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    """(step, value) of the rows that logged ``key``."""
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


def test_cosine_warms_up_then_decays_validating_three_times_an_epoch_on_one_thread(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inside: list[int] = []
    real_train = fit_module._train

    def spy(*args: Any, **kwargs: Any) -> Any:
        inside.append(torch.get_num_threads())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(fit_module, "_train", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = _config(
            site,
            max_epochs=2,
            lr_schedule="cosine",
            lr_warmup_steps=12,
            lr_min_ratio=0.05,
            val_checks_per_epoch=3,
            threads=1,
            patience=10,
        )
        result = train(cfg, out=tmp_path / "run")
        assert torch.get_num_threads() == 2  # restored after the run
    finally:
        torch.set_num_threads(before)
    assert inside == [1] and result.threads == 1
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["threads"] == 1 and report["val_checks_per_epoch"] == 3

    rows = _log_rows(tmp_path / "run")
    lrs = _logged(rows, "train/lr")
    steps = [s for s, _ in lrs]
    assert steps == sorted(steps) and len(lrs) >= 4
    # Lightning logs every 10 steps: step 9 is in the warm-up (10/12 of the rate), and
    # from then on the rate only falls, towards 5% of it by the planned last step
    assert lrs[0][1] == pytest.approx(LR * 10 / 12, rel=1e-5)
    after = [v for s, v in lrs if s >= 12]
    assert all(a > b for a, b in itertools.pairwise(after))
    assert after[-1] < 0.3 * LR and after[-1] >= 0.05 * LR * 0.999

    valid = _logged(rows, "valid/ndcg@10")
    per_epoch = len(valid) / result.epochs
    assert result.epochs == 2 and per_epoch == 3, valid


def test_plateau_counts_validation_checks_not_epochs(site: Path, tmp_path: Path) -> None:
    # a rate too small to move the weights: every check after the first is without
    # progress, so with lr_patience 1 the rate drops after the third check of four, within
    # the first and only epoch (counted in epochs, it could not have dropped at all)
    tiny = 1e-9
    cfg = _config(
        site,
        max_epochs=1,
        lr=tiny,
        lr_patience=1,
        lr_factor=0.5,
        val_checks_per_epoch=4,
    )
    assert cfg.train.schedule == "plateau"  # "auto" with lr_patience, as before
    result = train(cfg, out=tmp_path / "run")
    rows = _log_rows(tmp_path / "run")
    valid = _logged(rows, "valid/ndcg@10")
    assert len(valid) == 4 and result.val_checks_per_epoch == 4
    assert len({v for _, v in valid}) == 1  # no progress at all
    third = valid[2][0]
    lrs = _logged(rows, "train/lr")
    before, after = [v for s, v in lrs if s < third], [v for s, v in lrs if s > third]
    assert before and after, lrs
    assert before == pytest.approx([tiny] * len(before))
    assert after == pytest.approx([tiny * 0.5] * len(after))


def test_warm_up_rises_linearly_and_cosine_ends_at_its_floor() -> None:
    def rate(step: int, schedule: str = "cosine", warmup: int = 10) -> float:
        return lr_multiplier(
            step, schedule=schedule, warmup_steps=warmup, total_steps=110, min_ratio=0.1
        )

    warm = [rate(s) for s in range(10)]
    assert warm == pytest.approx([(s + 1) / 10 for s in range(10)])
    cosine = [rate(s) for s in range(9, 110)]
    assert cosine[0] == pytest.approx(1.0)
    assert all(a > b for a, b in itertools.pairwise(cosine))
    assert rate(109) == pytest.approx(0.1) and rate(500) == pytest.approx(0.1)
    assert rate(59) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert rate(5, "constant") == pytest.approx(0.6) and rate(50, "constant") == 1.0
    assert rate(50, "constant", warmup=0) == 1.0 and rate(0, "plateau", warmup=0) == 1.0


def test_plateau_scale_follows_torchs_reduce_lr_on_plateau() -> None:
    values = [0.1, 0.2, 0.2, 0.19, 0.2, 0.21, 0.21, 0.21, 0.21, 0.2100001, 0.3, 0.3, 0.3]
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    torch_rule = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=1)
    ours = PlateauScale(patience=1, factor=0.5)
    for v in values:
        torch_rule.step(v)
        ours.step(v)
        assert ours.scale == pytest.approx(opt.param_groups[0]["lr"]), v
    assert ours.scale < 1.0


def test_auto_validation_checks_grow_with_the_epoch() -> None:
    assert val_checks_per_epoch(0, steps_per_epoch=60, val_batches=4) == 1
    assert val_checks_per_epoch(0, steps_per_epoch=1999, val_batches=4) == 1
    assert val_checks_per_epoch(0, steps_per_epoch=5000, val_batches=4) == 5
    assert val_checks_per_epoch(0, steps_per_epoch=10**6, val_batches=4) == 10
    # a costly validation (4,000 batches of users) is run more rarely
    assert val_checks_per_epoch(0, steps_per_epoch=100_000, val_batches=4000) == 2
    assert val_checks_per_epoch(3, steps_per_epoch=60, val_batches=4) == 3  # as asked


def test_auto_threads_leave_half_the_cpus_and_share_them_between_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert threads_module.auto_threads(cpus=2) == 1
    assert threads_module.auto_threads(cpus=1) == 1
    assert threads_module.auto_threads(cpus=16) == 8
    assert threads_module.auto_threads(cpus=64) == threads_module.MAX_AUTO_THREADS
    assert threads_module.auto_threads(processes=4, cpus=16) == 2
    monkeypatch.setattr(threads_module, "available_cpus", lambda: 6)
    before = torch.get_num_threads()
    with threads_module.torch_threads(0) as n:
        assert n == 3 and torch.get_num_threads() == 3
    with threads_module.torch_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr_schedule": "linear"}, "[train] lr_schedule: 'linear' is not one of"),
        ({"lr_schedule": "plateau"}, '[train] lr_schedule: "plateau" needs lr_patience >= 1'),
        ({"lr_schedule": "cosine", "lr_patience": 2}, "[train] lr_patience: only the plateau"),
        ({"lr_min_ratio": 1.5}, "[train] lr_min_ratio: must be in [0, 1], got 1.5"),
        ({"lr_warmup_steps": -1}, "[train] lr_warmup_steps: must be >= 0, got -1"),
        ({"val_checks_per_epoch": -2}, "[train] val_checks_per_epoch: must be >= 0, got -2"),
        ({"threads": -1}, "[train] threads: must be >= 0, got -1"),
        ({"threads": 1.5}, "threads"),
    ],
)
def test_bad_schedule_validation_and_thread_settings_are_named(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(values={"train": values})
    assert message in str(e.value)


def test_the_schedule_defaults_keep_what_lr_patience_alone_did() -> None:
    assert TrainConfig().schedule == "constant"
    assert TrainConfig(lr_patience=2).schedule == "plateau"
    assert TrainConfig(lr_schedule="cosine").schedule == "cosine"
    default = TrainConfig()
    assert default.val_checks_per_epoch == 0 and default.threads == 0
    assert default.lr_warmup_steps == 0 and math.isclose(default.lr_min_ratio, 0.0)
