"""Erasure reaches every store, proven by searching their bytes: a real server on a loopback
port (SQLite, then Redis), the ``Forget`` admin call, ``tailored privacy forget`` for the
dataset, then every file (and every Redis key and value) searched for the user's raw id and
pseudonym, which may stay only as the audit record's ``pseudonym``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest

from tailored.bundle.format import BUNDLE_FILES, verify_bundle
from tailored.bundle.runtime import LoadedBundle
from tailored.cli import main
from tailored.data.interactions import PositiveRule, load_interactions
from tailored.data.pseudonym import Pseudonymizer
from tailored.data.tombstones import TombstoneList, tombstone
from tailored.paths import privacy_dir
from tailored.privacy.audit import AuditError, AuditLog
from tailored.serve.redis_state import RedisState
from tailored.serve.v1 import personalization_pb2 as pb
from tests.helpers import TEST_KEY
from tests.privacy.helpers import holding_files, holding_redis
from tests.serve.helpers import Running, with_prefix

RAW = "u0000005"  # row 5 of the synthetic site
MODULES = [
    pb.PageModule(id="for-you", type="recommended"),
    pb.PageModule(id="trending", type="trending"),
    pb.PageModule(id="byw", type="because_you_watched"),
]


def _use(running: Running, raw: str) -> None:
    """The user as a site would leave them: consent with its history, events, a page."""
    c = running.client
    c.set_consent(raw, ["personalization", "analytics"])
    items = [i.item_id for i in c.recommend(raw, k=5).items]
    c.track([pb.Event(user_id=raw, item_id=items[0], type=pb.CLICK)])
    page = c.page(raw, MODULES, k=4)
    shown = next(m for m in page.modules if m.items)
    c.track(
        [
            pb.Event(
                user_id=raw,
                item_id=shown.items[0].item_id,
                type=pb.CLICK,
                request_id=page.request_id,
                module=shown.id,
            )
        ]
    )
    running.service.pages.writer.flush(5.0)


def _audit_outside_pseudonym(path: Path, needles: list[str]) -> list[str]:
    """Needles in the audit log anywhere but a record's ``pseudonym`` field."""
    bad = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        record.pop("pseudonym", None)
        bad += [n for n in needles if n in json.dumps(record)]
    return bad


@pytest.mark.slow
def test_forget_on_sqlite_leaves_the_user_only_in_the_audit(
    copy: Path, tmp_path: Path, key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pseudo = Pseudonymizer(TEST_KEY)(RAW)
    needles = [RAW, pseudo]
    state_dir = tmp_path / "state"
    running = Running(copy / "bundles", state_dir / "state.db", erase_bundle_rows=True)
    try:
        _use(running, RAW)
        before = holding_files([state_dir, copy], needles)
        # the search finds them where they are: it can fail
        assert any(p.startswith(str(state_dir)) for p in before), before
        assert any("users.parquet" in p and "bundles" in p for p in before), before
        assert any(p.endswith("site/events.parquet") for p in before), before
        assert running.service.state.user_pages(pseudo), "a page was logged"

        resp = running.client.forget(RAW)
        assert resp.held and resp.pseudonym == pseudo
        removed = dict(resp.removed)
        assert removed[f"{running.service.state.store}: events"] >= 2
        assert removed[f"{running.service.state.store}: pages"] >= 1
        assert removed[f"{running.service.state.store}: consent_history"] == 1
        assert removed[f"bundles {copy / 'bundles'}: user_rows"] == 1
        # erasing during service fails no request: the user is served as a new one at once
        assert len(running.client.recommend(RAW, k=5).items) == 5
        assert running.service.state.user(pseudo, 10).forgotten
    finally:
        running.stop()
    assert (
        main(
            ["privacy", "forget", RAW, "--dataset", str(copy / "site"), "--key-file", str(key_file)]
        )
        == 0
    )

    after = holding_files([state_dir, copy, privacy_dir()], needles)
    audit = privacy_dir() / "audit.jsonl"
    assert after == {str(audit): {pseudo}}, after
    assert _audit_outside_pseudonym(audit, needles) == []
    assert RAW not in caplog.text and pseudo not in caplog.text
    records = list(AuditLog().records(pseudo))
    assert [r["action"] for r in records] == ["erasure", "erasure"] and AuditLog().verify() == 2
    assert records[1]["removed"][f"dataset {copy / 'site'}"]["users"] == 1
    assert tombstone(pseudo) in TombstoneList().read()
    # the rewritten bundle verifies and loads, without the user
    version = copy / "bundles" / "v000001"
    assert verify_bundle(version).extra["erased_users"] == 1
    loaded = LoadedBundle.load(version)
    assert loaded.users is not None and loaded.users.row(pseudo) is None
    assert len(loaded.users) == 299
    segments = np.load(version / BUNDLE_FILES["user_segments"])
    assert len(segments) == 299


@pytest.mark.slow
def test_forget_on_redis_leaves_no_key_or_value_holding_the_user(
    copy: Path, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    pseudo = Pseudonymizer(TEST_KEY)(RAW)
    needles = [RAW, pseudo]
    running = Running(
        copy / "bundles",
        state=RedisState.from_url(with_prefix(redis_url, redis_prefix)),
        erase_bundle_rows=True,
    )
    try:
        _use(running, RAW)
        assert holding_redis(redis_url, needles, redis_prefix)  # the search can fail
        resp = running.client.forget(RAW)
        assert resp.held
    finally:
        running.stop()
    assert holding_redis(redis_url, needles, redis_prefix) == {}
    assert holding_files([copy / "bundles"], needles) == {}


@pytest.mark.slow
def test_withdrawing_consent_erases_the_bundle_rows_and_training_leaves_them_out(
    copy: Path, tmp_path: Path
) -> None:
    pseudo = Pseudonymizer(TEST_KEY)(RAW)
    running = Running(copy / "bundles", tmp_path / "state.db", erase_bundle_rows=True)
    try:
        running.client.track([pb.Event(user_id=RAW, item_id="i0000001", type=pb.CLICK)])
        assert running.client.set_consent(RAW, []).events_forgotten == 1
        deadline = time.monotonic() + 30
        while not list(AuditLog().records(pseudo)) and time.monotonic() < deadline:
            time.sleep(0.05)
        (record,) = AuditLog().records(pseudo)
        assert record["action"] == "consent-withdrawal"
        assert record["removed"][f"bundles {copy / 'bundles'}"] == {"user_rows": 1}
        # granted again: the old history does not come back (no bundle row, no events)
        running.client.set_consent(RAW, ["personalization"])
        assert running.service.state.user(pseudo, 10).events == ()
        assert running.client.recommend(RAW, k=5).items
    finally:
        running.stop()
    ids = pq.read_table(copy / "bundles" / "v000001" / BUNDLE_FILES["user_ids"])
    assert pseudo not in ids.column("user_id").to_pylist()
    # the dataset still holds them (no one named it), but training leaves them out
    rule = PositiveRule.weighted({"click": 1.0, "purchase": 1.0, "rating": 1.0, "view": 1.0})
    data = load_interactions(copy / "site", rule)
    assert pseudo not in set(data.user_ids.tolist()) and data.n_users == 299


def test_forgetting_a_user_no_store_holds_says_nothing_is_held(
    copy: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--dataset", str(copy / "site"), "--bundles", str(copy / "bundles")]
    assert main(["privacy", "forget", "nobody-42", *args, "--key-file", str(key_file)]) == 0
    assert "nothing held" in capsys.readouterr().out
    (record,) = AuditLog().records()
    assert record["held"] is False and record["failed"] == {}
    assert verify_bundle(copy / "bundles" / "v000001").extra.get("erased_users") is None


def test_a_store_that_fails_is_named_and_a_second_run_finishes(
    copy: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = copy / "site" / "events.parquet"
    good = events.read_bytes()
    events.write_bytes(b"not parquet")  # the dataset cannot be read
    args = ["privacy", "forget", RAW, "--dataset", str(copy / "site")]
    args += ["--bundles", str(copy / "bundles"), "--key-file", str(key_file)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"dataset {copy / 'site'}" in err and "run the same command again" in err
    pseudo = Pseudonymizer(TEST_KEY)(RAW)
    # the bundles were erased all the same, and the record says what failed
    ids = pq.read_table(copy / "bundles" / "v000001" / BUNDLE_FILES["user_ids"])
    assert pseudo not in ids.column("user_id").to_pylist()
    (first,) = AuditLog().records(pseudo)
    assert list(first["failed"]) == [f"dataset {copy / 'site'}"]
    events.write_bytes(good)
    assert main(args) == 0
    second = list(AuditLog().records(pseudo))[-1]
    assert second["failed"] == {} and second["removed"][f"dataset {copy / 'site'}"]["users"] == 1


def test_bad_input_is_refused_before_anything_is_erased(
    copy: Path, tmp_path: Path, key_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = tmp_path / "short.key"
    short.write_text("00112233")
    cases = [
        (["--dataset", str(copy / "site"), "--key-file", str(short)], "use at least 16"),
        (["--dataset", str(tmp_path / "nope"), "--key-file", str(key_file)], "nope"),
        (["--bundles", str(tmp_path / "nope"), "--key-file", str(key_file)], "no such directory"),
        (["--key-file", str(key_file)], "no store given"),
    ]
    for extra, words in cases:
        assert main(["privacy", "forget", RAW, *extra]) == 2
        assert words in capsys.readouterr().err
    assert not (privacy_dir() / "audit.jsonl").exists()
    assert pq.read_table(copy / "site" / "users.parquet").num_rows == 300


def test_the_audit_chain_shows_a_removed_line(tmp_path: Path) -> None:
    log = AuditLog(tmp_path)
    for i in range(3):
        log.append("erasure", pseudonym=f"p{i}", removed={}, failed={})
    assert log.verify() == 3
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join([lines[0], lines[2]]) + "\n")
    with pytest.raises(AuditError, match="line 2 does not follow line 1"):
        log.verify()


def test_forget_needs_the_admin_token(copy: Path, tmp_path: Path) -> None:
    running = Running(copy / "bundles", tmp_path / "state.db", erase_bundle_rows=True)
    try:
        with pytest.raises(grpc.RpcError) as e:
            running.client.admin.Forget(pb.ForgetRequest(user_id=RAW), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            running.client.forget("")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "user_id" in str(e.value.details())
    finally:
        running.stop()
