"""The re-ranker: its NDCG, its training on a planted signal, and its ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tailored.config import RankerConfig
from tailored.data.features import FeatureTable
from tailored.data.ranking_features import DENSE_FEATURES
from tailored.errors import TailoredError
from tailored.train.onnx import max_abs_diff
from tailored.train.ranker.data import Requests
from tailored.train.ranker.export import export_ranker
from tailored.train.ranker.fit import list_cuts
from tailored.train.ranker.model import (
    MIN_DENSE_STD,
    RANKER_INPUTS,
    Ranker,
    RankerEnsemble,
    RankerSpec,
)
from tailored.train.ranker.task import RankerTables, lambdarank_loss, list_ndcg, train_ranker


def test_list_ndcg_by_hand() -> None:
    # request 0: positives at candidates 1 and 3; scores put 3 first, 1 third
    # DCG = 1/log2(2) + 1/log2(4) = 1.5; ideal with 2 relevant = 1 + 1/log2(3) = 1.6309
    # request 1: one positive, retrieved, ranked first, but the user has 4 relevant items
    # DCG = 1; ideal = 1 + 1/log2(3) + 1/2 + 1/log2(5) = 2.5616
    logits = torch.tensor([[0.1, 0.5, 0.0, 0.9], [0.9, 0.1, 0.0, 0.0]])
    labels = torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    got = list_ndcg(logits, labels, torch.tensor([2, 4]), k=3)
    ideal1 = 1 + 1 / np.log2(3) + 0.5
    # request 0, k=3: order 3, 1, 0 -> gains 1, 1, 0 -> DCG 1 + 1/log2(3)
    np.testing.assert_allclose(got.numpy(), [1.0, 1.0 / ideal1], rtol=1e-5)


def test_lambdarank_loss_by_hand() -> None:
    # one list: positive at candidate 0 scored 0, negatives 1 (scored 1) and 2 (scored -1),
    # candidate 3 padding. Current ranks: 1, 0, 2 -> discounts 1/log2(3), 1, 1/2; one
    # positive -> ideal DCG 1. Pair (0, 1): weight |1/log2(3) - 1|, softplus(-(0 - 1));
    # pair (0, 2): weight |1/log2(3) - 1/2|, softplus(-(0 + 1))
    logits = torch.tensor([[0.0, 1.0, -1.0, -1e9]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, False]])
    d = 1 / np.log2(3)
    want = abs(d - 1) * np.log1p(np.e) + abs(d - 0.5) * np.log1p(np.exp(-1))
    loss = lambdarank_loss(logits, labels, valid)
    np.testing.assert_allclose(loss.item(), want, rtol=1e-5)
    loss.backward()
    assert logits.grad is not None
    assert logits.grad[0, 0] < 0 < logits.grad[0, 1]  # the positive up, the negative above down
    assert logits.grad[0, 3] == 0  # padding takes part in no pair


def _spec(dim: int = 8) -> RankerSpec:
    return RankerSpec(
        user_categorical=(3,),
        user_numeric=1,
        context=(2,),
        item_categorical=(4,),
        item_multi=(5,),
        item_numeric=1,
        dense=len(DENSE_FEATURES),
        embedding_dim=dim,
        feature_dim=4,
        cross_layers=2,
        hidden=32,
    )


def _planted(n_req: int = 400, c: int = 20, n_items: int = 60, seed: int = 0):
    """Requests whose positives are the items of item category 3, in random retrieval order,
    so the ranker must learn the category (retrieval order carries no signal)."""
    rng = np.random.default_rng(seed)
    items = FeatureTable(
        np.r_[[[0]], rng.integers(1, 4, (n_items, 1))],
        np.r_[np.zeros((1, 1, 8), np.int64), rng.integers(0, 5, (n_items, 1, 8))],
        np.r_[[[0.0]], rng.normal(size=(n_items, 1))].astype(np.float32),
    )
    users = FeatureTable(
        rng.integers(1, 3, (n_req, 1)),
        np.zeros((n_req, 0, 8), np.int64),
        rng.normal(size=(n_req, 1)).astype(np.float32),
    )
    item_emb = rng.normal(size=(n_items + 1, 8)).astype(np.float32)
    cands = np.stack(
        [rng.choice(np.arange(1, n_items + 1), c, replace=False) for _ in range(n_req)]
    )
    labels = (items.categorical[cands, 0] == 3).astype(np.float32)
    req = Requests(
        users=np.arange(n_req),
        now=np.zeros(n_req, np.int64),
        user_emb=rng.normal(size=(n_req, 8)).astype(np.float32),
        candidates=cands,
        scores=np.zeros(cands.shape, np.float32),
        dense=rng.normal(size=(n_req, c, len(DENSE_FEATURES))).astype(np.float32),
        labels=labels,
        n_relevant=np.maximum(labels.sum(1), 1).astype(np.int64),
        neg_weight=np.ones(cands.shape, np.float32),
        gain=labels,
    )
    return RankerTables(users, np.ones((n_req, 1), np.int64), items, item_emb), req


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["softmax", "lambdarank"])
def test_the_ranker_learns_a_planted_signal(loss: str) -> None:
    tables, req = _planted()
    cfg = RankerConfig(max_epochs=15, patience=3, batch_users=32, lr=3e-3, loss=loss)
    result = train_ranker(_spec(), cfg, tables, req, seed=0, progress_bar=False)
    # retrieval order is random here: about the NDCG of a random list
    assert result.holdout_retrieval_ndcg10 < 0.6
    assert result.holdout_ndcg10 > 0.95
    assert result.holdout_ndcg10 > result.holdout_retrieval_ndcg10 + 0.3


@pytest.mark.slow
def test_ranker_onnx_agrees_with_torch(tmp_path: Path) -> None:
    tables, req = _planted(n_req=8)
    torch.manual_seed(0)
    model = Ranker(_spec()).eval()
    model.set_dense_stats(torch.randn(len(DENSE_FEATURES)), torch.rand(len(DENSE_FEATURES)) + 0.5)
    example = tables.batch(req.take(np.arange(2)))
    path = export_ranker(model, example, tmp_path / "ranker.onnx")
    # real rows of other requests, a different batch size than the traced one
    rows = tables.batch(req.take(np.arange(2, 8)))
    inputs = {k: rows[k].numpy() for k in RANKER_INPUTS}
    assert max_abs_diff(model, path, inputs) <= 1e-4
    # random inputs of the same shapes, one row
    rng = np.random.default_rng(1)
    random_inputs = {
        k: (
            rng.integers(0, 2, v[:1].shape) if v.dtype == np.int64 else rng.normal(size=v[:1].shape)
        ).astype(v.dtype)
        for k, v in inputs.items()
    }
    assert max_abs_diff(model, path, random_inputs) <= 1e-4


def test_ranker_spec_round_trips() -> None:
    spec = _spec()
    assert RankerSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("rows", [1, 17])
def test_ranker_output_shape(rows: int) -> None:
    tables, req = _planted(n_req=rows, c=1)
    b = tables.batch(req)
    out = Ranker(_spec()).eval()(*(b[k] for k in RANKER_INPUTS))
    assert out.shape == (rows,)


@pytest.mark.slow
def test_an_ensemble_holds_out_disjoint_folds_and_exports_as_one_graph(tmp_path: Path) -> None:
    tables, req = _planted(n_req=300)
    # each user gives two requests: the folds must keep a user's requests on one side
    req = Requests(*(np.concatenate([getattr(req, f)] * 2) for f in req.__dataclass_fields__))
    cfg = RankerConfig(max_epochs=8, patience=2, batch_users=32, lr=3e-3, ensemble=3)
    result = train_ranker(_spec(), cfg, tables, req, seed=0, progress_bar=False)
    assert isinstance(result.model, RankerEnsemble)
    assert len(result.model.members) == 3 and len(result.epochs) == 3
    # the members differ (each fitted on other users), and the ensemble is their mean
    b = tables.batch(req.take(np.arange(4)))
    inputs = tuple(b[k] for k in RANKER_INPUTS)
    with torch.no_grad():
        each = torch.stack([m(*inputs) for m in result.model.members])
        assert not torch.allclose(each[0], each[1])
        torch.testing.assert_close(result.model(*inputs), each.mean(0))
    # the out-of-fold figure: every request scored by the member that did not see it
    assert result.holdout_ndcg10 > result.holdout_retrieval_ndcg10 + 0.3
    path = export_ranker(result.model, b, tmp_path / "ranker.onnx")
    rows = tables.batch(req.take(np.arange(4, 30)))
    assert max_abs_diff(result.model, path, {k: rows[k].numpy() for k in RANKER_INPUTS}) <= 1e-4


def test_an_ensemble_needs_as_many_users_as_members() -> None:
    tables, req = _planted(n_req=2)
    cfg = RankerConfig(max_epochs=1, ensemble=3)
    with pytest.raises(TailoredError, match="ensemble = 3: only 2 users"):
        train_ranker(_spec(), cfg, tables, req, seed=0, progress_bar=False)


def test_requests_with_a_prefix_move_target_events_into_the_history(movielens_dir: Path) -> None:
    """One user, three requests: at the start of their validation period, after one and after
    two of its events; each later request excludes what joined the history and is labelled
    by what is left (real MovieLens-100k, exact retrieval over random vectors)."""
    from tailored.data.splits import TRAIN, VALID
    from tailored.train.ranker.data import build_requests, exact_retriever
    from tailored.train.runs import load_data
    from tests.helpers import small_config

    data = load_data(small_config(movielens_dir))
    valid = data.split == VALID
    n_valid = np.bincount(data.user[valid], minlength=data.n_users)
    user = int(np.flatnonzero(n_valid >= 4)[0])
    v_items = data.item[valid & (data.user == user)].astype(np.int64)
    v_times = data.timestamp[valid & (data.user == user)]
    rng = np.random.default_rng(0)
    item_emb = rng.normal(size=(data.n_items + 1, 8)).astype(np.float32)
    users = np.full(3, user)
    req = build_requests(
        data,
        users,
        rng.normal(size=(3, 8)).astype(np.float32),
        exact_retriever(item_emb),
        item_emb=item_emb,
        history_splits=(TRAIN,),
        target=VALID,
        n_candidates=data.n_items,  # every item not in the history is a candidate
        prefix=np.array([0, 1, 2]),
    )
    train_items = data.item[(data.split == TRAIN) & (data.user == user)]
    for row, p in enumerate([0, 1, 2]):
        cands = set(req.candidates[row][req.candidates[row] > 0].tolist())
        assert not cands & set(train_items.tolist())
        assert not cands & set(v_items[:p].tolist())  # moved into the history
        assert set(v_items[p:].tolist()) <= cands
        positives = set(req.candidates[row][req.labels[row] > 0].tolist())
        assert positives == set(v_items[p:].tolist())
        assert req.n_relevant[row] == len(v_items) - p
        assert req.now[row] == v_times[p]
    with pytest.raises(ValueError, match="prefix"):
        build_requests(
            data,
            users[:1],
            np.zeros((1, 8), np.float32),
            exact_retriever(item_emb),
            item_emb=item_emb,
            history_splits=(TRAIN,),
            target=VALID,
            n_candidates=10,
            prefix=np.array([len(v_items)]),  # nothing would be left to label it
        )


def test_list_cuts_split_each_period_evenly_and_never_repeat_a_list() -> None:
    n_target = np.array([9, 2, 1, 3, 0])
    rows, prefix = list_cuts(n_target, 3)
    pairs = sorted(zip(rows.tolist(), prefix.tolist(), strict=True))
    # every user's first request; then cuts at n * j // 3 where they leave an event to label:
    # 9 -> 3, 6; 2 -> 1 (0 is the first request's); 1 -> none; 3 -> 1, 2; 0 -> none
    assert pairs == [(0, 0), (0, 3), (0, 6), (1, 0), (1, 1), (2, 0), (3, 0), (3, 1), (3, 2), (4, 0)]
    # more lists than events: the cuts 2 * j // 4 are 0, 1, 1; the repeated 1 is dropped
    rows, prefix = list_cuts(np.array([2, 8]), 4)
    pairs = sorted(zip(rows.tolist(), prefix.tolist(), strict=True))
    assert pairs == [(0, 0), (0, 1), (1, 0), (1, 2), (1, 4), (1, 6)]
    # one list per user: exactly the users, nothing moved
    rows, prefix = list_cuts(np.array([5, 1]), 1)
    assert rows.tolist() == [0, 1] and prefix.tolist() == [0, 0]


def test_a_dense_feature_constant_in_training_is_centred_not_blown_up() -> None:
    model = Ranker(_spec())
    f = len(DENSE_FEATURES)
    mean = torch.arange(f, dtype=torch.float32)
    std = torch.full((f,), 2.0)
    std[3] = 0.0  # constant over the training rows
    std[5] = 1e-9
    std[7] = 7.6e-6  # nearly constant: scaled by at most 1 / MIN_DENSE_STD
    model.set_dense_stats(mean, std)
    assert model.dense_std[3] == model.dense_std[5] == 1.0
    assert model.dense_std[0] == 2.0
    assert model.dense_std[7] == MIN_DENSE_STD
    np.testing.assert_array_equal(model.dense_mean.numpy(), mean.numpy())
