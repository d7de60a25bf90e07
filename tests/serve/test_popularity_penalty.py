"""``[ranker] popularity_penalty``: the ranker's lists ordered by its score less a share of the
items' popularity, the same wherever the ranker orders a list (a bundle's ``rank``, so
serving and ``tailored evaluate``), read from the bundle's configuration; with
``popularity_penalty_below``, only under the ranker's own first places."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tailored.bundle.format import BundleError, latest_bundle
from tailored.bundle.runtime import LoadedBundle
from tailored.config import ConfigError, load_config, load_serve_config
from tailored.data.features import MAX_MULTI, FeatureTable
from tailored.data.ranking_features import DENSE_FEATURES, popularity_penalized
from tailored.serve.recommender import Recommender, Request
from tests.helpers import reseal

COUNT = DENSE_FEATURES.index("item_count")


def test_the_penalty_standardises_within_each_list_and_leaves_no_candidate_out() -> None:
    scores = np.array([[3.0, 2.0, 1.0, 7.0], [1.0, 1.0, 1.0, 0.0]], np.float32)
    dense = np.zeros((2, 4, len(DENSE_FEATURES)), np.float32)
    dense[0, :, COUNT] = [8.0, 1.0, 1.0, 0.0]  # the last is padding (candidate 0)
    dense[1, :, COUNT] = [5.0, 4.0, 3.0, 0.0]
    cands = np.array([[5, 6, 7, 0], [1, 2, 3, 0]])
    np.testing.assert_array_equal(popularity_penalized(scores, dense, cands, 0.0), scores)
    got = popularity_penalized(scores, dense, cands, 1.0)
    assert np.isneginf(got[:, 3]).all()

    def z(x: list[float]) -> np.ndarray:
        a = np.asarray(x)
        return (a - a.mean()) / a.std()

    np.testing.assert_allclose(got[0, :3], z([3, 2, 1]) - z([8, 1, 1]), rtol=1e-6)
    # equal scores carry no order of their own: the least popular comes first
    np.testing.assert_allclose(got[1, :3], -z([5, 4, 3]), rtol=1e-6)
    assert np.argsort(-got[0]).tolist()[:3] == [1, 0, 2]  # the popular best item drops


def test_the_penalty_below_the_head_keeps_the_head_in_the_rankers_order() -> None:
    rng = np.random.default_rng(0)
    r, c = 6, 40
    scores = rng.normal(size=(r, c)).astype(np.float32)
    dense = np.zeros((r, c, len(DENSE_FEATURES)), np.float32)
    # the best-scored items are the most popular: a penalty over the whole list moves them
    dense[..., COUNT] = scores * 3 + rng.normal(size=(r, c)).astype(np.float32)
    cands = np.tile(np.arange(1, c + 1), (r, 1))
    cands[:, -5:] = 0  # padding
    whole = popularity_penalized(scores, dense, cands, 2.0)
    for below in (1, 3, 8):
        got = popularity_penalized(scores, dense, cands, 2.0, below)
        assert np.isneginf(got[:, -5:]).all()
        for i in range(r):
            real = cands[i] > 0
            by_score = np.argsort(-np.where(real, scores[i], -np.inf), kind="stable")
            order = np.argsort(-got[i], kind="stable")
            # the head: the ranker's first ``below``, in its order
            assert order[:below].tolist() == by_score[:below].tolist()
            # the rest: in the whole-list penalty's order
            rest = [j for j in np.argsort(-whole[i], kind="stable") if j not in by_score[:below]]
            assert order[below : real.sum()].tolist() == rest[: real.sum() - below]
    # the head spans the list: the ranker's own order
    everything = popularity_penalized(scores, dense, cands, 2.0, c)
    np.testing.assert_array_equal(
        np.argsort(-everything, axis=1, kind="stable")[:, : c - 5],
        np.argsort(-np.where(cands > 0, scores, -np.inf), axis=1, kind="stable")[:, : c - 5],
    )
    # a request without candidates has no head; one with fewer than ``below`` is all head
    short = cands.copy()
    short[0] = 0
    short[1, 3:] = 0
    got = popularity_penalized(scores, dense, short, 2.0, 8)
    assert np.isneginf(got[0]).all()
    assert np.argsort(-got[1])[:3].tolist() == np.argsort(-scores[1, :3]).tolist()
    # without a penalty there is nothing to leave above it
    np.testing.assert_array_equal(popularity_penalized(scores, dense, cands, 0.0, 3), scores)


def test_a_bundle_ranks_with_the_penalty_its_configuration_names(
    serve_bundle: Path, tmp_path: Path
) -> None:
    source = latest_bundle(serve_bundle)
    assert source is not None
    plain = LoadedBundle.load(source)
    assert plain.popularity_penalty == 0.0
    copy = tmp_path / source.name
    shutil.copytree(source, copy)
    doc = json.loads((copy / "manifest.json").read_text())
    doc["config"]["ranker"]["popularity_penalty"] = 0.5
    (copy / "manifest.json").write_text(json.dumps(doc))
    reseal(copy)
    penalised = LoadedBundle.load(copy)
    assert penalised.popularity_penalty == 0.5

    rec = Recommender(plain, load_serve_config(overrides={"clock": "bundle"}))
    snap = plain.users
    assert snap is not None
    req = Request(str(snap.ids[0]), 10, "home", float(plain.last_event_time + 3600), True)
    every = np.arange(1, plain.n_items + 1, dtype=np.int64)
    dense = rec.ranking_features(req, every, np.zeros(len(every), np.float32))[None]
    users = FeatureTable(
        snap.categorical[:1], np.zeros((1, 0, MAX_MULTI), np.int64), snap.numeric[:1]
    )
    context = np.zeros((1, len(plain.info.get("context_vocabs") or {})), np.int64)
    user_emb = plain.item_embeddings[1:2]  # any vector of the towers' width

    def rank(bundle: LoadedBundle) -> np.ndarray:
        return bundle.rank(
            users=users, context=context, candidates=every[None], dense=dense, user_emb=user_emb
        )

    raw, got = rank(plain), rank(penalised)
    np.testing.assert_allclose(got, popularity_penalized(raw, dense, every[None], 0.5), rtol=1e-5)
    # an experiment's variant sets its own, whatever the bundle's
    np.testing.assert_array_equal(
        plain.rank(
            users=users,
            context=context,
            candidates=every[None],
            dense=dense,
            user_emb=user_emb,
            popularity_penalty=0.5,
        ),
        got,
    )
    variant = Request(req.user, 10, "home", req.time, True, variant={"popularity_penalty": 0.5})
    assert rec.recommend(variant).item_ids != rec.recommend(req).item_ids
    # the penalised list leans to less popular items
    pop = dense[0, :, COUNT]
    plain_top, penalised_top = np.argsort(-raw[0])[:10], np.argsort(-got[0])[:10]
    assert pop[penalised_top].mean() < pop[plain_top].mean()

    # popularity_penalty_below: the bundle's, or a variant's
    doc["config"]["ranker"]["popularity_penalty_below"] = 4
    (copy / "manifest.json").write_text(json.dumps(doc))
    reseal(copy)
    headed = LoadedBundle.load(copy)
    assert headed.popularity_penalty_below == 4
    kept = rank(headed)
    np.testing.assert_allclose(
        kept, popularity_penalized(raw, dense, every[None], 0.5, 4), rtol=1e-5
    )
    assert np.argsort(-kept[0])[:4].tolist() == np.argsort(-raw[0])[:4].tolist()
    assert np.argsort(-kept[0])[:10].tolist() != np.argsort(-raw[0])[:10].tolist()
    both = {"popularity_penalty": 0.5, "popularity_penalty_below": 4}
    assert (
        rec.recommend(Request(req.user, 10, "home", req.time, True, variant=both)).item_ids
        == Recommender(headed, load_serve_config(overrides={"clock": "bundle"}))
        .recommend(req)
        .item_ids
    )


@pytest.mark.parametrize(
    ("ranker", "named"),
    [
        ({"popularity_penalty": -0.5}, r"config\.ranker\.popularity_penalty: must be a number"),
        ({"popularity_penalty": "high"}, r"config\.ranker\.popularity_penalty: must be a number"),
        ({"popularity_penalty_below": 2.5}, r"popularity_penalty_below: must be an integer"),
        ({"popularity_penalty_below": True}, r"popularity_penalty_below: must be an integer"),
        ("fast", r"config\.ranker is no table"),
    ],
)
def test_a_bundle_whose_configuration_has_a_bad_penalty_is_refused(
    serve_bundle: Path, tmp_path: Path, ranker: object, named: str
) -> None:
    source = latest_bundle(serve_bundle)
    assert source is not None
    copy = tmp_path / source.name
    shutil.copytree(source, copy)
    doc = json.loads((copy / "manifest.json").read_text())
    if isinstance(ranker, dict):
        doc["config"]["ranker"].update(ranker)
    else:
        doc["config"]["ranker"] = ranker
    (copy / "manifest.json").write_text(json.dumps(doc))
    reseal(copy)  # the hashes agree: the load's own checks must refuse it
    with pytest.raises(BundleError, match=named):
        LoadedBundle.load(copy)


def test_a_negative_penalty_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[ranker\] popularity_penalty"):
        load_config(values={"ranker": {"popularity_penalty": -0.1}})
    for bad in (-1, 2.5, True):
        with pytest.raises(ConfigError, match=r"\[ranker\] popularity_penalty_below"):
            load_config(values={"ranker": {"popularity_penalty_below": bad}})
