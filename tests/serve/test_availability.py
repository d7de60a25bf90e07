"""No item is served outside its window: a synthetic site whose catalog launches items during
its span (and ends some), served by a real server, asked at every few hours of the span."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tailored.serve.v1 import personalization_pb2 as pb
from tests.helpers import synthetic_bundle
from tests.serve.helpers import Running

pytestmark = pytest.mark.slow  # trains on a synthetic site and builds a bundle

NEVER = np.iinfo(np.int64).max


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("windows")
    synthetic_bundle(base, users=400, items=150, seed=5)
    return base


@pytest.fixture
def running(site: Path, tmp_path: Path) -> Iterator[Running]:
    r = Running(site / "bundles", tmp_path / "s.db", new_item_slots=3, new_item_days=14.0)
    yield r
    r.stop()


def _catalog(site: Path) -> tuple[dict[str, int], dict[str, int]]:
    items = pq.read_table(site / "site" / "items.parquet")
    ids = items.column("item_id").to_pylist()
    start = pc.fill_null(items.column("available_from"), 0).to_pylist()
    end = pc.fill_null(items.column("available_until"), NEVER).to_pylist()
    return dict(zip(ids, start, strict=True)), dict(zip(ids, end, strict=True))


def test_no_item_is_served_before_its_launch_or_after_its_end(site: Path, running: Running) -> None:
    start, end = _catalog(site)
    times = pq.read_table(site / "site" / "events.parquet", columns=["timestamp"])
    first, last = pc.min_max(times.column("timestamp")).values()
    served = outside = new = 0
    unlaunched = []
    for t in np.linspace(first.as_py(), last.as_py() + 3 * 86_400, 40).astype(np.int64):
        unlaunched.append(sum(s > t for s in start.values()))
        context = pb.Context(time_unix_ms=int(t) * 1000)
        for user in [f"u{u:07d}" for u in range(0, 400, 40)] + ["someone-new"]:
            resp = running.client.recommend(user, 20, context=context)
            for item in resp.items:
                served += 1
                outside += not start[item.item_id] <= t < end[item.item_id]
                if item.reason == "new":
                    new += 1
                    assert t - 14 * 86_400 < start[item.item_id] <= t
    # the site launched items all through its span: at most times many were not out yet
    assert max(unlaunched) >= 10 and served > 5000
    assert outside == 0
    assert new > 0  # the exploration slots showed items launched in the last 14 days
