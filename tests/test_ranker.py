"""The re-ranker: its NDCG, its training on a planted signal, and its ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tailored.config import RankerConfig
from tailored.data.features import FeatureTable
from tailored.data.ranking_features import DENSE_FEATURES
from tailored.train.export import export_ranker, max_abs_diff
from tailored.train.ranker import RANKER_INPUTS, Ranker, RankerSpec
from tailored.train.ranker_data import Requests
from tailored.train.ranker_task import RankerTables, list_ndcg, train_ranker


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
    )
    return RankerTables(users, np.ones((n_req, 1), np.int64), items, item_emb), req


def test_the_ranker_learns_a_planted_signal() -> None:
    tables, req = _planted()
    cfg = RankerConfig(max_epochs=15, patience=3, batch_users=32, lr=3e-3)
    result = train_ranker(_spec(), cfg, tables, req, seed=0, progress_bar=False)
    # retrieval order is random here: about the NDCG of a random list
    assert result.holdout_retrieval_ndcg10 < 0.6
    assert result.holdout_ndcg10 > 0.95
    assert result.holdout_ndcg10 > result.holdout_retrieval_ndcg10 + 0.3


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
