"""``[loss]`` and ``[ranker] exposure_correction``: a site clicks what it shows, so training
adds ``strength x log(the item's share of the exposures)`` to each item's logits, and the
models learn the interest rather than the exposure. The offset's values, its place in the
towers' softmax and the ranker's lists, the refusals, and what it does to trained models on a
synthetic site whose logging policy shows its popular items most."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tailored.config import ConfigError, RankerConfig, load_config
from tailored.data.exposures import exposure_offset
from tailored.data.interactions import Interactions
from tailored.data.splits import TEST, TRAIN, VALID
from tailored.data.synth import generate_synthetic
from tailored.train.ranker.fit import (
    fit_ranker,
    ranker_spec,
    ranker_tables,
    run_user_embeddings,
    training_requests,
)
from tailored.train.ranker.task import _loader, task_logits, train_ranker
from tailored.train.runs import LoadedRun, load_data, load_run
from tailored.train.two_tower.fit import train
from tailored.train.two_tower.loss import sampled_softmax_loss
from tests.helpers import ROOT, TEST_KEY


def test_the_offset_is_the_log_share_of_the_exposures() -> None:
    counts = np.array([0.0, 60.0, 30.0, 10.0, 0.0])  # padding, three shown, one never shown
    got = exposure_offset(counts, 0.5)
    share = np.array([0.1, 0.6, 0.3, 0.1, 0.1])  # the unshown as the least shown
    np.testing.assert_allclose(got, 0.5 * np.log(share), rtol=1e-6)
    assert got.dtype == np.float32
    with pytest.raises(ValueError, match="exposure counts"):
        exposure_offset(np.zeros(4), 1.0)


def test_the_towers_softmax_adds_the_offset_to_each_item_s_column() -> None:
    g = torch.Generator().manual_seed(3)
    u = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    v = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    ids = torch.tensor([2, 4, 1, 3])
    offset = torch.tensor([0.0, -0.5, 1.5, 0.25, -2.0])
    log_q = torch.log(torch.tensor([1.0, 0.4, 0.3, 0.2, 0.1]))
    loss = sampled_softmax_loss(
        u, v, ids, temperature=0.5, log_q=log_q, offset=offset, mask_accidental_hits=False
    )
    logits = u @ v.T / 0.5 - (log_q[ids] + math.log(4)) + offset[ids]
    assert torch.allclose(loss, F.cross_entropy(logits, torch.arange(4)), atol=1e-6)
    # the same offset for every item changes nothing: only relative exposure counts
    flat = sampled_softmax_loss(
        u, v, ids, temperature=0.5, offset=torch.full((5,), 3.0), mask_accidental_hits=False
    )
    assert torch.allclose(flat, F.cross_entropy(u @ v.T / 0.5, torch.arange(4)), atol=1e-6)


def test_the_settings_are_checked() -> None:
    assert load_config().loss.exposure_correction == 0.0
    assert RankerConfig().exposure_correction == 0.0
    for section in ("loss", "ranker"):
        for bad in (-0.5, True, "1"):
            with pytest.raises(ConfigError, match=rf"\[{section}\] exposure_correction"):
                load_config(values={section: {"exposure_correction": bad}})
    with pytest.raises(ConfigError, match="exposure_correction"):
        load_config(values={"privacy": {"dp": True}, "loss": {"exposure_correction": 0.5}})


@pytest.mark.parametrize("section", ["loss", "ranker"])
def test_data_without_exposures_is_refused_when_read(movielens_dir: Path, section: str) -> None:
    cfg = load_config(
        ROOT / "configs" / "movielens-100k.toml",
        overrides={"data.dataset": str(movielens_dir), f"{section}.exposure_correction": 0.5},
    )
    with pytest.raises(ConfigError, match=rf"\[{section}\] exposure_correction: .*no exposure"):
        load_data(cfg)


# -- on a synthetic site -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("exposed") / "site"
    generate_synthetic(
        d, n_users=1200, n_items=300, n_categories=8, events_per_user=60, seed=11, key=TEST_KEY
    )
    return d


def _config(site: Path, **overrides: object) -> object:
    return load_config(
        ROOT / "configs" / "synthetic.toml",
        overrides={
            "data.dataset": str(site),
            "model.dim": 16,
            "model.id_dim": 16,
            "model.hidden": 32,
            "train.max_epochs": 4,
            "train.batch_size": 256,
            "train.threads": 1,
            "train.progress_bar": False,
            **overrides,
        },
    )


@pytest.fixture(scope="module")
def data(site: Path) -> Interactions:
    return load_data(_config(site))  # type: ignore[arg-type]


def test_exposure_counts_are_each_period_s_impressions(data: Interactions) -> None:
    x = data.exposures
    assert x is not None and len(x) > 0
    counts = data.exposure_counts()
    for s in (TRAIN, VALID, TEST):
        np.testing.assert_array_equal(counts[s], np.bincount(x.item[x.split == s], minlength=301))
    np.testing.assert_array_equal(data.item_exposure((TRAIN, VALID)), counts[TRAIN] + counts[VALID])


def _exposure_lean(scores: np.ndarray, shown: np.ndarray) -> float:
    """Correlation, over the items shown in training, of their mean score with the log of how
    often they were shown."""
    keep = shown[1:] > 0
    return float(np.corrcoef(scores[keep], np.log(shown[1:][keep]))[0, 1])


def test_corrected_towers_lean_less_to_what_the_site_showed(
    site: Path, data: Interactions, tmp_path: Path
) -> None:
    shown = data.item_exposure((TRAIN, VALID))
    lean = {}
    for strength in (0.0, 1.0):
        cfg = _config(site, **{"loss.exposure_correction": strength})
        run = load_run(train(cfg, out=tmp_path / f"a{strength}", data=data).out, data=data)  # type: ignore[arg-type]
        items = run.model.all_item_embeddings().float().numpy()
        users = run_user_embeddings(run, np.arange(0, data.n_users, 3), (TRAIN, VALID))
        lean[strength] = _exposure_lean((users @ items[1:].T).mean(0), shown)
    # measured 0.23 against 0.10
    assert lean[1.0] < lean[0.0] - 0.05, lean


def test_the_ranker_trains_on_offset_logits_and_ranks_without(
    site: Path, data: Interactions, tmp_path: Path
) -> None:
    cfg = _config(site)
    run = load_run(train(cfg, out=tmp_path / "run", data=data).out, data=data)  # type: ignore[arg-type]
    assert isinstance(run, LoadedRun)
    item_emb = run.model.all_item_embeddings().float().numpy()
    rcfg = RankerConfig(max_users=600, candidates=50, ease_items=50, max_epochs=4, ensemble=1)
    requests = training_requests(run, item_emb, rcfg, seed=0)
    tables = ranker_tables(run.data, item_emb)
    shown = data.item_exposure((TRAIN, VALID))
    offset = exposure_offset(shown, 1.0)
    # each training batch carries its candidates' offsets, 0 for padding
    batch = next(iter(_loader(tables, requests, 64, False, offset)))
    cands = requests.candidates[:64]
    np.testing.assert_array_equal(
        batch["offset"].numpy(), np.where(cands > 0, offset[cands], 0.0).astype(np.float32)
    )
    assert "offset" not in next(iter(_loader(tables, requests, 64, False)))
    spec = ranker_spec(run.data, item_emb.shape[1], rcfg)
    lean = {}
    for name, off in (("plain", None), ("corrected", offset)):
        model = train_ranker(
            spec, rcfg, tables, requests, seed=0, progress_bar=False, item_offset=off
        ).model
        with torch.no_grad():
            logits = task_logits(model, tables.batch(requests)).numpy()
        total, n = np.zeros(len(shown)), np.zeros(len(shown))
        valid = requests.candidates > 0
        np.add.at(total, requests.candidates[valid], logits[valid])
        np.add.at(n, requests.candidates[valid], 1)
        seen = n > 0
        mean = np.where(seen, total / np.maximum(n, 1), np.nan)
        keep = seen & (shown > 0)
        lean[name] = float(np.corrcoef(mean[keep], np.log(shown[keep]))[0, 1])
    # measured 0.59 against 0.05
    assert lean["corrected"] < lean["plain"] - 0.3, lean


def test_fit_ranker_applies_the_setting_and_refuses_data_without_exposures(
    site: Path, data: Interactions, tmp_path: Path
) -> None:
    run = load_run(train(_config(site), out=tmp_path / "run", data=data).out, data=data)  # type: ignore[arg-type]
    rcfg = RankerConfig(
        max_users=400, candidates=40, ease_items=50, max_epochs=2, exposure_correction=0.5
    )
    blind = LoadedRun(run.cfg, run.model, dataclasses.replace(data, exposures=None))
    with pytest.raises(ConfigError, match=r"\[ranker\] exposure_correction"):
        fit_ranker(blind, rcfg)
    fitted, tables, requests = fit_ranker(run, rcfg, progress_bar=False)
    plain, _, _ = fit_ranker(
        run, dataclasses.replace(rcfg, exposure_correction=0.0), progress_bar=False
    )
    with torch.no_grad():
        batch = tables.batch(requests.take(np.arange(50)))
        a, b = task_logits(fitted.model, batch), task_logits(plain.model, batch)
    assert not torch.allclose(a, b)  # the same seed and lists: only the offset differs
