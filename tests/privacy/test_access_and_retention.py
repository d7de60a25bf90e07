"""Access (``tailored privacy export``), consent purposes, and retention (``tailored privacy
enforce`` and the server's own schedule): on a real server, SQLite state, dataset and
bundle."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tailored.bundle.format import BUNDLE_FILES, verify_bundle
from tailored.bundle.per_user import PerUser
from tailored.cli import main
from tailored.data.pseudonym import Pseudonymizer
from tailored.privacy.audit import AuditLog
from tailored.serve.sqlite_state import SQLiteState
from tailored.serve.state import StoredEvent
from tailored.serve.v1 import personalization_pb2 as pb
from tests.experiments.helpers import experiment_toml
from tests.helpers import TEST_KEY
from tests.serve.helpers import Running


def _raw_with_history(site: Path) -> str:
    """The first of the synthetic site's raw user ids (``u0000000``, ...) with a click of
    5 s or more: a user the bundle keeps recent items of."""
    ev = pq.read_table(site / "events.parquet", columns=["user_id", "type", "value"])
    click = pc.and_(pc.equal(ev.column("type"), "click"), pc.greater_equal(ev.column("value"), 5))
    known = set(pc.unique(ev.filter(click).column("user_id")).to_pylist())
    pseudo = Pseudonymizer(TEST_KEY)
    return next(raw for i in range(10_000) if pseudo(raw := f"u{i:07d}") in known)


@pytest.fixture
def raw(copy: Path) -> str:
    return _raw_with_history(copy / "site")


MODULES = [pb.PageModule(id="for-you", type="recommended"), pb.PageModule(id="t", type="trending")]


@pytest.mark.slow
def test_export_holds_everything_kept_about_a_user_and_why_they_see_it(
    copy: Path, tmp_path: Path, key_file: Path, raw: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pseudo = Pseudonymizer(TEST_KEY)(raw)
    running = Running(copy / "bundles", tmp_path / "state.db", erase_bundle_rows=True)
    try:
        c = running.client
        c.set_consent(raw, ["personalization", "analytics"])
        item = c.recommend(raw, k=3).items[0].item_id
        c.track([pb.Event(user_id=raw, item_id=item, type=pb.CLICK)])
        c.page(raw, MODULES, k=3)
        running.service.pages.writer.flush(5.0)
    finally:
        running.stop()
    exps = tmp_path / "experiments.toml"
    exps.write_text(experiment_toml("ranker", "l", "s", [("a", 0.5, {}), ("b", 0.5, {})]))
    out = tmp_path / "export.json"
    stores = ["--state", f"sqlite:///{tmp_path / 'state.db'}", "--dataset", str(copy / "site")]
    stores += ["--bundles", str(copy / "bundles"), "--key-file", str(key_file)]
    args = ["privacy", "export", raw, *stores, "--experiments", str(exps), "--out", str(out)]
    assert main(args) == 0
    assert "data held" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["pseudonym"] == pseudo and doc["held"] is True
    online = doc["stores"][f"online state sqlite:///{tmp_path / 'state.db'}"]
    assert online["consent"] == ["analytics", "personalization"]
    assert [c["purposes"] for c in online["consent_history"]] == [["analytics", "personalization"]]
    assert [e["item_id"] for e in online["events"] if e["type"] == "click"] == [item]
    assert online["pages"] and online["pages"][0]["modules"]
    dataset = doc["stores"][f"dataset {copy / 'site'}"]
    users = pq.read_table(copy / "site" / "users.parquet").to_pylist()
    mine = next(u for u in users if u["user_id"] == pseudo)
    assert dataset["profile"] == {k: v for k, v in mine.items() if k != "user_id"}
    events = pq.read_table(copy / "site" / "events.parquet")
    n = int(pc.sum(pc.equal(events.column("user_id"), pseudo)).as_py())
    assert len(dataset["events"]) == n > 0
    (version,) = doc["stores"][f"bundles {copy / 'bundles'}"]["versions"]
    assert version["version"] == "v000001" and version["recent_items"]
    segments = np.load(copy / "bundles" / "v000001" / BUNDLE_FILES["user_segments"])
    ids = pq.read_table(copy / "bundles" / "v000001" / BUNDLE_FILES["user_ids"])
    row = ids.column("user_id").to_pylist().index(pseudo)
    assert version["segment"]["segment"] == int(segments[row]) and version["segment"]["summary"]
    assert [a["experiment"] for a in doc["experiments"]] == ["ranker"]
    assert doc["why"]["personalized"] is True
    assert doc["why"]["bundle_recent_items"] == version["recent_items"]
    assert doc["why"]["online_recent_items"][-1]["item_id"] in {
        item,
        *[e["item_id"] for e in online["events"]],
    }
    assert doc["audit"] == []


def test_an_export_for_someone_never_seen_says_nothing_is_held(
    copy: Path, tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with SQLiteState(tmp_path / "state.db"):
        pass
    stores = ["--state", f"sqlite:///{tmp_path / 'state.db'}", "--dataset", str(copy / "site")]
    assert main(["privacy", "export", "nobody-42", *stores, "--key-file", str(key_file)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["held"] is False
    online = doc["stores"][f"online state sqlite:///{tmp_path / 'state.db'}"]
    assert online["consent"] is None and online["consent_history"] == []  # no consent records
    assert doc["stores"][f"dataset {copy / 'site'}"] == {"profile": None, "events": []}


def test_a_site_s_purposes_are_the_only_ones_accepted(copy: Path, tmp_path: Path, raw: str) -> None:
    running = Running(
        copy / "bundles", tmp_path / "state.db", consent_purposes=["personalization", "analytics"]
    )
    try:
        assert running.client.set_consent(raw, ["analytics", "personalization"]).purposes
        with pytest.raises(grpc.RpcError) as e:
            running.client.set_consent(raw, ["personalization", "marketing"])
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "purposes[1]" in str(e.value.details()) and "marketing" in str(e.value.details())
    finally:
        running.stop()


def _bound(copy: Path) -> tuple[int, float]:
    """A limit in the middle of the site's events: (unix seconds, days before now)."""
    times = pq.read_table(copy / "site" / "events.parquet").column("timestamp").to_numpy()
    bound = int(np.median(times))
    return bound, (time.time() - bound) / 86_400


@pytest.mark.slow
def test_enforce_leaves_no_expired_event_in_any_store(
    copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bound, days = _bound(copy)
    with SQLiteState(tmp_path / "state.db") as s:
        s.record(
            {
                "a": [
                    StoredEvent("i1", "click", (bound - 3600) * 1000),
                    StoredEvent("i2", "click", (bound + 3600) * 1000),
                ]
            },
            default_allows=True,
        )
    stores = ["--state", f"sqlite:///{tmp_path / 'state.db'}", "--dataset", str(copy / "site")]
    stores += ["--bundles", str(copy / "bundles")]
    assert main(["privacy", "enforce", *stores, "--days", f"{days:.6f}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["retention"]
    removed = report["removed"]
    before_s = report["before_ms"] / 1000
    assert removed[f"online state sqlite:///{tmp_path / 'state.db'}"]["events"] == 1
    assert removed[f"dataset {copy / 'site'}"]["events"] > 0
    assert removed[f"bundles {copy / 'bundles'}"]["history_entries"] > 0
    # not one expired event left anywhere
    with SQLiteState(tmp_path / "state.db") as s:
        assert [e.item_id for _, e in s.scan()] == ["i2"]
    left = pq.read_table(copy / "site" / "events.parquet").column("timestamp").to_numpy()
    assert len(left) and left.min() >= before_s
    version = copy / "bundles" / "v000001"
    history = PerUser.load(version, "history")
    assert history is not None and len(history.items) and history.times.min() >= before_s
    verify_bundle(version)
    (record,) = AuditLog().records()
    assert record["action"] == "retention" and record["removed"] == removed
    # a second run finds nothing more (its bound a minute earlier: the clock has moved on
    # since the first, and an event between the two bounds would expire in it)
    later = days + 60 / 86_400
    assert main(["privacy", "enforce", *stores, "--days", f"{later:.6f}", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["retention"]["removed"]
    assert all(not any(c.values()) for c in again.values())


def test_the_server_enforces_its_retention_limit_on_a_schedule(copy: Path, tmp_path: Path) -> None:
    now_ms = int(time.time() * 1000)
    with SQLiteState(tmp_path / "state.db") as s:
        old, new = now_ms - 40 * 86_400_000, now_ms - 86_400_000
        s.record(
            {"a": [StoredEvent("i1", "click", old), StoredEvent("i2", "click", new)]},
            default_allows=True,
        )
    running = Running(
        copy / "bundles",
        tmp_path / "state.db",
        retention_days=30.0,
        retention_check_minutes=0.001,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if [e.item_id for e in running.service.state.user("a", 10).events] == ["i2"]:
                break
            time.sleep(0.05)
        assert [e.item_id for e in running.service.state.user("a", 10).events] == ["i2"]
    finally:
        running.stop()
    records = [r for r in AuditLog().records() if r["action"] == "retention"]
    assert records and records[0]["days"] == 30.0
    assert sum(r["removed"][running.service.state.store]["events"] for r in records) == 1


def test_retention_refuses_a_limit_that_is_not_positive(
    copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["privacy", "enforce", "--dataset", str(copy / "site"), "--days", "0"]) == 2
    assert "--days: must be > 0" in capsys.readouterr().err


def test_retention_counts_a_second_against_milliseconds_in_every_store(copy: Path) -> None:
    """A bound inside a second: an event at that whole second is before it, in the bundle's
    histories (seconds) as in the dataset (seconds)."""
    from tailored.bundle.forget import BundleStore
    from tailored.data.forget import DatasetStore

    version = copy / "bundles" / "v000001"
    times = np.load(version / BUNDLE_FILES["user_history_times"])
    t = int(np.median(times))
    before_ms = t * 1000 + 500
    assert BundleStore(copy / "bundles").purge(before_ms)["history_entries"] > 0
    times = np.load(version / BUNDLE_FILES["user_history_times"])
    assert len(times) and times.min() > t
    DatasetStore(copy / "site").purge(before_ms)
    left = pq.read_table(copy / "site" / "events.parquet").column("timestamp").to_numpy()
    assert left.min() > t


def test_the_dataset_s_counts_follow_an_erasure_and_a_purge(copy: Path, raw: str) -> None:
    """``dataset.json``'s event counts, in all and per type, are the events left."""
    from tailored.data.forget import DatasetStore
    from tailored.data.schema import read_dataset_meta

    site = copy / "site"

    def actual() -> tuple[int, dict[str, int]]:
        types = pq.read_table(site / "events.parquet", columns=["type"]).column("type")
        counts = {v["values"]: v["counts"] for v in pc.value_counts(types).to_pylist()}
        return len(types), counts

    before = read_dataset_meta(site)
    assert (before.counts["events"], before.event_types) == actual()
    gone = DatasetStore(site).forget(Pseudonymizer(TEST_KEY)(raw))
    assert gone["events"] > 0
    after = read_dataset_meta(site)
    assert (after.counts["events"], after.event_types) == actual()
    assert after.counts["events"] == before.counts["events"] - gone["events"]
    bound, _ = _bound(copy)
    assert DatasetStore(site).purge(bound * 1000)["events"] > 0
    purged = read_dataset_meta(site)
    assert (purged.counts["events"], purged.event_types) == actual()
