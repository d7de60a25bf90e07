"""User-level DP training of the two towers, on a tiny synthetic dp_site: the run reports the
epsilon it spent (never above the target, equal to Opacus's accountant), a user's
contribution to a step is bounded in examples and in gradient norm, one user's gradient does
not depend on who else is in the step, bad settings name their key, and the non-private path
ignores [privacy] entirely."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from tailored.config import Config, load_config
from tailored.data.interactions import Interactions
from tailored.data.synth import generate_synthetic
from tailored.errors import ConfigError
from tailored.privacy.dp import (
    DPPlan,
    attach_grad_samples,
    bounded_contributions,
    per_unit_gradients,
)
from tailored.train.runs import load_data
from tailored.train.two_tower.fit import train
from tailored.train.two_tower.model import build_model, tower_spec
from tailored.train.two_tower.private import PrivateTwoTowerTask, UserBatch, private_setup
from tests.helpers import TEST_KEY

SMALL_MODEL = {
    "sequence_encoder": "gru",
    "dim": 16,
    "id_dim": 16,
    "hidden": 32,
    "history_length": 8,
    "dropout": 0.0,
    "item_id_dropout": 0.0,
    "context_dropout": 0.0,
}
DP = {"dp": True, "dp_users_per_step": 40, "dp_examples_per_user": 4, "dp_negatives": 32}


@pytest.fixture(scope="module")
def dp_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dp") / "dp_site"
    generate_synthetic(out, n_users=300, n_items=80, events_per_user=60, seed=2, key=TEST_KEY)
    return out


def _config(dp_site: Path, **sections: dict[str, Any]) -> Config:
    values: dict[str, Any] = {
        "data": {"dataset": str(dp_site)},
        "model": {**SMALL_MODEL, **sections.get("model", {})},
        "train": {"max_epochs": 2, "progress_bar": False, **sections.get("train", {})},
        "privacy": sections.get("privacy", {}),
    }
    return load_config(values=values)


@pytest.fixture(scope="module")
def data(dp_site: Path) -> Interactions:
    return load_data(_config(dp_site))


def _setup(dp_site: Path, data: Interactions, **privacy: Any) -> tuple[PrivateTwoTowerTask, Any]:
    cfg = _config(dp_site, privacy={**DP, **privacy})
    m = cfg.model
    model = build_model(
        tower_spec(data), m, data.items.categorical, data.items.multi, data.items.numeric
    )
    kwargs = {"history_length": m.history_length, "batch_size": 64, "seed": 0}
    return private_setup(cfg, data, model, kwargs)


def test_a_dp_run_reports_the_epsilon_it_spent_and_it_is_within_the_target(
    dp_site: Path, tmp_path: Path
) -> None:
    cfg = _config(dp_site, privacy={**DP, "dp_epsilon": 3.0})
    result = train(cfg, out=tmp_path / "run")
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    privacy = report["privacy"]
    assert 0 < privacy["epsilon"] <= 3.0
    assert privacy["epsilon"] > 2.9  # the noise is the smallest that meets the target
    assert privacy["delta"] == 1e-5 and privacy["steps"] == privacy["steps_planned"] > 0
    assert result.epochs == 2  # no early stopping: exactly the planned epochs
    # the saved model (nn.GRU) holds the DP-trained weights (Opacus's DPGRU): it scores the
    # validation split as the last validation of training did
    assert report["valid"]["metrics"]["ndcg@10"] == pytest.approx(
        result.best_valid_ndcg10, abs=1e-4
    )
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        logged = [float(r["privacy/epsilon"]) for r in csv.DictReader(f) if r["privacy/epsilon"]]
    assert len(logged) == 2 and logged[0] < logged[1] == pytest.approx(privacy["epsilon"])
    # Opacus's accountant, given the same mechanism, agrees
    accountant = RDPAccountant()
    accountant.history = [(privacy["noise_multiplier"], privacy["sample_rate"], privacy["steps"])]
    assert privacy["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-9)


def test_epsilon_matches_opacus_for_a_given_noise(dp_site: Path, data: Interactions) -> None:
    plan = DPPlan.for_target(
        units=943,
        units_per_step=100,
        steps=50,
        max_grad_norm=1.0,
        delta=1e-5,
        epsilon=8.0,
        noise_multiplier=1.1,
    )
    for _ in range(50):
        plan.accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
    reference = RDPAccountant()
    for _ in range(50):
        reference.step(noise_multiplier=1.1, sample_rate=100 / 943)
    assert plan.epsilon() == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-12)
    assert plan.report()["target_epsilon"] is None  # the noise was given, not derived


def test_a_budget_no_noise_can_meet_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\[privacy\] dp_epsilon"):
        DPPlan.for_target(
            units=10,
            units_per_step=10,
            steps=10**7,
            max_grad_norm=1.0,
            delta=1e-9,
            epsilon=1e-3,
        )


def test_bounded_contributions_draws_at_most_k_distinct_rows_of_each_unit() -> None:
    offsets = np.array([0, 100, 102, 102, 110])  # units of 100, 2, 0 and 8 rows
    rows, real = bounded_contributions(offsets, np.array([0, 1, 2, 3]), 5, np.random.default_rng(0))
    assert rows.shape == (4, 5)
    assert real.sum(axis=1).tolist() == [5, 2, 0, 5]
    for u in range(4):
        mine = rows[u][real[u]]
        assert len(set(mine.tolist())) == len(mine)  # without replacement
        assert np.all((offsets[u] <= mine) & (mine < offsets[u + 1]))


@pytest.mark.parametrize("causal", [False, True])
def test_a_heavy_user_contributes_at_most_k_examples_to_a_step(
    dp_site: Path, data: Interactions, causal: bool
) -> None:
    cfg = _config(
        dp_site, model={"causal_history": causal}, privacy={**DP, "dp_users_per_step": 300}
    )
    _, dm = _setup_cfg(cfg, data)
    counts = np.diff(dm.train_history.offsets)
    assert counts.max() > 4 * 3  # someone has many more events than the bound
    for step in range(3):
        batch = dm._collate_users([step])
        assert batch.users > 0
        rows = batch.rows
        per_user = (rows.targets > 0).sum((1, 2)) if causal else (rows.weight > 0).sum(1)
        assert int(per_user.max()) <= 4 and int(per_user.sum()) == batch.examples
        assert batch.examples > batch.users  # several examples from most users


def _setup_cfg(cfg: Config, data: Interactions) -> tuple[PrivateTwoTowerTask, Any]:
    m = cfg.model
    model = build_model(
        tower_spec(data), m, data.items.categorical, data.items.multi, data.items.numeric
    )
    kwargs = {
        "history_length": m.history_length,
        "batch_size": 64,
        "seed": 0,
        "sequences": m.causal_history,
    }
    return private_setup(cfg, data, model, kwargs)


def _one_user(batch: UserBatch, u: int) -> UserBatch:
    rows = type(batch.rows)(
        **{
            k: v[u : u + 1] if isinstance(v, torch.Tensor) else v
            for k, v in vars(batch.rows).items()
        }
    )
    return UserBatch(rows, 0)


def test_each_users_clipped_gradient_is_at_most_the_bound_on_a_real_step(
    dp_site: Path, data: Interactions
) -> None:
    task, dm = _setup(dp_site, data, dp_max_grad_norm=0.01, dp_users_per_step=300)
    opt = task.configure_optimizers()
    loss_fn = task._user_loss[0]
    batch = dm._collate_users([0])
    negatives = torch.randint(1, data.n_items + 1, (32,))
    raw, _ = per_unit_gradients(loss_fn, batch.unit_inputs(), (negatives,))
    raw_norms = torch.stack([g.flatten(1).norm(dim=1) for g in raw.values()], 1).norm(dim=1)
    assert bool((raw_norms > 0.01).all())  # every user's gradient needs clipping
    for u in range(3):
        attach_grad_samples(loss_fn, {k: g[u : u + 1] for k, g in raw.items()})
        opt.clip_and_accumulate()  # Opacus's clipping, as its step does it
        clipped = torch.cat([p.summed_grad.flatten() for p in opt.params]).norm()
        assert float(clipped) == pytest.approx(0.01, rel=1e-3)
        opt.zero_grad()
        for p in opt.params:
            p.summed_grad = None


def test_the_per_user_gradient_is_the_gradient_of_the_users_whole_loss(
    dp_site: Path, data: Interactions
) -> None:
    task, dm = _setup(dp_site, data, dp_users_per_step=300)
    loss_fn = task._user_loss[0]
    batch = dm._collate_users([0])
    negatives = torch.randint(1, data.n_items + 1, (32,))
    grads, losses = per_unit_gradients(loss_fn, batch.unit_inputs(), (negatives,))
    u = 1
    loss_fn.zero_grad()
    loss = loss_fn(*[x[u] for x in batch.unit_inputs()], negatives)
    loss.backward()
    assert float(loss) == pytest.approx(float(losses[u]), rel=1e-5)
    for name, p in loss_fn.named_parameters():
        expected = p.grad if p.grad is not None else torch.zeros_like(p)
        # float32 sums in another order (one user against the vmapped batch): a few elements
        # of some tables differ by about 1e-6; a gradient leaking another user's would not
        torch.testing.assert_close(grads[name][u], expected, rtol=1e-4, atol=1e-5)


def test_one_users_gradient_does_not_depend_on_the_other_users_in_the_step(
    dp_site: Path, data: Interactions
) -> None:
    # what in-batch negatives would break: with shared uniform negatives, a user's loss reads
    # only that user's examples, so adding or removing anyone else changes nothing of theirs
    task, dm = _setup(dp_site, data, dp_users_per_step=300)
    loss_fn = task._user_loss[0]
    batch = dm._collate_users([0])
    negatives = torch.randint(1, data.n_items + 1, (32,))
    together, _ = per_unit_gradients(loss_fn, batch.unit_inputs(), (negatives,))
    alone, _ = per_unit_gradients(loss_fn, _one_user(batch, 0).unit_inputs(), (negatives,))
    for name, g in alone.items():
        # atol: float32 sums in another order (see above); another user's part would be larger
        torch.testing.assert_close(g[0], together[name][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("dp_delta", 1.0),
        ("dp_delta", 0.0),
        ("dp_epsilon", 0.0),
        ("dp_epsilon", -1.0),
        ("dp_max_grad_norm", 0.0),
        ("dp_examples_per_user", 0),
        ("dp_users_per_step", 0),
        ("dp_noise_multiplier", -0.5),
        ("dp_negatives", 0),
        ("dp_accountant", "moments"),
    ],
)
def test_a_bad_privacy_setting_is_a_config_error_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"\[privacy\] {key}"):
        load_config(values={"privacy": {"dp": True, key: value}})


def test_dp_on_several_devices_is_refused(dp_site: Path) -> None:
    # by the configuration, before any DDP rank is started or reads its shard
    with pytest.raises(ConfigError, match=r"\[privacy\] dp: DP training runs on one device"):
        _config(dp_site, train={"devices": 2}, privacy=DP)


def test_dp_with_an_ensemble_of_towers_is_refused(dp_site: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[privacy\] dp: .*\[model\] ensemble = 1"):
        _config(dp_site, model={"ensemble": 2}, privacy=DP)


def test_with_dp_off_the_privacy_settings_change_nothing(dp_site: Path, tmp_path: Path) -> None:
    plain = train(_config(dp_site), out=tmp_path / "plain")
    other = {k: v for k, v in DP.items() if k != "dp"}
    ignored = train(
        _config(dp_site, privacy={**other, "dp_epsilon": 1.0, "dp_max_grad_norm": 0.1}),
        out=tmp_path / "ignored",
    )
    a = torch.load(plain.out / "model.pt", weights_only=True)
    b = torch.load(ignored.out / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    report = json.loads((plain.out / "metrics.json").read_text())
    assert "privacy" not in report
    assert plain.best_valid_ndcg10 == ignored.best_valid_ndcg10
