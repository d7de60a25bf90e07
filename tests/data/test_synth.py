"""The synthetic website: determinism, schema, and that the planted truth shows in the events."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import tailored.data.synth as synth
from tailored.cli import main
from tailored.data.pseudonym import Pseudonymizer
from tailored.data.schema import TableKind, read_dataset_meta, validate_table
from tailored.data.synth import SynthError, generate_synthetic
from tailored.data.synth_truth import AGE_BANDS, GENDERS, REGIONS, SynthTruth, load_truth, true_topk
from tests.helpers import TEST_KEY

N_USERS, N_ITEMS = 2000, 1000


@dataclass
class _Events:
    """A dataset's events as row indices (users.parquet and items.parquet order)."""

    user: np.ndarray
    item: np.ndarray
    ts: np.ndarray
    kind: np.ndarray
    value: np.ndarray
    position: np.ndarray  # the slot of the impression each event comes from

    def of(self, kind: str) -> np.ndarray:
        return np.flatnonzero(self.kind == kind)


def _events(d: Path) -> _Events:
    ev = pq.read_table(d / "events.parquet")
    users = pq.read_table(d / "users.parquet").column("user_id")
    items = pq.read_table(d / "items.parquet").column("item_id")

    def rows(col: str, ids: pa.ChunkedArray) -> np.ndarray:
        idx = pc.index_in(ev.column(col), value_set=ids.combine_chunks())
        return np.asarray(idx.to_numpy(zero_copy_only=False), np.int64)

    value = ev.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
    return _Events(
        rows("user_id", users),
        rows("item_id", items),
        ev.column("timestamp").to_numpy(),
        np.asarray(ev.column("type").to_pylist()),
        value,
        np.asarray(ev.column("position").to_pylist(), np.int64),
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, _Events, SynthTruth]:
    d = tmp_path_factory.mktemp("synth") / "site"
    generate_synthetic(
        d, n_users=N_USERS, n_items=N_ITEMS, n_categories=20, seed=7, key=TEST_KEY, chunk_users=700
    )
    return d, _events(d), load_truth(d)


def _small(d: Path, seed: int) -> None:
    generate_synthetic(
        d, n_users=300, n_items=200, n_categories=10, seed=seed, key=TEST_KEY, chunk_users=100
    )


def test_same_seed_same_files_other_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        _small(tmp_path / name, seed)
    for table in ("users", "items", "events"):
        a, b, c = (pq.read_table(tmp_path / n / f"{table}.parquet") for n in "abc")
        assert a.equals(b)
        assert not a.equals(c)
    for f in (tmp_path / "a" / "truth").glob("*.npy"):
        assert np.array_equal(np.load(f), np.load(tmp_path / "b" / "truth" / f.name))


def test_tables_follow_the_schema(site: tuple[Path, _Events, SynthTruth]) -> None:
    d, _, _ = site
    meta = read_dataset_meta(d)
    kinds: tuple[TableKind, ...] = ("users", "items", "events")
    tables = {k: pq.read_table(d / f"{k}.parquet") for k in kinds}
    known = {
        "user_id": tables["users"].column("user_id").combine_chunks(),
        "item_id": tables["items"].column("item_id").combine_chunks(),
    }
    for kind, t in tables.items():
        checked = validate_table(
            t,
            kind,
            meta.schema,
            source=kind,
            known_ids=known,
        )
        assert checked.schema == t.schema
        assert meta.counts[kind] == t.num_rows
    items = tables["items"].to_pylist()
    assert items[3]["item_id"] == "i000003" and items[3]["title"] == "Item 3"
    assert all(1 <= len(i["tags"]) <= 3 and len(set(i["tags"])) == len(i["tags"]) for i in items)
    assert meta.schema.item_availability and meta.schema.context_fields == ("surface", "device")
    assert meta.schema.event_position
    ev = tables["events"]
    assert set(ev.column("type").to_pylist()) == {"impression", "click", "add_to_cart", "purchase"}
    null_value = pc.is_null(ev.column("value"))  # a cart has no value; the others have one
    assert pc.all(pc.equal(pc.equal(ev.column("type"), "add_to_cart"), null_value)).as_py()
    assert ev.column("position").null_count == 0
    users = tables["users"]
    assert set(users.column("gender").drop_null().to_pylist()) <= set(GENDERS)
    assert set(users.column("region").to_pylist()) <= set(REGIONS)
    assert 0 < users.column("age").null_count < 0.2 * N_USERS  # some users did not say


def test_counts_are_as_requested(site: tuple[Path, _Events, SynthTruth]) -> None:
    _, ev, truth = site
    per_user = np.bincount(ev.user, minlength=N_USERS)
    assert 30 * 0.85 < per_user.mean() < 30 * 1.15
    assert per_user.min() > 0  # every user came at least once
    assert per_user.max() > 5 * per_user.mean()  # a heavy tail of very active users
    assert truth.user_taste_start.shape == (N_USERS, 16)
    assert truth.item_factors.shape == (N_ITEMS, 16)
    assert truth.user_taste_start.dtype == np.float32


def test_popularity_is_power_law(site: tuple[Path, _Events, SynthTruth]) -> None:
    _, ev, _ = site
    clicks = np.sort(np.bincount(ev.item[ev.of("click")], minlength=N_ITEMS))[::-1]
    top = clicks[: N_ITEMS // 100].sum() / clicks.sum()
    assert top > 0.15, f"top 1% of items get {top:.1%} of clicks"


def test_demographics_predict_tastes(site: tuple[Path, _Events, SynthTruth]) -> None:
    d, _, truth = site
    users = pq.read_table(d / "users.parquet").to_pylist()
    known = [i for i, u in enumerate(users) if u["gender"] is not None]
    band = [
        next(b for b, (lo, hi) in enumerate(AGE_BANDS) if lo <= users[i]["age"] <= hi)
        for i in known
    ]
    seg = np.array(
        [
            (GENDERS.index(users[i]["gender"]) * len(AGE_BANDS) + b) * len(REGIONS)
            + REGIONS.index(users[i]["region"])
            for i, b in zip(known, band, strict=True)
        ]
    )
    taste = np.asarray(truth.user_taste_start)[known]

    def explained(groups: np.ndarray) -> float:
        means = np.zeros((groups.max() + 1, taste.shape[1]))
        np.add.at(means, groups, taste)
        means /= np.maximum(np.bincount(groups), 1)[:, None]
        return 1 - ((taste - means[groups]) ** 2).sum() / ((taste - taste.mean(0)) ** 2).sum()

    # the segments read from the users table explain much of the taste; shuffled, only noise
    shuffled = np.random.default_rng(0).permutation(seg)
    assert explained(seg) > 0.3
    assert explained(seg) > 2.5 * explained(shuffled)
    assert np.array_equal(np.asarray(truth.user_segment)[known], seg)


def test_clicks_carts_and_purchases_follow_tastes(site: tuple[Path, _Events, SynthTruth]) -> None:
    _, ev, truth = site

    def affinity(rows: np.ndarray) -> np.ndarray:
        return truth.affinity(ev.user[rows], ev.item[rows], ev.ts[rows])

    imp, clk, cart, buy = (ev.of(k) for k in ("impression", "click", "add_to_cart", "purchase"))
    assert affinity(clk).mean() > affinity(imp).mean() + 1.0
    assert affinity(buy).mean() > affinity(cart).mean() > affinity(clk).mean()
    dwell = ev.value[clk]  # a click's value is its dwell
    assert np.corrcoef(np.log(dwell), affinity(clk))[0, 1] > 0.3
    assert 0.03 < len(clk) / len(imp) < 0.3 and len(buy) < len(cart) < 0.3 * len(clk)


def test_position_bias(site: tuple[Path, _Events, SynthTruth]) -> None:
    _, ev, _ = site
    imp, clk = ev.of("impression"), ev.of("click")
    # match each click to the latest impression of the same (user, item) at or before it
    t0 = int(ev.ts.min())

    def key(rows: np.ndarray) -> np.ndarray:
        return ((ev.user[rows] * N_ITEMS + ev.item[rows]) << 28) + (ev.ts[rows] - t0)

    order = np.argsort(key(imp))
    at = order[np.searchsorted(key(imp)[order], key(clk), side="right") - 1]
    assert np.array_equal(ev.item[imp[at]], ev.item[clk])
    # an impression's value is its slot too; a click carries its impression's position
    assert np.array_equal(ev.value[imp].astype(np.int64), ev.position[imp])
    assert np.mean(ev.position[imp[at]] == ev.position[clk]) > 0.99
    clicked = np.bincount(ev.position[clk], minlength=10)
    ctr = clicked / np.bincount(ev.position[imp], minlength=10)
    assert ctr[0] > 2 * ctr[5], f"CTR by position {np.round(ctr, 3)}"
    assert np.all(np.diff(ctr[:6]) < 0)


def test_drift_makes_late_clicks_agree_with_late_tastes(
    site: tuple[Path, _Events, SynthTruth],
) -> None:
    _, ev, truth = site
    clk = ev.of("click")
    frac = (ev.ts[clk] - truth.t0) / truth.span
    # u_end · v - u_start · v = delta · v: what the drift adds to a clicked item's score
    gain = np.einsum(
        "nd,nd->n",
        np.asarray(truth.user_taste_delta)[ev.user[clk]],
        np.asarray(truth.item_factors)[ev.item[clk]],
    )
    early, late = gain[frac < 0.25].mean(), gain[frac > 0.75].mean()
    assert late > 0.1 and late > early + 0.2, (early, late)
    end = truth.affinity(ev.user[clk], ev.item[clk])
    start = truth.affinity(ev.user[clk], ev.item[clk], truth.t0)
    assert (end > start)[frac > 0.75].mean() > 0.6


def test_user_ids_are_pseudonyms(site: tuple[Path, _Events, SynthTruth]) -> None:
    d, _, _ = site
    users = pq.read_table(d / "users.parquet").column("user_id").to_pylist()
    events = set(pq.read_table(d / "events.parquet").column("user_id").to_pylist())
    assert all(re.fullmatch(r"[0-9a-f]{32}", u) for u in users)
    assert users[0] == Pseudonymizer(TEST_KEY)("u0000000")
    assert users[-1] == Pseudonymizer(TEST_KEY)(f"u{N_USERS - 1:07d}")
    assert events <= set(users)
    assert not any(u.startswith("u0") for u in events)


def test_true_topk_is_the_best_by_true_affinity(site: tuple[Path, _Events, SynthTruth]) -> None:
    _, _, truth = site
    rows = np.array([0, 5, 1999])
    top = true_topk(truth, rows, 10, block=2)
    full = truth.taste(rows) @ np.asarray(truth.item_factors).T + truth.item_bias
    full[:, ~truth.available()] = -np.inf  # ended items are not in the catalog at the end
    assert np.array_equal(top, np.argsort(-full, axis=1, kind="stable")[:, :10])
    seen = [top[0, :3], np.array([], np.int64), top[2, :1]]
    again = true_topk(truth, rows, 10, exclude=seen)
    assert np.array_equal(again[0, :7], top[0, 3:]) and np.array_equal(again[1], top[1])
    assert not np.isin(top[0, :3], again[0]).any()
    early = true_topk(truth, rows, 10, at_time=truth.t0)
    assert not np.array_equal(early, top)


def test_truth_files_are_plain_npy_with_their_definition(
    site: tuple[Path, _Events, SynthTruth],
) -> None:
    d, _, _ = site
    info = json.loads((d / "truth" / "truth.json").read_text())
    assert info["seed"] == 7 and info["dim"] == 16 and info["n_users"] == N_USERS
    assert "u(t)" in info["score"] and info["span"] == 90 * 86_400
    for f in (d / "truth").glob("*.npy"):
        np.load(f, allow_pickle=False)


def test_a_failure_mid_generation_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = synth.events_table
    calls = []

    def fail_after_first(*args: object, **kw: object) -> pa.Table:
        calls.append(1)
        if len(calls) > 1:
            raise OSError("disk full")
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(synth, "events_table", fail_after_first)
    with pytest.raises(OSError, match="disk full"):
        _small(tmp_path / "site", 0)
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SynthError, match="n_users"):
        generate_synthetic(tmp_path / "x", n_users=0, n_items=10, key=TEST_KEY)
    with pytest.raises(SynthError, match="events_per_user"):
        generate_synthetic(tmp_path / "x", n_users=10, n_items=10, events_per_user=0, key=TEST_KEY)
    assert not (tmp_path / "x").exists()


def test_cli_writes_the_dataset(
    tailored_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TAILORED_PSEUDONYM_KEY", TEST_KEY.hex())
    assert (
        main(
            [
                "data",
                "synth",
                "--users",
                "300",
                "--items",
                "100",
                "--categories",
                "5",
                "--events-per-user",
                "20",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    d = tailored_home / "datasets" / "synthetic"
    meta = read_dataset_meta(d)
    assert meta.counts["users"] == 300 and meta.counts["items"] == 100
    assert meta.key_fingerprint == Pseudonymizer(TEST_KEY).fingerprint
    assert (d / "truth" / "user_taste_start.npy").is_file()
    assert "300 users" in capsys.readouterr().out
    assert main(["data", "synth", "--users", "0", "--out", str(d.parent / "bad")]) == 2


@pytest.fixture
def tailored_home(_isolated_home: Path) -> Path:
    return _isolated_home
