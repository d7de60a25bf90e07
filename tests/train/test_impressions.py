"""What users were shown, learned from: exposures split by the periods of a user's positives,
the slot propensities recovered from a site that fills its slots at random, inverse-propensity
weights on positives, the ``shown_before`` feature (never reading the labelled period), and
skipped impressions as heavier negatives of the ranker."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from tailored.config import ConfigError, RankerConfig, load_config
from tailored.data.exposures import (
    EXPOSURE_EVENTS,
    EXPOSURE_GAP,
    Exposures,
    SlotPropensity,
    shown_counts,
)
from tailored.data.interactions import Interactions, PositiveRule, load_interactions
from tailored.data.ranking_features import DENSE_FEATURES
from tailored.data.splits import TEST, TRAIN, VALID
from tailored.data.synth import generate_synthetic
from tailored.data.synth_sessions import Behaviour
from tailored.train.ranker.data import Requests, build_requests, exact_retriever
from tailored.train.ranker.fit import training_requests
from tailored.train.ranker.task import lambdarank_loss, softmax_loss
from tailored.train.runs import LoadedRun
from tailored.train.two_tower.model import build_model, tower_spec
from tests.helpers import ROOT, TEST_KEY

_SHOWN = DENSE_FEATURES.index("shown_before")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("shown") / "site"
    generate_synthetic(
        d,
        n_users=1500,
        n_items=400,
        n_categories=10,
        events_per_user=80,
        seed=5,
        key=TEST_KEY,
        chunk_users=800,
    )
    return d


def _rule(**changes: object) -> PositiveRule:
    cfg = load_config(ROOT / "configs" / "synthetic.toml")
    return dataclasses.replace(PositiveRule.from_config(cfg.data), **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data(site: Path) -> Interactions:
    return load_interactions(site, _rule())


def test_exposures_belong_to_the_period_whose_visit_they_opened(data: Interactions) -> None:
    x = data.exposures
    assert x is not None and len(x) > 100_000
    u = x.user
    for period in (VALID, TEST):
        first = np.full(data.n_users, np.iinfo(np.int64).max)
        mine = data.split == period
        np.minimum.at(first, data.user[mine], data.timestamp[mine])
        has = first[u] < np.iinfo(np.int64).max
        start = first[u] - EXPOSURE_GAP
        # every exposure from half an hour before the period's first positive is in it or later
        assert (x.split[has & (x.timestamp >= start)] >= period).all()
        assert (x.split[has & (x.timestamp < start)] < period).all()
    # the impression of a user's first validation click is not in their training exposures
    v = np.flatnonzero(data.split == VALID)
    firsts = v[np.r_[True, data.user[v][1:] != data.user[v][:-1]]]
    leaked = 0
    for e in firsts[:300]:
        items, times, _ = x.of_user(int(data.user[e]), (TRAIN,))
        leaked += int(((items == data.item[e]) & (times > data.timestamp[e] - 60)).any())
    assert leaked == 0


def test_slot_propensities_are_recovered_from_a_site_that_fills_slots_at_random(
    data: Interactions,
) -> None:
    """The generator's examination is (1 + slot) ** -decay: click-through by slot over slot 0
    recovers it, to within the sampling noise (~8k training exposures and 130 or more clicks
    per slot: about 10% at the last slot)."""
    p = data.propensity
    decay = Behaviour().examine_decay
    slots = np.arange(len(p.examination))
    assert len(slots) == 10 and (p.exposures > 5_000).all() and (p.clicks > 100).all()
    np.testing.assert_allclose(p.examination, (1.0 + slots) ** -decay, rtol=0.25)
    assert (np.diff(p.examination) <= 0).all()
    # unknown slots are taken as looked at; past the last, the last's value
    np.testing.assert_allclose(p.of(np.array([-1, 0, 99])), [1.0, 1.0, p.examination[-1]])


def test_propensity_falls_back_to_uniform_without_slots() -> None:
    none = SlotPropensity.estimate(np.full(50, -1), np.full(5, -1))
    assert none.examination.tolist() == [1.0]
    few = SlotPropensity.estimate(np.zeros(10, np.int64), np.zeros(3, np.int64))
    assert few.examination.tolist() == [1.0]


def test_debiasing_weighs_a_click_by_one_over_its_slot_s_examination(
    site: Path, data: Interactions
) -> None:
    debiased = load_interactions(site, _rule(position_debias=True))
    assert data.position is not None and (data.position >= 0).all()
    np.testing.assert_array_equal(debiased.item, data.item)
    expect = data.weight / data.propensity.of(data.position)
    np.testing.assert_allclose(debiased.weight, expect, rtol=1e-6)
    assert debiased.weight[data.position == 9].mean() > 3 * data.weight[data.position == 9].mean()


def test_shown_counts_skip_the_current_visit() -> None:
    items = np.array([5, 5, 7, 5, 9])
    times = np.array([0, 100, 200, 5000, 9000])
    now = 5000 + EXPOSURE_GAP
    got = shown_counts(np.array([5, 7, 9, 11]), items, times, now)
    assert got.tolist() == [3, 1, 0, 0]  # item 9's exposure is of the current visit
    assert shown_counts(np.array([5]), items[:0], times[:0], now).tolist() == [0]
    # only the last EXPOSURE_EVENTS count (what a bundle keeps), whatever the order given
    many = np.r_[np.full(50, 1), np.full(EXPOSURE_EVENTS, 2)]
    at = np.arange(len(many))[::-1].copy()  # newest first
    got = shown_counts(np.array([1, 2]), many[::-1].copy(), at, now=10**6)
    assert got.tolist() == [0, EXPOSURE_EVENTS]


def _run(site: Path, data: Interactions) -> LoadedRun:
    cfg = load_config(
        ROOT / "configs" / "synthetic.toml",
        overrides={"data.dataset": str(site), "model.dim": 16, "model.hidden": 32},
    )
    torch.manual_seed(0)
    spec = tower_spec(data)
    items = data.items
    model = build_model(spec, cfg.model, items.categorical, items.multi, items.numeric).eval()
    return LoadedRun(cfg, model, data)


@pytest.fixture(scope="module")
def stamped(site: Path, data: Interactions) -> tuple[LoadedRun, Requests]:
    run = _run(site, data)
    cfg = RankerConfig(
        request_time="mixed", max_users=300, candidates=60, ease_items=50, lists_per_user=1
    )
    item_emb = run.model.all_item_embeddings().detach().float().numpy()
    return run, training_requests(run, item_emb, cfg, seed=0)


def test_shown_before_reads_only_what_was_known_before_the_request(
    stamped: tuple[LoadedRun, Requests],
) -> None:
    """Each request's ``shown_before`` counts the user's exposures of the known periods at
    least half an hour before it; never one of the labelled (validation) period's, however
    stamped: the impression of a held-out click is not a feature of it."""
    run, req = stamped
    x = run.data.exposures
    assert x is not None
    counted = np.expm1(req.dense[..., _SHOWN].astype(np.float64)).round().astype(np.int64)
    assert (counted > 0).mean() > 0.01
    for r in range(0, len(req.users), 7):
        items, times, _ = x.of_user(int(req.users[r]), (TRAIN,))
        expect = shown_counts(req.candidates[r], items, times, float(req.now[r]))
        np.testing.assert_array_equal(counted[r], expect)


def test_skipped_impressions_of_the_labelled_period_are_heavier_negatives(
    stamped: tuple[LoadedRun, Requests],
) -> None:
    run, req = stamped
    x = run.data.exposures
    assert x is not None
    heavy = req.neg_weight > 1
    assert heavy.any() and (req.neg_weight >= 1).all() and (req.neg_weight <= 2).all()
    assert not (heavy & (req.labels > 0)).any()  # an item engaged with is no negative
    n = len(req.users) // 2  # next-event lists first, then the serving-stamped ones
    for r in range(0, len(req.users), 5):
        items, times, _ = x.of_user(int(req.users[r]), (VALID,))
        if r < n:  # the labelled period starts at the request (its visit's half hour)
            items = items[times >= req.now[r] - EXPOSURE_GAP]
        shown_then = np.isin(req.candidates[r], items) & (req.candidates[r] > 0)
        np.testing.assert_array_equal(heavy[r], shown_then & (req.labels[r] == 0))
    # without debiasing, every skipped impression counts as looked at: weight exactly 2
    np.testing.assert_allclose(req.neg_weight[heavy], 2.0)


def test_with_debiasing_a_skip_in_a_low_slot_weighs_less(site: Path, data: Interactions) -> None:
    run = _run(site, data)
    item_emb = run.model.all_item_embeddings().detach().float().numpy()
    users = np.unique(data.user[data.split == VALID])[:200]
    emb = np.random.default_rng(0).normal(size=(len(users), item_emb.shape[1]))
    common = dict(
        item_emb=item_emb,
        history_splits=(TRAIN,),
        target=VALID,
        n_candidates=80,
        ease_items=0,
        impression_negative_weight=3.0,
    )
    flat = build_requests(data, users, emb.astype(np.float32), exact_retriever(item_emb), **common)  # type: ignore[arg-type]
    exam = build_requests(
        data,
        users,
        emb.astype(np.float32),
        exact_retriever(item_emb),
        examination=data.propensity,
        **common,  # type: ignore[arg-type]
    )
    heavy = flat.neg_weight > 1
    np.testing.assert_allclose(flat.neg_weight[heavy], 4.0)
    np.testing.assert_array_equal(exam.neg_weight > 1, heavy)
    assert (exam.neg_weight[heavy] < 4.0).mean() > 0.5  # most skips were not surely looked at
    off = build_requests(
        data,
        users,
        emb.astype(np.float32),
        exact_retriever(item_emb),
        **{**common, "impression_negative_weight": 0.0},  # type: ignore[arg-type]
    )
    assert (off.neg_weight == 1).all()


def test_a_heavier_negative_takes_more_of_the_loss() -> None:
    logits = torch.tensor([[2.0, 1.0, 1.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    valid = torch.ones_like(labels, dtype=torch.bool)
    ones = torch.ones_like(labels)
    heavier = torch.tensor([[1.0, 3.0, 1.0, 1.0]])
    for loss in (softmax_loss, lambdarank_loss):
        base = loss(logits, labels, valid, ones)
        assert torch.allclose(base, loss(logits, labels, valid))
        assert loss(logits, labels, valid, heavier) > base
    # softmax: a negative of weight 3 is three copies of itself in the normaliser
    three = torch.tensor([[2.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    copies = softmax_loss(three, torch.tensor([[1.0, 0, 0, 0, 0, 0]]), torch.ones(1, 6).bool())
    assert torch.allclose(softmax_loss(logits, labels, valid, heavier), copies)


def test_impression_negative_weight_setting() -> None:
    assert RankerConfig().impression_negative_weight == 1.0
    with pytest.raises(ConfigError, match="impression_negative_weight"):
        load_config(values={"ranker": {"impression_negative_weight": -1}})


def test_a_dataset_without_exposures_has_none(movielens_dir: Path) -> None:
    d = load_interactions(movielens_dir, PositiveRule.weighted({"rating": 1.0}))
    assert d.exposures is not None and len(d.exposures) == 0
    assert d.propensity.examination.tolist() == [1.0]
    assert isinstance(Exposures.empty(3), Exposures)


def test_graded_labels_weigh_each_label_by_its_engagement(site: Path, data: Interactions) -> None:
    """``[ranker] graded_labels``: a label's gain is the largest weight among the user's
    labelled-period events of that item (a cart 2, a purchase 3, merged into their click);
    the labels themselves, and every other input, are those of ungraded requests."""
    run = _run(site, data)
    item_emb = run.model.all_item_embeddings().detach().float().numpy()
    users = np.unique(data.user[data.split == VALID])[:300]
    emb = np.random.default_rng(1).normal(size=(len(users), item_emb.shape[1])).astype(np.float32)
    common = dict(
        item_emb=item_emb, history_splits=(TRAIN,), target=VALID, n_candidates=80, ease_items=0
    )
    plain = build_requests(data, users, emb, exact_retriever(item_emb), **common)  # type: ignore[arg-type]
    graded = build_requests(data, users, emb, exact_retriever(item_emb), graded=True, **common)  # type: ignore[arg-type]
    np.testing.assert_array_equal(graded.labels, plain.labels)
    np.testing.assert_array_equal(plain.gain, plain.labels)
    np.testing.assert_array_equal(graded.gain > 0, graded.labels > 0)
    for r, u in enumerate(users):
        mine = (data.user == u) & (data.split == VALID)
        for c in np.flatnonzero(graded.labels[r]):
            w = data.weight[mine & (data.item == graded.candidates[r, c])].max()
            assert graded.gain[r, c] == w
    assert set(np.unique(graded.gain[graded.labels > 0])) >= {1.0, 2.0}
    assert (graded.gain[graded.labels > 0] > 1).any()


def test_graded_labels_setting() -> None:
    assert RankerConfig().graded_labels is False
    with pytest.raises(ConfigError, match="graded_labels"):
        load_config(values={"ranker": {"graded_labels": True, "loss": "lambdarank"}})


def test_a_graded_list_s_loss_is_least_where_probability_follows_the_gains() -> None:
    """Listwise softmax with gains 3 and 1 (a purchase, a click) is least when the list's
    probability puts three times as much on the purchase: the fitted logits differ by log 3."""
    logits = torch.zeros(1, 4, requires_grad=True)
    gain = torch.tensor([[3.0, 1.0, 0.0, 0.0]])
    valid = torch.ones_like(gain, dtype=torch.bool)
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(2000):
        opt.zero_grad()
        softmax_loss(logits, gain, valid).backward()
        opt.step()
    p = torch.softmax(logits.detach(), 1)[0]
    assert abs(float(p[0] / p[1]) - 3.0) < 0.01
