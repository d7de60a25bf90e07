"""Event types as configuration: which events a dataset's training data keeps, with what weight,
and a purchase after its click read as one example."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tailored.config import load_config
from tailored.data.importer import import_dataset
from tailored.data.interactions import PositiveRule, load_interactions
from tailored.data.pseudonym import Pseudonymizer

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
"""

# user, item, seconds after T0, type, value (dwell seconds for a click)
ROWS = [
    ("a", "i1", 0, "impression", ""),
    ("a", "i1", 10, "click", "3"),  # 3 s of dwell: a bounce, no positive
    ("a", "i2", 100, "click", "40"),
    ("a", "i2", 400, "purchase", "19.9"),  # the click's purchase: the same example
    ("a", "i3", 500, "add_to_cart", ""),
    ("a", "i4", 600, "hide", ""),
    ("a", "i2", 90_000, "click", ""),  # a day later, no dwell logged: a new example
    ("b", "i1", 0, "click", "12"),
    ("b", "i3", 50, "share", ""),
    ("b", "i4", 60, "add_to_cart", ""),
]

EVENTS = {
    "click": {"role": "positive", "min_value": 5},
    "purchase": {"role": "positive", "weight": 3},
    "add_to_cart": {"role": "positive", "weight": 2},
    "impression": {"role": "exposure"},
    "hide": {"role": "negative"},
}


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TAILORED_HOME", str(tmp_path / "home"))
    root = tmp_path / "in"
    root.mkdir()
    lines = ["uid,sku,ts,kind,value"]
    lines += [f"{u},{i},{T0 + t},{k},{v}" for u, i, t, k, v in ROWS]
    (root / "events.csv").write_text("\n".join(lines) + "\n")
    (root / "mapping.toml").write_text(MAPPING)
    return import_dataset(root / "mapping.toml", tmp_path / "ds", key=KEY)


def _examples(shop: Path, **data: object) -> dict[str, list[tuple[str, int, float]]]:
    """Each user's training examples: (item, seconds after T0, weight), in time order."""
    cfg = load_config(values={"data": {"dataset": str(shop), **data}})
    d = load_interactions(shop, PositiveRule.from_config(cfg.data))
    rows = {str(p): u for u, p in enumerate(d.user_ids)}
    return {
        name: [
            (str(d.item_ids[d.item[k] - 1]), int(d.timestamp[k] - T0), float(d.weight[k]))
            for k in range(d.offsets[rows[pseudo(name)]], d.offsets[rows[pseudo(name)] + 1])
        ]
        for name in ("a", "b")
    }


def test_roles_weights_dwell_and_a_purchase_after_its_click(shop: Path) -> None:
    got = _examples(shop, events=EVENTS)
    # the bounce, the impression, the hide and the share are no positives; the purchase 300 s
    # after its click is that click's example, with the purchase's weight
    assert got["a"] == [("i2", 100, 3.0), ("i3", 500, 2.0), ("i2", 90_000, 1.0)]
    assert got["b"] == [("i1", 0, 1.0), ("i4", 60, 2.0)]


def test_without_merging_the_purchase_is_a_second_example(shop: Path) -> None:
    got = _examples(shop, events=EVENTS, merge_repeat_seconds=0)
    assert [x for x in got["a"] if x[0] == "i2"] == [
        ("i2", 100, 1.0),
        ("i2", 400, 3.0),
        ("i2", 90_000, 1.0),
    ]


def test_an_unconfigured_type_is_ignored_and_said_so(
    shop: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="tailored.data.interactions")
    rule = PositiveRule.from_config(load_config(values={"data": {"events": EVENTS}}).data)
    data = load_interactions(shop, rule)
    assert "share (1)" in caplog.text
    assert np.all(data.weight > 0)
