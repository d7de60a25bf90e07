"""The ranker's training requests stamped as serving stamps them (``[ranker] request_time =
"serving"``): after the training split's end, by a drawn delay, reading no validation event."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tailored.config import ConfigError, RankerConfig, load_config
from tailored.data.interactions import Interactions
from tailored.data.ranking_features import DENSE_FEATURES, ItemActivity
from tailored.data.splits import TRAIN, VALID
from tailored.train.ranker.data import (
    Requests,
    _frozen,
    _with_times,
    build_requests,
    exact_retriever,
    history_cut,
    request_delays,
)
from tailored.train.ranker.fit import training_requests
from tailored.train.runs import LoadedRun, load_data
from tailored.train.two_tower.model import build_model, tower_spec
from tests.helpers import small_config

_DAY = 86_400
_DELAYS = (0.0, 1.0, 7.0, 30.0)


def _untrained_run(dataset: Path, data: Interactions | None = None) -> LoadedRun:
    """An untrained small two-tower model on MovieLens-100k: retrieval from random weights
    is enough to make candidates."""
    import torch

    cfg = small_config(dataset)
    data = data if data is not None else load_data(cfg)
    torch.manual_seed(0)
    model = build_model(
        tower_spec(data),
        cfg.model,
        data.items.categorical,
        data.items.multi,
        data.items.numeric,
    ).eval()
    return LoadedRun(cfg, model, data)


def _requests(run: LoadedRun, request_time: str) -> Requests:
    cfg = RankerConfig(
        request_time=request_time,
        lists_per_user=2,
        max_users=60,
        candidates=40,
        ease_items=100,
        request_delay_days=_DELAYS,
    )
    item_emb = run.model.all_item_embeddings().detach().float().numpy()
    return training_requests(run, item_emb, cfg, seed=0)


def _hours(req: Requests, name: str) -> np.ndarray:
    """The feature ``name`` [R, C] back in hours (it is log(1 + hours))."""
    return np.expm1(req.dense[..., DENSE_FEATURES.index(name)].astype(np.float64))


def _relabelled(data: Interactions) -> Interactions:
    """``data`` with its validation events moved: each to the training split's last second,
    and onto another item; the training events as they were."""
    valid = data.split == VALID
    timestamp = data.timestamp.copy()
    timestamp[valid] = data.timestamp[data.split == TRAIN].max()
    item = data.item.copy()
    item[valid] = item[valid] % data.n_items + 1
    return dataclasses.replace(data, timestamp=timestamp, item=item)


def test_serving_requests_come_after_the_cut_and_read_no_validation_event(
    movielens_dir: Path,
) -> None:
    run = _untrained_run(movielens_dir)
    data = run.data
    req = _requests(run, "serving")
    cut = history_cut(data, (TRAIN,))
    assert cut == int(data.timestamp[data.split == TRAIN].max()) + 1
    # every request at the cut plus one of the delays; a user's two lists differ only by it
    delay = req.now - cut
    assert (req.now >= cut).all()
    assert set(delay.tolist()) <= {round(d * _DAY) for d in _DELAYS}
    assert len(set(delay.tolist())) > 1
    n = len(req.users) // 2
    assert np.array_equal(req.users[:n], req.users[n:])
    assert np.array_equal(req.candidates[:n], req.candidates[n:])
    assert np.array_equal(req.labels[:n], req.labels[n:])
    # the gaps the time features see are at least the delay (float32 log1p: 1e-4 relative)
    tol = 1.0 + 1e-4
    assert (_hours(req, "hours_since_last") * 3600 * tol >= delay[:, None]).all()
    ever = req.dense[..., DENSE_FEATURES.index("tag_never")] == 0
    tag_gap = _hours(req, "tag_hours_since") * 3600 * tol
    assert (tag_gap[ever] >= np.broadcast_to(delay[:, None], ever.shape)[ever]).all()
    # labelled by every validation event of the user; none of them in the history
    for row, u in enumerate(req.users):
        mine = data.user == u
        v_items = set(data.item[mine & (data.split == VALID)].tolist())
        t_items = set(data.item[mine & (data.split == TRAIN)].tolist())
        cands = req.candidates[row][req.candidates[row] > 0]
        assert not set(cands.tolist()) & t_items
        assert set(req.candidates[row][req.labels[row] > 0].tolist()) == v_items & set(
            cands.tolist()
        )
        assert req.n_relevant[row] == int((mine & (data.split == VALID)).sum())
    # no feature reads a validation event: moving them all (in time and item) changes the
    # labels but not one feature, nor the candidates
    moved = _requests(_untrained_run(movielens_dir, _relabelled(data)), "serving")
    assert np.array_equal(moved.now, req.now)
    assert np.array_equal(moved.candidates, req.candidates)
    np.testing.assert_array_equal(moved.dense, req.dense)
    assert not np.array_equal(moved.labels, req.labels)


def test_next_event_requests_read_the_validation_period_when_stamped(
    movielens_dir: Path,
) -> None:
    """The check above can fail: at the user's next event, moving the validation events moves
    the requests' times and so their time features."""
    run = _untrained_run(movielens_dir)
    req = _requests(run, "next_event")
    moved = _requests(_untrained_run(movielens_dir, _relabelled(run.data)), "next_event")
    assert not np.array_equal(moved.now, req.now)
    assert not np.array_equal(moved.dense, req.dense)


def test_mixed_requests_are_the_next_event_lists_then_the_serving_lists(
    movielens_dir: Path,
) -> None:
    run = _untrained_run(movielens_dir)
    mixed = _requests(run, "mixed")
    nxt, srv = _requests(run, "next_event"), _requests(run, "serving")
    assert len(mixed.users) == len(nxt.users) + len(srv.users)
    for name in ("users", "now", "candidates", "dense", "labels", "n_relevant"):
        np.testing.assert_array_equal(
            getattr(mixed, name), np.concatenate([getattr(nxt, name), getattr(srv, name)])
        )


def test_a_request_stamped_before_its_history_is_refused(movielens_dir: Path) -> None:
    data = load_data(small_config(movielens_dir))
    user = int(data.user[data.split == VALID][0])
    item_emb = np.random.default_rng(0).normal(size=(data.n_items + 1, 4)).astype(np.float32)
    last = int(data.timestamp[(data.user == user) & (data.split == TRAIN)].max())

    def at(now: int) -> Requests:
        return build_requests(
            data,
            np.array([user]),
            np.zeros((1, 4), np.float32),
            exact_retriever(item_emb),
            item_emb=item_emb,
            history_splits=(TRAIN,),
            target=VALID,
            n_candidates=10,
            ease_items=0,
            now=np.array([now]),
        )

    assert at(last).now.tolist() == [last]
    with pytest.raises(ValueError, match="now: a request is stamped before"):
        at(last - 1)


def test_frozen_item_activity_is_what_a_bundle_snapshots(movielens_dir: Path) -> None:
    """Training requests at the cut read item activity as a bundle built there serves it."""
    from tailored.bundle import snapshot

    data = load_data(small_config(movielens_dir))
    h = _with_times(data, (TRAIN, VALID))
    frozen = _frozen(
        ItemActivity.of(h.items, h.times, data.n_items),
        history_cut(data, (TRAIN, VALID)),
        data.n_items,
    )
    through_valid = snapshot.cut(data, "valid")
    np.testing.assert_array_equal(frozen.table, snapshot.activity(through_valid))
    np.testing.assert_array_equal(frozen.first_seen, snapshot.first_seen(through_valid))


def test_request_delays_draw_each_of_the_days() -> None:
    got = request_delays((0.0, 1.5, 30.0), 3000, np.random.default_rng(0))
    values, counts = np.unique(got, return_counts=True)
    assert values.tolist() == [0, round(1.5 * _DAY), 30 * _DAY]
    assert counts.min() > 900  # about a third each


def test_request_time_settings() -> None:
    cfg = load_config(values={"ranker": {"request_time": "serving", "request_delay_days": [0, 2]}})
    assert cfg.ranker.request_time == "serving"
    assert cfg.ranker.request_delay_days == (0.0, 2.0)
    with pytest.raises(ConfigError, match=r"\[ranker\] request_time: 'wall' is not one of"):
        load_config(values={"ranker": {"request_time": "wall"}})
    for bad in ([], [-1], ["7"], [True], 7):
        with pytest.raises(ConfigError, match=r"\[ranker\] request_delay_days: a non-empty list"):
            load_config(values={"ranker": {"request_delay_days": bad}})
