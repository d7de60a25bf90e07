"""The user-id table benchmark's collision-free copy of a dataset: every user keeps their row,
profile and events, under an id whose leading hex digits are that row, so that an id table of
at least as many rows as users gives each user a row of their own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks.quality.user_id_table import collision, row_encoded_copy
from tailored.config import load_config
from tailored.data.features import user_hash_buckets
from tailored.data.interactions import PositiveRule, load_interactions
from tailored.data.synth import generate_synthetic
from tests.helpers import ROOT, TEST_KEY


def test_the_row_encoded_copy_keeps_every_user_and_event_and_collides_nowhere(
    tmp_path: Path,
) -> None:
    src, dst = tmp_path / "site", tmp_path / "rows"
    generate_synthetic(src, n_users=300, n_items=50, key=TEST_KEY)
    row_encoded_copy(src, dst, batch_rows=1000)  # several batches of events
    assert not list(tmp_path.glob(".rows.tmp-*"))

    users_a, users_b = (pq.read_table(d / "users.parquet") for d in (src, dst))
    assert users_a.schema == users_b.schema and users_a.drop(["user_id"]) == users_b.drop(
        ["user_id"]
    )
    old = users_a.column("user_id").to_pylist()
    new = users_b.column("user_id").to_pylist()
    assert new == [f"{row:012x}{u[12:]}" for row, u in enumerate(old)]

    events_a, events_b = (pq.read_table(d / "events.parquet") for d in (src, dst))
    assert events_a.schema == events_b.schema and events_a.num_rows == events_b.num_rows > 1000
    assert events_a.drop(["user_id"]) == events_b.drop(["user_id"])
    row_of = {u: row for row, u in enumerate(old)}
    rows = [row_of[u] for u in events_a.column("user_id").to_pylist()]
    assert events_b.column("user_id").to_pylist() == [new[r] for r in rows]

    for name in ("dataset.json", "items.parquet", "truth/truth.json", "truth/item_bias.npy"):
        assert (dst / name).read_bytes() == (src / name).read_bytes()

    ids = np.asarray(new, object)
    buckets = user_hash_buckets(ids, 512)  # at least as many rows as users: one each
    assert np.array_equal(buckets, np.arange(300) + 1)
    assert collision(ids, 512) == {"rows_used": 300, "collision_share": 0.0, "displaced_share": 0.0}
    hashed = collision(np.asarray(old, object), 64)  # 300 users in 64 rows must share
    assert hashed["collision_share"] > 0.9 and hashed["rows_used"] <= 64

    # the product reads the same positives, users in the same rows, from either
    cfg = load_config(ROOT / "configs" / "synthetic.toml", overrides={"data.dataset": str(src)})
    rule = PositiveRule.from_config(cfg.data)
    a, b = load_interactions(src, rule), load_interactions(dst, rule)
    for field in ("user", "item", "timestamp", "split", "weight"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert list(b.user_ids) == new
    assert json.loads((dst / "dataset.json").read_text())["counts"]["users"] == 300
