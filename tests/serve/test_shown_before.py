"""The ranker's ``shown_before`` served as it was learnt: a bundle of a synthetic site (which
logs impressions) keeps each user's recent exposures up to its cut, refresh carries them,
erasure and retention reach them, and the recommender counts the snapshot's and the online
impressions as :func:`~tailored.data.exposures.shown_counts` does over the dataset's. A
MovieLens bundle (no impressions) has none and serves."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tailored.bundle import snapshot
from tailored.bundle.build import build_bundle, refresh
from tailored.bundle.forget import BundleStore
from tailored.bundle.format import BUNDLE_FILES, BundleError, verify_bundle
from tailored.bundle.per_user import GROUPS, PerUser
from tailored.bundle.runtime import LoadedBundle
from tailored.config import load_serve_config
from tailored.data.exposures import EXPOSURE_EVENTS, EXPOSURE_GAP, shown_counts
from tailored.data.interactions import Interactions
from tailored.data.ranking_features import DENSE_FEATURES
from tailored.data.splits import TEST
from tailored.serve.recommender import Recommender, Request
from tailored.serve.state import StoredEvent
from tailored.serve.v1 import personalization_pb2 as pb
from tailored.train.runs import load_data
from tests.helpers import reseal, synthetic_bundle
from tests.serve.helpers import Running

pytestmark = pytest.mark.slow  # trains on a synthetic site and builds bundles

SHOWN = DENSE_FEATURES.index("shown_before")
EXPOSURES, TIMES = BUNDLE_FILES["user_exposures"], BUNDLE_FILES["user_exposure_times"]
OFFSETS = BUNDLE_FILES["user_exposure_offsets"]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, faiss_one_thread: None) -> dict[str, Any]:
    """A synthetic site, a run on it and two bundles: ``whole`` (every event, with a ranker)
    and ``valid`` (through the validation split, no ranker); the data as training reads it."""
    base = tmp_path_factory.mktemp("shown")
    bundles, cfg = synthetic_bundle(base, users=300, items=100)
    valid = build_bundle(
        base / "run", base / "valid", ranker=False, through="valid", progress_bar=False
    )
    return {
        "base": base,
        "whole": bundles / "v000001",
        "valid": valid.path,
        "data": load_data(cfg),
    }


def _impressions(site: dict[str, Any], pseudonym: str) -> list[tuple[int, int]]:
    """The user's impressions in the site's events file: (time s, bundle row), sorted."""
    items = pq.read_table(site["base"] / "site" / "items.parquet").column("item_id")
    events = pq.read_table(site["base"] / "site" / "events.parquet")
    mine = events.filter(
        pc.and_(pc.equal(events["user_id"], pseudonym), pc.equal(events["type"], "impression"))
    )
    rows = pc.index_in(mine["item_id"], value_set=items).to_numpy() + 1
    return sorted(zip(mine["timestamp"].to_pylist(), rows.tolist(), strict=True))


def _row_pairs(bundle: LoadedBundle, row: int) -> list[tuple[int, int]]:
    assert bundle.users is not None
    items, times = bundle.users.shown(row)
    return list(zip(times.tolist(), items.tolist(), strict=True))


def test_a_bundle_keeps_each_user_s_last_exposures_up_to_its_cut(site: dict[str, Any]) -> None:
    data: Interactions = site["data"]
    assert data.exposures is not None
    whole, valid = LoadedBundle.load(site["whole"]), LoadedBundle.load(site["valid"])
    assert whole.users is not None and valid.users is not None
    shown = whole.users.exposures
    assert shown is not None and len(shown) == data.n_users
    assert shown.items.dtype == np.int32 and shown.times.dtype == np.int64
    # ragged: each user holds what they were shown, up to EXPOSURE_EVENTS, not a full row
    lengths = np.diff(shown.offsets)
    assert lengths.max() == EXPOSURE_EVENTS and len(shown.items) < data.n_users * EXPOSURE_EVENTS
    # the whole bundle: every impression of the user in the site's own events file, for the
    # users with at most EXPOSURE_EVENTS of them
    checked = 0
    for u in range(0, data.n_users, 15):
        pseudonym = str(data.user_ids[u])
        assert whole.users.row(pseudonym) == u
        if len(file := _impressions(site, pseudonym)) <= EXPOSURE_EVENTS:
            # (a slate's impressions share their second: compared as sorted pairs)
            assert sorted(_row_pairs(whole, u)) == file, u
            checked += 1
    assert checked > 10
    # every user's last EXPOSURE_EVENTS; through valid, of those before the test period (from
    # EXPOSURE_GAP before the user's first test positive on): in time order
    lost = longer = 0
    for u in range(data.n_users):
        span = slice(data.offsets[u], data.offsets[u + 1])
        test_times = data.timestamp[span][data.split[span] == TEST]
        bound = int(test_times.min()) - EXPOSURE_GAP if len(test_times) else np.inf
        items, times, _ = data.exposures.of_user(u)
        every = list(zip(times.tolist(), items.tolist(), strict=True))
        assert _row_pairs(whole, u) == every[-EXPOSURE_EVENTS:], u
        before = [p for p in every if p[0] < bound]
        assert _row_pairs(valid, u) == before[-EXPOSURE_EVENTS:], u
        lost += len(every) - len(before)
        longer += len(every) > EXPOSURE_EVENTS
    assert lost > 100  # the cut dropped the test period's impressions
    assert longer > 0  # users whose oldest impressions the snapshot leaves out
    # the most recent L of a user with more: the snapshot of the data, at a small length
    last3 = snapshot.user_exposures(data, 3)
    offsets = last3["user_exposure_offsets"]
    assert len(offsets) == data.n_users + 1
    for u in range(0, data.n_users, 7):
        items, times, _ = data.exposures.of_user(u)
        n = min(3, len(items))
        mine = slice(offsets[u], offsets[u + 1])
        assert last3["user_exposures"][mine].tolist() == items[len(items) - n :].tolist()
        assert last3["user_exposure_times"][mine].tolist() == times[len(times) - n :].tolist()


def test_a_refresh_carries_the_exposures(site: dict[str, Any], tmp_path: Path) -> None:
    source = tmp_path / "valid"
    shutil.copytree(site["valid"].parent, source)
    new = refresh(source, progress_bar=False).path
    assert new.name == "v000002" and verify_bundle(new).data["through"] == "valid"
    for name in (OFFSETS, EXPOSURES, TIMES):
        np.testing.assert_array_equal(np.load(new / name), np.load(site["valid"] / name))


def test_served_shown_before_counts_what_training_counts(site: dict[str, Any]) -> None:
    data: Interactions = site["data"]
    assert data.exposures is not None
    bundle = LoadedBundle.load(site["whole"])
    rec = Recommender(bundle, load_serve_config(overrides={"clock": "bundle"}))
    every = np.arange(1, bundle.n_items + 1, dtype=np.int64)
    scores = np.zeros(len(every), np.float32)
    checked = 0
    for u in range(0, data.n_users, 10):
        items, times, _ = data.exposures.of_user(u)
        if not len(items):
            continue
        # after the data, and in its middle: a moment inside the gap after one of their
        # impressions (that one does not count yet, the earlier ones do)
        for now in (bundle.last_event_time + 3600, int(times[len(times) // 2]) + 600):
            req = Request(str(data.user_ids[u]), 10, "home", float(now), personalized=True)
            served = rec.ranking_features(req, every, scores)[:, SHOWN]
            offline = np.log1p(shown_counts(every, items, times, float(now)))
            np.testing.assert_allclose(served, offline, rtol=1e-6, err_msg=str(u))
            checked += int((offline > 0).any())
    assert checked > 20  # most users had counts to compare


def test_online_impressions_count_once_and_only_from_the_gap_before(
    site: dict[str, Any],
) -> None:
    data: Interactions = site["data"]
    assert data.exposures is not None
    bundle = LoadedBundle.load(site["whole"])
    rec = Recommender(bundle, load_serve_config(overrides={"clock": "bundle"}))
    u = next(u for u in range(data.n_users) if len(set(data.exposures.of_user(u)[0])) >= 3)
    items, times, _ = data.exposures.of_user(u)
    now = bundle.last_event_time + 86_400
    before, inside = (now - EXPOSURE_GAP - 60) * 1000, (now - 60) * 1000
    item_ids = [str(i) for i in bundle.item_ids]
    never = next(r for r in range(1, bundle.n_items + 1) if r not in set(items.tolist()))
    once = int(items[-1])
    at = next(j for j, i in enumerate(items.tolist()) if i != once)
    first, repeat = int(items[at]), int(times[at])  # a snapshot impression to repeat
    online = (
        StoredEvent(item_ids[once - 1], "impression", before),  # one more, before the gap
        StoredEvent(item_ids[never - 1], "impression", before),  # a first
        StoredEvent(item_ids[never - 1], "impression", inside),  # inside the gap: not yet
        StoredEvent(item_ids[first - 1], "impression", repeat * 1000 + 999),
        StoredEvent(item_ids[never - 1], "click", before),  # not an impression
    )
    cands = np.array([once, never, first], np.int64)
    offline = shown_counts(cands, items, times, float(now))

    def served(events: tuple[StoredEvent, ...]) -> np.ndarray:
        req = Request(str(data.user_ids[u]), 10, "home", float(now), True, online=events)
        dense = rec.ranking_features(req, cands, np.zeros(len(cands), np.float32))
        return np.expm1(dense[:, SHOWN]).round().astype(np.int64)

    np.testing.assert_array_equal(served(()), offline)
    # a repeat of a snapshot impression (same item, same second) counts once
    np.testing.assert_array_equal(served(online), offline + np.array([1, 1, 0]))
    # a user the bundle does not know: the online impressions alone
    req = Request("someone-new", 10, "home", float(now), True, online=online)
    dense = rec.ranking_features(req, cands, np.zeros(len(cands), np.float32))
    np.testing.assert_allclose(dense[:, SHOWN], np.log1p([1, 1, 1]), rtol=1e-6)


def test_a_known_user_with_impressions_is_served_over_grpc(
    site: dict[str, Any], tmp_path: Path
) -> None:
    running = Running(site["whole"].parent, tmp_path / "s.db")
    try:
        raw = "u0000003"  # the synthetic site's raw ids; the server pseudonymizes them
        c = running.client
        c.set_consent(raw, ["personalization"])
        first = [i.item_id for i in c.recommend(raw, k=8).items]
        c.track([pb.Event(user_id=raw, item_id=i, type=pb.IMPRESSION) for i in first])
        again = c.recommend(raw, k=8)
        assert len(again.items) == 8 and again.strategy == "personalized"
    finally:
        running.stop()


def _group(version: Path, group: str) -> PerUser:
    events = PerUser.load(version, group)
    assert events is not None
    return events


def test_erasure_and_retention_reach_the_exposures(site: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    shutil.copytree(site["whole"].parent, root)
    version = root / "v000001"
    shown = _group(version, "exposures")
    data: Interactions = site["data"]
    u = int(np.flatnonzero(np.diff(shown.offsets) >= 3)[0])
    pseudonym = str(data.user_ids[u])
    store = BundleStore(root)
    exported = store.export(pseudonym)["versions"][0]["recent_exposures"]
    ids = pq.read_table(version / BUNDLE_FILES["items"]).column("item_id").to_pylist()
    items, times = shown.of(u)
    assert [(e["time"], e["item_id"]) for e in exported] == [
        (t, ids[i - 1]) for t, i in zip(times.tolist(), items.tolist(), strict=True)
    ]
    # erasure: the user's exposures go with their other rows
    assert store.forget(pseudonym) == {"user_rows": 1}
    after = _group(version, "exposures")
    assert len(after) == len(shown) - 1
    for r in (0, u - 1, u, len(after) - 1):  # rows before u stay, later ones move up
        was = r if r < u else r + 1
        for a, b in zip(after.of(r), shown.of(was), strict=True):
            np.testing.assert_array_equal(a, b)
    loaded = LoadedBundle.load(version)
    assert loaded.users is not None and loaded.users.row(pseudonym) is None
    assert loaded.users.exposures is not None and len(loaded.users.exposures) == len(shown) - 1
    # retention: the entries from before a bound, the kept ones in their order
    before = after
    bound = int(np.median(before.times))
    removed = store.purge(bound * 1000)
    assert removed["exposure_entries"] == int((before.times < bound).sum()) > 0
    after = _group(version, "exposures")
    assert after.times.min() >= bound and len(after) == len(before)
    for r in range(len(before)):
        items, times = before.of(r)
        kept = times >= bound
        np.testing.assert_array_equal(after.of(r)[0], items[kept])
        np.testing.assert_array_equal(after.of(r)[1], times[kept])
    LoadedBundle.load(version)  # resealed, and still consistent


def _dense(events: PerUser) -> tuple[np.ndarray, np.ndarray]:
    """The layout of bundles before the ragged one: [U, L] left-padded with 0."""
    lengths = np.diff(events.offsets)
    width = int(lengths.max())
    items = np.zeros((len(events), width), np.int32)
    times = np.zeros((len(events), width), np.int64)
    for u in range(len(events)):
        got, at = events.of(u)
        if len(got):
            items[u, width - len(got) :], times[u, width - len(got) :] = got, at
    return items, times


def test_a_bundle_of_the_dense_layout_loads_and_is_rewritten_ragged(
    site: dict[str, Any], tmp_path: Path
) -> None:
    root = tmp_path / "bundles"
    shutil.copytree(site["whole"].parent, root)
    version = root / "v000001"
    before = {g: _group(version, g) for g in GROUPS}
    for group, (offsets, items, times) in GROUPS.items():
        dense = _dense(before[group])
        np.save(version / BUNDLE_FILES[items], dense[0])
        np.save(version / BUNDLE_FILES[times], dense[1])
        (version / BUNDLE_FILES[offsets]).unlink()
    reseal(version)
    loaded = LoadedBundle.load(version)
    assert loaded.users is not None and loaded.users.exposures is not None
    for group, got in (("history", loaded.users.history), ("exposures", loaded.users.exposures)):
        for a, b in zip(
            (got.offsets, got.items, got.times),
            (before[group].offsets, before[group].items, before[group].times),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
    # an erasure writes the version in the ragged layout
    data: Interactions = site["data"]
    assert BundleStore(root).forget(str(data.user_ids[0])) == {"user_rows": 1}
    for group, (offsets, _, _) in GROUPS.items():
        assert (version / BUNDLE_FILES[offsets]).is_file()
        after = _group(version, group)
        np.testing.assert_array_equal(after.items, before[group].items[before[group].offsets[1] :])
    verify_bundle(version)
    LoadedBundle.load(version)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda v: np.save(v / EXPOSURES, np.load(v / EXPOSURES) + 10_000), "outside"),
        (lambda v: np.save(v / TIMES, np.load(v / TIMES)[:-1]), "not one group"),
        (lambda v: np.save(v / TIMES, np.load(v / TIMES).astype(np.float64)), "int"),
        (lambda v: np.save(v / OFFSETS, np.load(v / OFFSETS)[:-1]), "not one group"),
        (lambda v: np.save(v / OFFSETS, np.load(v / OFFSETS)[::-1].copy()), "not one group"),
        (lambda v: (v / TIMES).unlink(), "beside its pair"),
    ],
    ids=[
        "item-rows-outside",
        "times-short",
        "float-times",
        "offsets-short",
        "offsets-reversed",
        "one-of-two",
    ],
)
def test_bad_exposure_files_are_refused_at_load(
    site: dict[str, Any], tmp_path: Path, change: Any, words: str
) -> None:
    version = tmp_path / "v000001"
    shutil.copytree(site["whole"], version)
    change(version)
    reseal(version)
    with pytest.raises(BundleError, match=words):
        LoadedBundle.load(version)


def test_a_bundle_of_data_without_impressions_has_none_and_serves(
    serve_bundle: Path, tmp_path: Path
) -> None:
    version = sorted(serve_bundle.glob("v*"))[0]
    assert not (version / EXPOSURES).exists() and not (version / TIMES).exists()
    bundle = LoadedBundle.load(version)
    assert bundle.users is not None and bundle.users.exposures is None
    # online impressions alone give the count
    rec = Recommender(bundle, load_serve_config(overrides={"clock": "bundle"}))
    now = bundle.last_event_time + 86_400
    item = str(bundle.item_ids[0])
    online = (StoredEvent(item, "impression", (now - EXPOSURE_GAP - 1) * 1000),)
    user = str(bundle.users.ids[0])
    req = Request(user, 10, "home", float(now), True, online=online)
    dense = rec.ranking_features(req, np.array([1, 2], np.int64), np.zeros(2, np.float32))
    np.testing.assert_allclose(dense[:, SHOWN], [np.log1p(1), 0.0], rtol=1e-6)
    assert len(rec.recommend(req).item_ids) == 10
    running = Running(serve_bundle, tmp_path / "s.db")
    try:
        running.client.set_consent("1", ["personalization"])
        running.client.track([pb.Event(user_id="1", item_id=item, type=pb.IMPRESSION)])
        assert len(running.client.recommend("1", k=10).items) == 10
    finally:
        running.stop()
