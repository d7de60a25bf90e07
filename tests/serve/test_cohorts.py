"""The ranker's cohort features (``[ranker] cohorts``) served as they were learnt: a
bundle of a synthetic site keeps the cohorts' counts (none for cohorts too small), the
recommender reads a known user's cohort from the bundle and a new user's from the request's
profile, and files that do not fit together are refused at load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tailored.bundle import snapshot
from tailored.bundle.build import refresh
from tailored.bundle.format import BUNDLE_FILES, COHORT_FILES, BundleError
from tailored.bundle.runtime import LoadedBundle
from tailored.config import ConfigError, RankerConfig, from_dict, load_serve_config
from tailored.data.interactions import Interactions
from tailored.data.ranking_features import DENSE_FEATURES, CohortCounts
from tailored.serve.recommender import Recommender, Request
from tailored.train.runs import load_data
from tests.conftest import COHORT_MIN_USERS
from tests.helpers import reseal

pytestmark = pytest.mark.slow  # trains on a synthetic site and builds a bundle

COHORT = [DENSE_FEATURES.index("cohort_lift"), DENSE_FEATURES.index("cohort_lift_max")]
FIELDS = ["gender", "age", "region"]
MIN_USERS = COHORT_MIN_USERS


@pytest.fixture
def site(cohort_site: dict[str, Any]) -> dict[str, Any]:
    """The session's synthetic bundle with cohorts (``tests/conftest.py``)."""
    return cohort_site


def test_the_bundle_keeps_every_event_s_cohort_counts(site: dict[str, Any]) -> None:
    data: Interactions = site["data"]
    bundle = LoadedBundle.load(site["version"])
    served = bundle.cohorts
    assert served is not None
    offline = snapshot.cohorts(data, site["cfg"].ranker)
    for attr in COHORT_FILES.values():
        np.testing.assert_array_equal(getattr(served, attr), getattr(offline, attr), err_msg=attr)
    # the cohorts kept are those with enough users engaging, and some are left out
    keys = served.keys(data.users.categorical)
    engaged = np.unique(data.user)
    found, n = np.unique(keys[engaged].ravel(), return_counts=True)
    assert served.cohorts.tolist() == found[n >= MIN_USERS].tolist()
    assert (n < MIN_USERS).any() and len(served.cohorts) >= 5


def test_served_cohort_features_are_the_offline_ones(site: dict[str, Any]) -> None:
    data: Interactions = site["data"]
    bundle = LoadedBundle.load(site["version"])
    assert bundle.cohorts is not None
    rec = Recommender(bundle, load_serve_config(overrides={"clock": "bundle"}))
    every = np.arange(1, bundle.n_items + 1, dtype=np.int64)
    keys = bundle.cohorts.keys(data.users.categorical)
    checked = 0
    for u in range(0, data.n_users, 3):
        req = Request(str(data.user_ids[u]), 10, "home", bundle.last_event_time + 60, True)
        served = rec.ranking_features(req, every, np.zeros(len(every), np.float32))[:, COHORT]
        offline = np.stack(bundle.cohorts.scores(keys[u], every), 1)
        np.testing.assert_array_equal(served, offline, err_msg=str(u))
        checked += int(offline.any())
    assert checked > 20  # most users are in a kept cohort


def test_a_new_user_s_cohort_comes_from_the_request_s_profile(site: dict[str, Any]) -> None:
    data: Interactions = site["data"]
    bundle = LoadedBundle.load(site["version"])
    assert bundle.cohorts is not None
    rec = Recommender(bundle, load_serve_config(overrides={"clock": "bundle"}))
    users = pq.read_table(Path(site["cfg"].data.dataset) / "users.parquet").to_pylist()
    raw = {r["user_id"]: r for r in users}
    keys = bundle.cohorts.keys(data.users.categorical)
    kept = np.isin(keys, bundle.cohorts.cohorts).sum(axis=1) == keys.shape[1]
    u = next(u for u in range(data.n_users) if kept[u] and raw[data.user_ids[u]]["gender"])
    profile = {f: str(raw[data.user_ids[u]][f]) for f in FIELDS}
    every = np.arange(1, bundle.n_items + 1, dtype=np.int64)
    now = bundle.last_event_time + 60
    new = Request("someone-new", 10, "home", now, True, profile=profile)
    served = rec.ranking_features(new, every, np.zeros(len(every), np.float32))[:, COHORT]
    np.testing.assert_array_equal(served, np.stack(bundle.cohorts.scores(keys[u], every), 1))
    assert served.any()
    bare = Request("someone-else", 10, "home", now, True)  # no profile: the all-missing cohort
    plain = rec.ranking_features(bare, every, np.zeros(len(every), np.float32))[:, COHORT]
    missing = bundle.cohorts.keys(np.zeros((1, data.users.categorical.shape[1]), int))[0]
    np.testing.assert_array_equal(plain, np.stack(bundle.cohorts.scores(missing, every), 1))


def _drop(version: Path) -> None:
    (version / BUNDLE_FILES["cohort_counts"]).unlink()


def _bad_item(version: Path) -> None:
    path = version / BUNDLE_FILES["cohort_items"]
    items = np.load(path)
    items[0] = 10_000
    np.save(path, items)


def _bad_column(version: Path) -> None:
    path = version / BUNDLE_FILES["cohort_columns"]
    cols = np.load(path)
    cols[0, 1] = 99
    np.save(path, cols)


def _other_cohorts(version: Path) -> None:
    """The manifest's configuration names other cohorts than the files were counted for."""
    path = version / "manifest.json"
    doc = json.loads(path.read_text())
    doc["config"]["ranker"]["cohorts"] = [["gender"]]
    path.write_text(json.dumps(doc))


def _inflated_total(version: Path) -> None:
    path = version / BUNDLE_FILES["cohort_totals"]
    totals = np.load(path)
    totals[0] += 1.0
    np.save(path, totals)


def _cohort_past_the_keys(version: Path) -> None:
    columns = np.load(version / BUNDLE_FILES["cohort_columns"])
    path = version / BUNDLE_FILES["cohort_ids"]
    ids = np.load(path)
    ids[-1] = CohortCounts.n_keys(columns)
    np.save(path, ids)


def _negative_count(version: Path) -> None:
    path = version / BUNDLE_FILES["cohort_counts"]
    counts = np.load(path)
    counts[0] = -1.0
    np.save(path, counts)


def _integer_counts(version: Path) -> None:
    path = version / BUNDLE_FILES["cohort_counts"]
    np.save(path, np.load(path).astype(np.int64))


def _empty_cohort(version: Path) -> None:
    """The first cohort's items handed to the second: offsets that still cut the items."""
    path = version / BUNDLE_FILES["cohort_offsets"]
    offsets = np.load(path)
    offsets[1] = 0
    np.save(path, offsets)


COLUMNS_WRONG = r"cohorts/columns\.npy: .* where the configuration's \[ranker\] cohorts give"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (_drop, "no cohorts/counts.npy beside the other cohort files"),
        (_bad_item, r"cohorts/items\.npy: items outside 1\.\.120"),
        (_bad_column, COLUMNS_WRONG),
        (_other_cohorts, COLUMNS_WRONG),
        (_inflated_total, r"cohorts/totals\.npy: not the sum of each cohort's counts"),
        (_cohort_past_the_keys, r"cohorts/cohorts\.npy: cohorts outside 0\.\."),
        (_negative_count, r"cohorts/counts\.npy: not a vector of finite numbers >= 0"),
        (_integer_counts, r"cohorts/counts\.npy: int64 where floats belong"),
        (_empty_cohort, r"cohorts/offsets\.npy: a cohort with no items"),
    ],
    ids=[
        "one-missing",
        "item-out-of-range",
        "column-out-of-range",
        "other-cohorts",
        "total",
        "cohort-past-the-keys",
        "negative-count",
        "integer-counts",
        "empty-cohort",
    ],
)
def test_bad_cohort_files_are_refused_at_load(
    site: dict[str, Any], tmp_path: Path, change: Any, words: str
) -> None:
    version = tmp_path / "v000001"
    shutil.copytree(site["version"], version)
    change(version)
    reseal(version)
    with pytest.raises(BundleError, match=words):
        LoadedBundle.load(version)


def test_an_unknown_cohort_field_is_refused_by_name(site: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"\[ranker\] cohorts: 'income'"):
        snapshot.cohorts(site["data"], RankerConfig(cohorts=(("income",),)))


def test_an_encoder_without_its_codes_is_refused(site: dict[str, Any]) -> None:
    data, cfg = site["data"], site["cfg"].ranker
    with pytest.raises(ValueError, match="together"):
        snapshot.cohorts(data, cfg, encoder=data.user_encoder)
    with pytest.raises(ValueError, match="together"):
        snapshot.cohorts(data, cfg, user_cat=data.users.categorical)
    # both given, as a bundle gives them: the counts the data's own encoding gives
    both = snapshot.cohorts(data, cfg, encoder=data.user_encoder, user_cat=data.users.categorical)
    alone = snapshot.cohorts(data, cfg)
    assert np.array_equal(both.counts, alone.counts) and len(both.counts)


def test_a_bundle_without_cohorts_serves_them_as_0(serve_bundle: Path) -> None:
    version = sorted(serve_bundle.glob("v*"))[0]
    assert not (version / BUNDLE_FILES["cohort_ids"]).exists()
    bundle = LoadedBundle.load(version)
    assert bundle.cohorts is not None and not len(bundle.cohorts.columns)
    rec = Recommender(bundle, load_serve_config())
    req = Request(
        "someone-new", 10, "home", bundle.last_event_time + 60, True, profile={"gender": "F"}
    )
    every = np.arange(1, bundle.n_items + 1, dtype=np.int64)
    dense = rec.ranking_features(req, every, np.zeros(len(every), np.float32))
    assert not dense[:, COHORT].any()


def test_a_refresh_counts_cohorts_as_the_model_encodes_its_users(
    site: dict[str, Any], tmp_path: Path
) -> None:
    """A user with a region new since training (first in the sorted vocabulary: every other
    region's code moves up by one in the refreshed data's own encoding) joins the site. The
    refresh counts cohorts by the model's encoder, which serving reads, so it loads, and its
    counts are the first version's: the new user has no events."""
    data_dir = tmp_path / "site"
    shutil.copytree(site["cfg"].data.dataset, data_dir)
    users = pq.read_table(data_dir / "users.parquet")
    row = {**users.slice(0, 1).to_pylist()[0], "user_id": "0" * 32, "region": "aaa-new"}
    pq.write_table(
        pa.concat_tables([users, pa.Table.from_pylist([row], users.schema)]),
        data_dir / "users.parquet",
    )
    meta = json.loads((data_dir / "dataset.json").read_text())
    meta["counts"]["users"] += 1
    (data_dir / "dataset.json").write_text(json.dumps(meta))
    version = tmp_path / "bundles" / "v000001"
    shutil.copytree(site["version"], version)
    doc = json.loads((version / "manifest.json").read_text())
    doc["config"]["data"]["dataset"] = str(data_dir)
    (version / "manifest.json").write_text(json.dumps(doc))
    # the refreshed data encodes regions otherwise than the model does
    assert load_data(from_dict(doc["config"], where="manifest")).user_encoder.vocabs["region"][
        0
    ] == ("aaa-new")
    second = LoadedBundle.load(refresh(version, progress_bar=False).path)
    first = LoadedBundle.load(site["version"])
    assert second.cohorts is not None and first.cohorts is not None
    for attr in COHORT_FILES.values():
        np.testing.assert_array_equal(
            getattr(second.cohorts, attr), getattr(first.cohorts, attr), err_msg=attr
        )
