"""The ranker's ``cohort_rate`` served as it was learnt: a bundle of a synthetic site with
``[ranker] cohort_fields`` keeps its users' cohorts and their engagements per item; the
recommender reads a known user's cohort from the bundle and a new user's from the profile
the request sends, and counts what offline training counts."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tailored.bundle.format import BUNDLE_FILES, BundleError
from tailored.bundle.runtime import LoadedBundle
from tailored.config import load_serve_config
from tailored.data.cohorts import CohortActivity, Cohorts, cohort_columns
from tailored.data.ranking_features import DENSE_FEATURES
from tailored.data.splits import TRAIN, VALID
from tailored.serve.recommender import Recommender, Request
from tailored.train.ranker.data import build_requests, exact_retriever
from tailored.train.runs import load_data
from tests.helpers import reseal, synthetic_bundle

pytestmark = pytest.mark.slow  # trains on a synthetic site and builds a bundle

COHORT = DENSE_FEATURES.index("cohort_rate")
FIELDS = ["gender", "region"]
MIN_USERS = 15


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, faiss_one_thread: None) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("cohorts")
    overrides = {"ranker.cohort_fields": FIELDS, "ranker.cohort_min_users": MIN_USERS}
    bundles, cfg = synthetic_bundle(base, users=400, items=100, overrides=overrides)
    data = load_data(cfg)
    columns = list(cohort_columns(data.user_encoder, tuple(FIELDS)))
    cohorts, of_user = Cohorts.of(data.users.categorical[:, columns], MIN_USERS)
    return {
        "bundle": bundles / "v000001",
        "cfg": cfg,
        "data": data,
        "cohorts": cohorts,
        "of_user": of_user,
        "columns": columns,
    }


def test_served_cohort_rates_are_the_counts_training_reads(site: dict[str, Any]) -> None:
    data, cohorts, of_user = site["data"], site["cohorts"], site["of_user"]
    assert len(cohorts) > 3 and (cohorts.sizes[1:] >= MIN_USERS).all()
    bundle = LoadedBundle.load(site["bundle"])
    assert bundle.cohorts is not None
    np.testing.assert_array_equal(bundle.cohorts.cohorts.keys, cohorts.keys)
    rec = Recommender(bundle, load_serve_config(overrides={"clock": "bundle"}))
    every = np.arange(1, bundle.n_items + 1, dtype=np.int64)
    zeros = np.zeros(len(every), np.float32)
    act = CohortActivity.of(
        of_user[data.user], data.item, data.timestamp, data.n_items, len(cohorts)
    )
    after = int(data.timestamp.max()) + 1
    seen_groups = set()
    for u in range(0, data.n_users, 9):
        req = Request(str(data.user_ids[u]), 10, "home", float(after), personalized=True)
        served = rec.ranking_features(req, every, zeros)[:, COHORT]
        g = int(of_user[u])
        offline = np.log1p(cohorts.rate(g, act.counts(g, every, after)))
        np.testing.assert_allclose(served, offline, rtol=1e-6, err_msg=str(u))
        seen_groups.add(g)
    assert len(seen_groups) > 2
    # a user the bundle has never seen: the cohort of the profile the request sends
    g = 1 + int(np.argmax(cohorts.sizes[1:]))
    profile = {
        name: data.user_encoder.vocabs[name][int(code) - 1]
        for name, code in zip(FIELDS, cohorts.keys[g], strict=True)
    }
    new = Request("someone-new", 10, "home", float(after), personalized=True, profile=profile)
    np.testing.assert_allclose(
        rec.ranking_features(new, every, zeros)[:, COHORT],
        np.log1p(cohorts.rate(g, act.counts(g, every, after))),
        rtol=1e-6,
    )
    nobody = Request("someone-else", 10, "home", float(after), personalized=True)
    np.testing.assert_allclose(
        rec.ranking_features(nobody, every, zeros)[:, COHORT],
        np.log1p(cohorts.rate(0, act.counts(0, every, after))),
        rtol=1e-6,
    )


def test_offline_requests_count_only_what_came_before_each_request(
    site: dict[str, Any],
) -> None:
    data, cohorts, of_user, cfg = site["data"], site["cohorts"], site["of_user"], site["cfg"]
    users = np.unique(data.user[data.split == VALID])[:40]
    rng = np.random.default_rng(0)
    item_emb = rng.normal(size=(data.n_items + 1, 8)).astype(np.float32)
    user_emb = rng.normal(size=(len(users), 8)).astype(np.float32)
    req = build_requests(
        data,
        users,
        user_emb,
        exact_retriever(item_emb),
        item_emb=item_emb,
        history_splits=(TRAIN,),
        target=VALID,
        n_candidates=20,
        cohort_fields=tuple(FIELDS),
        cohort_min_users=MIN_USERS,
        ease_items=0,
    )
    train = data.split == TRAIN
    act = CohortActivity.of(
        of_user[data.user[train]],
        data.item[train],
        data.timestamp[train],
        data.n_items,
        len(cohorts),
    )
    for row, u in enumerate(users):
        g = int(of_user[u])
        expected = np.log1p(cohorts.rate(g, act.counts(g, req.candidates[row], req.now[row])))
        np.testing.assert_allclose(req.dense[row, :, COHORT], expected, rtol=1e-6)
    assert (req.dense[:, :, COHORT] > 0).any()
    none = build_requests(
        data,
        users,
        user_emb,
        exact_retriever(item_emb),
        item_emb=item_emb,
        history_splits=(TRAIN,),
        target=VALID,
        n_candidates=20,
        ease_items=0,
    )
    assert (none.dense[:, :, COHORT] == 0).all()
    assert cfg.ranker.cohort_fields == tuple(FIELDS)


def test_a_bundle_missing_a_cohort_file_is_refused(site: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "v000001"
    shutil.copytree(site["bundle"], copy)
    (copy / BUNDLE_FILES["cohort_items"]).unlink()
    reseal(copy)
    with pytest.raises(BundleError, match=r"cohorts/items\.npy missing beside the other"):
        LoadedBundle.load(copy)
    # the feature reads cohorts; without any of their files a bundle serves it as 0
    for key in ("cohort_columns", "cohort_keys", "cohort_sizes", "cohort_offsets", "cohort_counts"):
        (copy / BUNDLE_FILES[key]).unlink()
    reseal(copy)
    assert LoadedBundle.load(copy).cohorts is None
