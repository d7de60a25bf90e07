"""The synthetic website's funnel and catalog: dwell on clicks, carts before purchases, page
positions on every event, and items that launch or end during the span."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tailored.config import EventRole, load_config
from tailored.data.synth import SynthError, generate_synthetic
from tailored.data.synth_truth import NO_END, NO_START, SynthTruth, load_truth, true_topk
from tests.helpers import ROOT, TEST_KEY

N_USERS, N_ITEMS = 2000, 1000


@dataclass
class _Site:
    dir: Path
    user: np.ndarray  # events' user rows (users.parquet order)
    item: np.ndarray  # events' item rows (items.parquet order)
    ts: np.ndarray
    kind: np.ndarray  # event type names
    value: np.ndarray  # NaN where null
    position: np.ndarray  # int, the slot
    session: np.ndarray  # int64, the visit's key
    opens: np.ndarray  # items' available_from, NO_START where null
    closes: np.ndarray  # items' available_until, NO_END where null
    price: np.ndarray
    truth: SynthTruth

    def of(self, kind: str) -> np.ndarray:
        return np.flatnonzero(self.kind == kind)

    def affinity(self, rows: np.ndarray) -> np.ndarray:
        return self.truth.affinity(self.user[rows], self.item[rows], self.ts[rows])


def _rows(col: pa.ChunkedArray, ids: pa.ChunkedArray) -> np.ndarray:
    idx = pc.index_in(col, value_set=ids.combine_chunks())
    return np.asarray(idx.to_numpy(zero_copy_only=False), np.int64)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> _Site:
    d = tmp_path_factory.mktemp("funnel") / "site"
    generate_synthetic(
        d, n_users=N_USERS, n_items=N_ITEMS, n_categories=20, seed=11, key=TEST_KEY, chunk_users=700
    )
    ev = pq.read_table(d / "events.parquet")
    users = pq.read_table(d / "users.parquet").column("user_id")
    items = pq.read_table(d / "items.parquet")
    return _Site(
        d,
        _rows(ev.column("user_id"), users),
        _rows(ev.column("item_id"), items.column("item_id")),
        ev.column("timestamp").to_numpy(),
        np.asarray(ev.column("type").to_pylist()),
        ev.column("value").to_numpy(zero_copy_only=False).astype(np.float64),
        ev.column("position").to_numpy(),
        ev.column("session").to_numpy(),
        pc.fill_null(items.column("available_from"), NO_START).to_numpy(),
        pc.fill_null(items.column("available_until"), NO_END).to_numpy(),
        items.column("price").to_numpy(),
        load_truth(d),
    )


def _latest_before(site: _Site, rows: np.ndarray, among: np.ndarray) -> np.ndarray:
    """For each event of ``rows``, the event of ``among`` of the same user and item at or
    before it, the latest (-1 where there is none)."""
    t0 = int(site.ts.min())

    def key(r: np.ndarray) -> np.ndarray:
        return ((site.user[r] * N_ITEMS + site.item[r]) << 30) + (site.ts[r] - t0)

    order = np.argsort(key(among), kind="stable")
    at = np.searchsorted(key(among)[order], key(rows), side="right") - 1
    found = among[order[np.maximum(at, 0)]]
    same = (at >= 0) & (site.user[found] == site.user[rows]) & (site.item[found] == site.item[rows])
    return np.where(same, found, -1)


def test_no_event_falls_outside_its_items_window(site: _Site) -> None:
    t0, t_end = site.truth.t0, site.truth.t_end
    new, ended = site.opens != NO_START, site.closes != NO_END
    assert new.sum() == 0.2 * N_ITEMS and ended.sum() == 0.05 * N_ITEMS and not (new & ended).any()
    assert (site.opens[new] > t0).all() and (site.opens[new] < t_end).all()
    assert (site.closes[ended] > t0).all() and (site.closes[ended] < t_end).all()
    # launches lean late: more in the second half of the span than in the first
    assert np.mean(site.opens[new] > t0 + site.truth.span / 2) > 0.65
    # no event of any kind before its item's launch, or at or after its end
    assert (site.ts >= site.opens[site.item]).all()
    assert (site.ts < site.closes[site.item]).all()
    # yet the new items are there once launched: most are shown, and for the time they are
    # there (a third of the span on average) about as often as the others (Zipf popularity
    # makes the figure noisy at this size)
    imp = site.of("impression")
    assert np.isin(np.flatnonzero(new), site.item[imp]).mean() > 0.8
    there = (t_end - site.opens[new]) / site.truth.span
    shown = np.bincount(site.item[imp], minlength=N_ITEMS)
    along = ~new & ~ended
    assert shown[new].sum() / there.sum() > 0.5 * shown[along].sum() / along.sum()
    # the truth keeps the same windows
    assert np.array_equal(site.truth.item_available_from, site.opens)
    assert np.array_equal(site.truth.item_available_until, site.closes)


def test_clicks_carry_their_dwell_and_bounces_are_short_and_of_low_affinity(site: _Site) -> None:
    clk = site.of("click")
    dwell = site.value[clk]
    assert not np.isnan(dwell).any() and (dwell >= 1).all() and (dwell <= 3600).all()
    short = dwell < 5
    assert 0.1 < short.mean() < 0.35, short.mean()
    assert 30 < np.median(dwell[~short]) < 120
    aff = site.affinity(clk)
    low = aff < np.median(aff)
    assert short[low].mean() > 1.5 * short[~low].mean()
    # among the clicks that are no bounce, dwell still grows with affinity
    assert np.corrcoef(np.log(dwell[dwell >= 10]), aff[dwell >= 10])[0, 1] > 0.3


def test_every_purchase_follows_a_cart_which_follows_a_click(site: _Site) -> None:
    clk, cart, buy = site.of("click"), site.of("add_to_cart"), site.of("purchase")
    assert 0.1 < len(cart) / len(clk) < 0.3 and 0.25 < len(buy) / len(cart) < 0.6
    assert 0.03 < len(buy) / len(clk) < 0.12
    before = _latest_before(site, buy, cart)
    assert (before >= 0).all(), "a purchase without a cart of the same user and item"
    wait = site.ts[buy] - site.ts[before]
    assert (wait >= 1).all() and np.median(wait) < 600 and wait.max() < 3600
    clicked = _latest_before(site, cart, clk)
    assert (clicked >= 0).all(), "a cart without a click of the same user and item"
    # the cart comes during the click's dwell; carts have no value, purchases the price
    assert (site.ts[cart] - site.ts[clicked] <= 1 + site.value[clicked]).all()
    assert np.isnan(site.value[cart]).all()
    assert np.allclose(site.value[buy], site.price[site.item[buy]])
    # each step of the funnel selects items the user likes more
    assert site.affinity(buy).mean() > site.affinity(cart).mean() > site.affinity(clk).mean()


def test_events_carry_their_impressions_position_and_click_through_falls_with_it(
    site: _Site,
) -> None:
    imp, clk = site.of("impression"), site.of("click")
    assert set(site.position.tolist()) == set(range(10))
    pos = site.position.astype(np.int64)
    shown = np.bincount(pos[imp], minlength=10)
    assert (shown == shown[0]).all()  # every slate has all ten slots
    assert np.array_equal(pos[imp], site.value[imp].astype(np.int64))
    ctr = np.bincount(pos[clk], minlength=10) / shown
    assert np.all(np.diff(ctr[:6]) < 0) and ctr[0] > 2.5 * ctr[9], np.round(ctr, 3)
    # a cart and a purchase keep the position of the impression their click came from
    for kind in ("add_to_cart", "purchase"):
        rows = site.of(kind)
        src = _latest_before(site, rows, clk)
        assert np.mean(pos[rows] == pos[src]) > 0.99


def test_every_event_carries_its_visit_s_session(site: _Site) -> None:
    imp, clk = site.of("impression"), site.of("click")
    assert (site.session >= 0).all()
    keys, per_key = np.unique(site.session, return_inverse=True)
    # a session is one user's (the keys of the three chunks do not collide either)
    users = np.unique(np.stack([per_key, site.user], 1), axis=0)
    assert len(users) == len(keys)
    # one slate: ten impressions, one per slot, at one time
    assert (np.bincount(per_key[imp], minlength=len(keys)) == 10).all()
    slots = np.unique(np.stack([per_key[imp], site.position[imp]], 1), axis=0)
    assert len(slots) == len(imp)
    assert (np.unique(np.stack([per_key[imp], site.ts[imp]], 1), axis=0).shape[0]) == len(keys)
    # what the user did with it is in it: a click is of its impression's session, and so is
    # the cart and purchase that followed
    shown = _latest_before(site, clk, imp)
    assert (shown >= 0).all() and (site.session[clk] == site.session[shown]).all()
    for kind in ("add_to_cart", "purchase"):
        rows = site.of(kind)
        assert np.mean(site.session[rows] == site.session[_latest_before(site, rows, clk)]) > 0.99
    # users come back: most have several sessions
    per_user = np.bincount(users[:, 1], minlength=N_USERS)  # sessions of each user
    assert per_user.min() >= 1 and np.mean(per_user > 1) > 0.5


def test_the_planted_top_k_holds_the_items_available_then(site: _Site) -> None:
    truth = site.truth
    users = np.arange(0, N_USERS, 4)
    new, ended = site.opens != NO_START, site.closes != NO_END
    at_end = true_topk(truth, users, 10)
    assert not ended[at_end].any()
    assert new[at_end].any()  # items launched late are among what users like most at the end
    at_start = true_topk(truth, users, 10, at_time=truth.t0)
    assert not new[at_start].any()
    unfiltered = true_topk(truth, users, 10, available_only=False)
    assert ended[unfiltered].any()
    assert np.array_equal(truth.available(), ~ended)


def test_a_catalog_without_launches_or_ends(tmp_path: Path) -> None:
    generate_synthetic(
        tmp_path / "s",
        n_users=200,
        n_items=100,
        n_categories=5,
        new_items=0.0,
        ended_items=0.0,
        key=TEST_KEY,
    )
    items = pq.read_table(tmp_path / "s" / "items.parquet")
    assert items.column("available_from").null_count == 100
    assert items.column("available_until").null_count == 100
    assert load_truth(tmp_path / "s").available(0).all()
    with pytest.raises(SynthError, match="new_items"):
        generate_synthetic(tmp_path / "x", n_users=10, n_items=10, new_items=0.96, key=TEST_KEY)


def test_the_synthetic_configuration_gives_each_event_its_role(site: _Site) -> None:
    cfg = load_config(ROOT / "configs" / "synthetic.toml", overrides={"data.dataset": "x"})
    roles = cfg.data.event_roles()
    assert roles["impression"] == EventRole("exposure")
    assert roles["click"].role == "positive" and roles["click"].min_value == 5.0
    assert roles["add_to_cart"] == EventRole("positive", 2.0)
    assert roles["purchase"] == EventRole("positive", 3.0)
    # a bounce is no positive, most clicks are
    kept = [roles["click"].counts(float(v)) for v in site.value[site.of("click")]]
    assert 0.65 < np.mean(kept) < 0.9
