"""Session (visit) ids: imported through the mapping as keyed hashes, read with the positives,
and what the ranker's co-occurrence table can count within."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tailored.bundle import snapshot
from tailored.config import ConfigError, load_config
from tailored.data.forget import DatasetStore
from tailored.data.importer import import_dataset
from tailored.data.interactions import Interactions, PositiveRule, load_interactions
from tailored.data.mapping import MappingError, load_mapping
from tailored.data.pseudonym import KeyMap, Pseudonymizer
from tailored.data.ranking_features import DENSE_FEATURES, ItemNeighbors
from tailored.data.schema import SchemaError, read_dataset_meta
from tailored.data.splits import TRAIN, VALID
from tailored.data.store import read_table
from tailored.train.ranker.data import build_requests, exact_retriever
from tailored.train.runs import load_data

KEY = bytes(range(32))
pseudo = Pseudonymizer(KEY)
T0 = 1_700_000_000

MAPPING = """\
name = "shop"
[events]
file = "events.csv"
user = "uid"
item = "sku"
timestamp = "ts"
type = "kind"
value = "value"
session = "visit"
"""

# user, item, seconds after T0, type, value, visit id (the site's: it names the user)
ROWS: list[tuple[str, str, int, str, str, str]] = [
    ("alice", "i1", 0, "click", "30", "alice-visit-1"),
    ("alice", "i1", 60, "purchase", "9.5", "alice-visit-1"),  # merged into its click
    ("alice", "i2", 90, "click", "30", "alice-visit-1"),
    ("alice", "i3", 90_000, "click", "30", "alice-visit-2"),
    ("alice", "i4", 90_100, "click", "30", ""),  # no session logged
    ("bob", "i1", 0, "click", "30", "bob-visit-1"),
    ("bob", "i2", 50, "click", "30", "bob-visit-1"),
    ("bob", "i3", 200_000, "click", "30", "alice-visit-2"),  # another user's id: not hers
]
EVENTS = {"click": {"role": "positive"}, "purchase": {"role": "positive", "weight": 3}}


Row = tuple[str, str, int, str, str, str]


def _write(root: Path, mapping: str = MAPPING, rows: list[Row] = ROWS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = ["uid,sku,ts,kind,value,visit"]
    lines += [f"{u},{i},{T0 + t},{k},{v},{s}" for u, i, t, k, v, s in rows]
    (root / "events.csv").write_text("\n".join(lines) + "\n")
    (root / "mapping.toml").write_text(mapping)
    return root / "mapping.toml"


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TAILORED_HOME", str(tmp_path / "home"))
    return import_dataset(_write(tmp_path / "in"), tmp_path / "ds", key=KEY)


def _load(shop: Path) -> Interactions:
    cfg = load_config(values={"data": {"dataset": str(shop), "events": EVENTS}})
    return load_interactions(shop, PositiveRule.from_config(cfg.data))


def test_session_ids_are_stored_as_keyed_hashes_never_as_given(shop: Path) -> None:
    assert read_dataset_meta(shop).schema.event_session
    stored = read_table(shop, "events").column("session").to_pylist()
    visits = [s for *_, s in ROWS]
    expected = [int(pseudo.session_keys([s])[0]) if s else None for s in visits]
    assert stored == expected
    assert all(k is None or k >= 0 for k in stored)
    # equal ids, equal keys (bob's "alice-visit-2" is the same string, so the same key:
    # sessions are always read together with their user); distinct ids, distinct keys
    assert stored[0] == stored[1] == stored[2] != stored[3]
    # a session key is not the same string's user pseudonym (the same HMAC in another domain)
    assert stored[0] != int(pseudo("alice-visit-1")[:16], 16) >> 1
    for f in shop.iterdir():  # the site's visit ids (which name the users) are nowhere
        if f.is_file():
            assert b"visit-" not in f.read_bytes(), f.name


def test_positives_carry_their_session_and_a_merged_purchase_keeps_its_click_s(
    shop: Path,
) -> None:
    d = _load(shop)
    assert d.session is not None and len(d.session) == len(d.item)
    alice = int(np.flatnonzero(d.user_ids == pseudo("alice"))[0])
    span = slice(d.offsets[alice], d.offsets[alice + 1])
    items = [str(d.item_ids[i - 1]) for i in d.item[span]]
    assert items == ["i1", "i2", "i3", "i4"]  # the purchase merged into the click of i1
    s = d.session[span]
    assert s[0] == s[1] == pseudo.session_keys(["alice-visit-1"])[0]
    assert s[2] == pseudo.session_keys(["alice-visit-2"])[0] and s[3] == -1
    assert d.weight[span][0] == 3.0


def test_a_dataset_without_sessions_has_none_and_says_what_to_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAILORED_HOME", str(tmp_path / "home"))
    mapping = _write(tmp_path / "in", MAPPING.replace('session = "visit"\n', ""))
    ds = import_dataset(mapping, tmp_path / "ds", key=KEY)
    assert "session" not in read_table(ds, "events").column_names
    d = _load(ds)
    assert d.session is None and d.cooccurrence_sessions("users") is None
    with pytest.raises(SchemaError, match=r"\[events\] session = COLUMN"):
        d.cooccurrence_sessions("sessions")
    # said when the data is read for training, before anything trains
    cfg = load_config(
        values={
            "data": {"dataset": str(ds), "events": EVENTS},
            "ranker": {"cooccurrence": "sessions"},
        }
    )
    with pytest.raises(SchemaError, match="this dataset logs none"):
        load_data(cfg)


def test_a_missing_session_column_and_a_bad_setting_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAILORED_HOME", str(tmp_path / "home"))
    mapping = _write(tmp_path / "in", MAPPING.replace('"visit"', '"visit_id"'))
    with pytest.raises(SchemaError, match="visit_id"):
        import_dataset(mapping, tmp_path / "ds", key=KEY)
    assert not (tmp_path / "ds").exists()
    mapping.write_text(MAPPING.replace('session = "visit"', "session = 3"))
    with pytest.raises(MappingError, match="session"):
        load_mapping(mapping)
    with pytest.raises(ConfigError, match=r"\[ranker\] cooccurrence"):
        load_config(values={"ranker": {"cooccurrence": "visits"}})


def test_co_occurrence_within_sessions_pairs_only_items_of_one_visit() -> None:
    # user 0: visit A {1, 2}, visit B {3}; user 1: visit C {1, 2}, visit D {3}; user 2: no
    # sessions logged, {1, 3}; user 3 reuses user 0's key for A but with {4}
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3])
    items = np.array([1, 2, 3, 1, 2, 3, 1, 3, 4])
    sessions = np.array([10, 10, 11, 20, 20, 21, -1, -1, 10])
    offsets = np.array([0, 3, 6, 8, 9])
    by_user = ItemNeighbors.of(users, items, offsets, 4, neighbors=3)
    by_session = ItemNeighbors.of(users, items, offsets, 4, neighbors=3, sessions=sessions)

    def sims(nb: ItemNeighbors, i: int) -> dict[int, float]:
        return {int(j): float(w) for j, w in zip(nb.ids[i], nb.weights[i], strict=True) if j}

    # over users 1 and 3 co-occur (users 0, 1, 2); within sessions only user 2's unlogged
    # events pair them
    assert sims(by_user, 1)[3] == pytest.approx(3 / np.sqrt(3 * 3))
    assert sims(by_session, 1) == {
        2: pytest.approx(2 / np.sqrt(3 * 2)),
        3: pytest.approx(1 / np.sqrt(3 * 3)),
    }
    # a key is its user's: user 3's visit "10" does not join user 0's
    assert 4 not in sims(by_session, 1) and 4 not in sims(by_session, 2)
    assert sims(by_session, 4) == {}


def test_the_ranker_s_co_occurrence_feature_counts_within_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # six users had i1 and i4 in their training period, three of them in one visit; a
    # seventh has i1 and comes back for i4: its candidate i4 co-occurs with i1 in six users'
    # histories but in three visits
    monkeypatch.setenv("TAILORED_HOME", str(tmp_path / "home"))
    rows: list[Row] = []
    for u in range(6):
        together = u < 3
        rows += [
            (f"u{u}", "i1", 0, "click", "30", f"v{u}a"),
            (f"u{u}", "i2", 10, "click", "30", f"v{u}a"),
            (
                f"u{u}",
                "i4",
                20 if together else 5000,
                "click",
                "30",
                f"v{u}a" if together else f"v{u}b",
            ),
            (f"u{u}", "i3", 200_000, "click", "30", f"v{u}c"),
        ]
    rows += [("u6", "i1", 0, "click", "30", "v6a"), ("u6", "i4", 200_000, "click", "30", "v6b")]
    ds = import_dataset(_write(tmp_path / "in", rows=rows), tmp_path / "ds", key=KEY)
    cfg = load_config(values={"data": {"dataset": str(ds), "events": EVENTS}})
    d = load_interactions(
        ds,
        PositiveRule.from_config(cfg.data),
        split="global_time",
        valid_start=T0 + 100_000,
        test_start=T0 + 300_000,
    )
    u6 = np.flatnonzero(d.user_ids == pseudo("u6"))
    emb = np.eye(d.n_items + 1, dtype=np.float32)
    i4 = int(np.flatnonzero(d.item_ids == "i4")[0]) + 1
    cooc = DENSE_FEATURES.index("cooc_recent")
    got = {}
    for how in ("users", "sessions"):
        req = build_requests(
            d,
            u6,
            np.ones((1, d.n_items + 1), np.float32),
            exact_retriever(emb),
            item_emb=emb,
            history_splits=(TRAIN,),
            target=VALID,
            n_candidates=d.n_items - 1,
            cooccurrence=how,
        )
        got[how] = float(req.dense[0, list(req.candidates[0]).index(i4), cooc])
    # i1 is in 7 users' histories and 7 visits, i4 in 6 and 6; together in 6 users, 3 visits
    assert got["users"] == pytest.approx(6 / np.sqrt(7 * 6))
    assert got["sessions"] == pytest.approx(3 / np.sqrt(7 * 6))


def test_a_bundle_s_co_occurrence_table_follows_the_setting(shop: Path) -> None:
    d = _load(shop)
    for how in ("users", "sessions"):
        cfg = load_config(values={"ranker": {"cooccurrence": how}})
        got = snapshot.neighbors(d, cfg.ranker, 0)
        want = ItemNeighbors.of(
            d.user, d.item, d.offsets, d.n_items, sessions=d.session if how == "sessions" else None
        )
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.weights, want.weights)
    # alice's i1 and i2 share a visit; bob's i3 is in no visit of his i1 or i2
    i = {name: int(np.flatnonzero(d.item_ids == name)[0]) + 1 for name in ("i1", "i2", "i3")}
    cfg = load_config(values={"ranker": {"cooccurrence": "sessions"}})
    by_visit = snapshot.neighbors(d, cfg.ranker, 0)
    assert i["i2"] in by_visit.ids[i["i1"]] and i["i3"] not in by_visit.ids[i["i1"]]
    by_user = snapshot.neighbors(d, load_config().ranker, 0)
    assert i["i3"] in by_user.ids[i["i1"]]


def test_sessions_stay_with_their_events_whatever_the_file_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TAILORED_HOME", str(tmp_path / "home"))
    # users interleaved and times out of order; a marker null and spaces around an id
    rows: list[Row] = [
        ("bob", "i3", 300, "click", "30", "b2"),
        ("alice", "i2", 200, "click", "30", "unknown"),
        ("bob", "i1", 100, "click", "30", "b1"),
        ("alice", "i4", 400, "click", "30", " a2 "),
        ("alice", "i1", 50, "click", "30", "a1"),
        ("bob", "i2", 150, "click", "30", "b1"),
        ("alice", "i3", 350, "click", "30", "a2"),
    ]
    mapping = _write(tmp_path / "in", MAPPING + 'null_values = ["unknown"]\n', rows)
    d = _load(import_dataset(mapping, tmp_path / "ds", key=KEY, chunk_rows=3))
    assert d.session is not None
    key = {s: int(pseudo.session_keys([s])[0]) for s in ("a1", "a2", "b1", "b2")}
    for user, want in (
        ("alice", [("i1", key["a1"]), ("i2", -1), ("i3", key["a2"]), ("i4", key["a2"])]),
        ("bob", [("i1", key["b1"]), ("i2", key["b1"]), ("i3", key["b2"])]),
    ):
        u = int(np.flatnonzero(d.user_ids == pseudo(user))[0])
        span = range(d.offsets[u], d.offsets[u + 1])
        assert [(str(d.item_ids[d.item[k] - 1]), int(d.session[k])) for k in span] == want


def test_a_session_column_cannot_also_be_a_context_value(tmp_path: Path) -> None:
    mapping = _write(tmp_path / "in", MAPPING + '[events.context]\nvisit = "visit"\n')
    with pytest.raises(MappingError, match=r"events.context.visit.*keyed hash"):
        load_mapping(mapping)


def test_a_key_rotation_moves_the_session_keys_too(shop: Path) -> None:
    before = read_table(shop, "events").column("session")
    new = Pseudonymizer(bytes(range(1, 33)))
    got = DatasetStore(shop).rekey(KeyMap.of(["alice", "bob"], pseudo, new))
    assert got["users"] == 2
    after = read_table(shop, "events").column("session")
    assert read_dataset_meta(shop).key_fingerprint == new.fingerprint
    # the same sessions (equal keys stay equal, none stays none), none of the old keys
    old_keys, new_keys = before.to_pylist(), after.to_pylist()
    assert [k is None for k in old_keys] == [k is None for k in new_keys]
    pairs = {(a, b) for a, b in zip(old_keys, new_keys, strict=True) if a is not None}
    assert len({a for a, _ in pairs}) == len({b for _, b in pairs}) == len(pairs)
    assert not {a for a, _ in pairs} & {b for _, b in pairs}
    assert all(b == new.rekey_sessions(np.array([a]))[0] for a, b in pairs)
    assert all(0 <= b < 2**63 for _, b in pairs)
