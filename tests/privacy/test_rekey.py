"""Key rotation: ``tailored privacy rekey`` moves the online state, the dataset and every
bundle version to a new key; a server with the new key serves every user exactly as before;
a crash at any point of the run leaves every store readable under one key or the other, and
running again finishes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tailored.bundle.forget import BundleStore
from tailored.bundle.format import BUNDLE_FILES, bundle_versions, verify_bundle
from tailored.cli import main
from tailored.data.features import user_hash_buckets
from tailored.data.forget import DatasetStore
from tailored.data.pseudonym import Pseudonymizer
from tailored.data.schema import read_dataset_meta
from tailored.data.tombstones import TombstoneList, tombstone
from tailored.paths import privacy_dir
from tailored.privacy.audit import AuditLog
from tailored.privacy.erasure import erase
from tailored.serve.sqlite_state import SQLiteState
from tailored.serve.state import StoredEvent
from tests.helpers import ROOT, TEST_KEY
from tests.serve.helpers import Running

NEW_KEY = bytes.fromhex("ffeeddccbbaa99887766554433221100" * 2)
OLD, NEW = Pseudonymizer(TEST_KEY), Pseudonymizer(NEW_KEY)
RAW_IDS = [f"u{i:07d}" for i in range(300)]
ERASED = "u0000009"


@pytest.fixture
def stores(copy: Path, tmp_path: Path) -> dict[str, Path]:
    """The site's stores under the old key: a dataset, a bundles root, an online state with
    events and consent, one user erased (a tombstone), the key files and the users file."""
    with SQLiteState(tmp_path / "state.db") as s:
        s.record(
            {
                OLD(r): [StoredEvent("i0000001", "click", 1_000 + i)]
                for i, r in enumerate(RAW_IDS[:20])
            },
            default_allows=True,
        )
        s.set_consent(OLD("u0000003"), ["personalization", "analytics"])
    erase(OLD(ERASED), [DatasetStore(copy / "site")], audit=AuditLog(), tombstones=TombstoneList())
    (tmp_path / "old.key").write_text(TEST_KEY.hex())
    (tmp_path / "new.key").write_text(NEW_KEY.hex())
    (tmp_path / "users.txt").write_text("\n".join(RAW_IDS) + "\n")
    return {
        "site": copy / "site",
        "bundles": copy / "bundles",
        "state": tmp_path / "state.db",
        "old": tmp_path / "old.key",
        "new": tmp_path / "new.key",
        "users": tmp_path / "users.txt",
    }


def _args(s: dict[str, Path]) -> list[str]:
    return [
        "privacy", "rekey",
        "--state", f"sqlite:///{s['state']}",
        "--dataset", str(s["site"]),
        "--bundles", str(s["bundles"]),
        "--key-file", str(s["old"]),
        "--new-key-file", str(s["new"]),
        "--users", str(s["users"]),
    ]  # fmt: skip


def _under(ids: list[str]) -> str:
    """Which key a store's ids are all under: "old", "new", or "mixed" (a half-migrated store)."""
    old, new = {OLD(r) for r in RAW_IDS}, {NEW(r) for r in RAW_IDS}
    if set(ids) <= old:
        return "old"
    if set(ids) <= new:
        return "new"
    return "mixed"


def _readable(s: dict[str, Path]) -> dict[str, str]:
    """Every store read whole, and the key its ids and its fingerprint say it is under
    (both must agree); raises if a store cannot be read."""
    out = {}
    meta = read_dataset_meta(s["site"])
    users = pq.read_table(s["site"] / "users.parquet").column("user_id").to_pylist()
    events = pq.read_table(s["site"] / "events.parquet").column("user_id").to_pylist()
    out["dataset"] = _under(users + events)
    want = {"old": OLD.fingerprint, "new": NEW.fingerprint}[out["dataset"]]
    assert meta.key_fingerprint == want, (meta.key_fingerprint, out)
    for v in bundle_versions(s["bundles"]):
        m = verify_bundle(v)
        ids = pq.read_table(v / BUNDLE_FILES["user_ids"]).column("user_id").to_pylist()
        out[v.name] = _under(ids)
        want = {"old": OLD.fingerprint, "new": NEW.fingerprint}[out[v.name]]
        assert m.data["key_fingerprint"] == want
    with SQLiteState(s["state"]) as st:
        out["state"] = _under([u for u, _ in st.scan()] + list(st.consents()))
        assert st.key_fingerprint() in (
            {"old": None, "new": NEW.fingerprint}[out["state"]],
            OLD.fingerprint,
        )
    return out


@pytest.mark.slow
def test_rekey_moves_every_store_and_the_new_key_serves_everyone_as_before(
    stores: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    who = ["u0000001", "u0000003", "u0000042"]
    before = Running(stores["bundles"], tmp_path / "serve-old.db", erase_bundle_rows=True)
    try:
        lists = {u: [i.item_id for i in before.client.recommend(u, k=10).items] for u in who}
    finally:
        before.stop()
    old_ids = pq.read_table(stores["bundles"] / "v000001" / BUNDLE_FILES["user_ids"])
    assert main([*_args(stores), "--json"]) == 0
    moved = json.loads(capsys.readouterr().out)["moved"]
    assert moved[f"dataset {stores['site']}"] == {"users": 299, "unmapped_users": 0, "already": 0}
    # 299: the server's start swept the erased user's rows from the bundle (their tombstone)
    assert moved[f"bundles {stores['bundles']}"]["users"] == 299
    assert moved[f"online state sqlite:///{stores['state']}"]["users"] == 20
    assert _readable(stores) == {"dataset": "new", "v000001": "new", "state": "new"}
    with SQLiteState(stores["state"]) as st:
        assert st.user(NEW("u0000003"), 10).consent == {"personalization", "analytics"}
        assert len(st.user(NEW("u0000004"), 10).events) == 1
        assert st.user(OLD("u0000004"), 10).events == ()
    # the erased user stays erased under the new key: their new tombstone is listed
    assert tombstone(NEW(ERASED)) in TombstoneList().read()
    # every bundle user keeps the id bucket they were trained with
    version = stores["bundles"] / "v000001"
    buckets = np.load(version / BUNDLE_FILES["user_id_buckets"])
    n = json.loads((version / BUNDLE_FILES["model"]).read_text())["user_id_buckets"]
    old = old_ids.column("user_id").to_numpy(zero_copy_only=False)
    assert (buckets == user_hash_buckets(old, n)).all()
    (record,) = [r for r in AuditLog().records() if r["action"] == "rekey"]
    assert record["from_key"] == OLD.fingerprint and record["failed"] == {}
    assert not (privacy_dir() / "rekey.json").exists()
    # a server with the new key: the same lists for the same people
    after = Running(
        stores["bundles"], tmp_path / "serve-new.db", key=NEW_KEY, erase_bundle_rows=True
    )
    try:
        for u in who:
            assert [i.item_id for i in after.client.recommend(u, k=10).items] == lists[u]
    finally:
        after.stop()
    # run again: every store is under the new key already; nothing moves
    assert main([*_args(stores), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["moved"]
    assert again[f"dataset {stores['site']}"]["already"] == 1


_CRASHING = """
import os, sys
n = int(sys.argv[1])
calls = [0]
def dying(real):
    def call(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            os._exit(137)  # as a kill -9 here would
        return real(*a, **k)
    return call
os.rename, os.replace, os.fsync = dying(os.rename), dying(os.replace), dying(os.fsync)
import tailored.data.forget
if sys.argv[2] == "two-renames":  # a system without an atomic exchange of directories
    tailored.data.forget._exchange = lambda a, b: False
from tailored.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("swap", ["exchange", "two-renames"])
def test_a_crash_at_any_point_leaves_every_store_readable_and_a_second_run_finishes(
    stores: dict[str, Path], swap: str
) -> None:
    """The run dies (as under kill -9) at its 1st, 2nd, ... rename, replace or fsync, each
    time from where the last one left it; after each death every store reads whole and is
    under one key; then a run without a crash finishes. With the atomic exchange a reader
    never finds a directory missing; with two renames, the next run's recovery (here, what any
    erasure or re-keying does first) puts it back."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    seen: set[tuple[tuple[str, str], ...]] = set()
    for n in range(1, 400):
        proc = subprocess.run(
            [sys.executable, "-c", _CRASHING, str(n), swap, *_args(stores)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if swap == "two-renames":
            DatasetStore(stores["site"]).key_fingerprint()  # recovers, as every run first does
            BundleStore(stores["bundles"]).versions()
        state = _readable(stores)
        seen.add(tuple(sorted(state.items())))
        if proc.returncode == 0:
            break
        assert proc.returncode == 137, proc.stderr
    else:
        pytest.fail("the run never finished")
    assert _readable(stores) == {"dataset": "new", "v000001": "new", "state": "new"}
    # the deaths did land halfway: some stores moved while others had not
    assert any(len({k for _, k in s}) == 2 for s in seen), seen
    assert not (privacy_dir() / "rekey.json").exists()


def test_bad_keys_and_users_are_refused_before_anything_moves(
    stores: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short = tmp_path / "short.key"
    short.write_text("0011")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    cases = [
        (["--new-key-file", str(short)], "use at least 16"),
        (["--new-key-file", str(stores["old"])], "the new key is the old key"),
        (["--users", str(empty)], "no user ids"),
        (["--users", str(tmp_path / "missing.txt")], "cannot read it"),
    ]
    for extra, words in cases:
        assert main([*_args(stores), *extra]) == 2
        assert words in capsys.readouterr().err
    assert _readable(stores) == {"dataset": "old", "v000001": "old", "state": "old"}
    # a store under a third key is named, and the others still move
    third = tmp_path / "third.key"
    third.write_text("ab" * 32)
    assert (
        main(
            [
                *_args(stores)[:-6],
                "--key-file",
                str(third),
                "--new-key-file",
                str(stores["new"]),
                "--users",
                str(stores["users"]),
            ]
        )
        == 2
    )
    assert "neither the old key" in capsys.readouterr().err
