"""A bundle knows up to which split it was built (``bundle build --through``): its snapshot
holds no later event, the manifest records the cut, ``tailored evaluate`` refuses a bundle on
a period it has seen, and ``refresh`` keeps to the bundle's own dataset (real MovieLens-100k,
a small model, bundles without a ranker)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tailored.bundle import snapshot
from tailored.bundle.build import BuildResult, build_bundle, refresh
from tailored.bundle.format import BUNDLE_FILES, verify_bundle
from tailored.bundle.runtime import LoadedBundle
from tailored.cli import main
from tailored.config import from_dict
from tailored.data.interactions import Interactions
from tailored.data.splits import TEST, VALID
from tailored.errors import TailoredError
from tailored.train.runs import load_data
from tailored.train.two_tower.fit import train
from tests.helpers import small_config

pytestmark = pytest.mark.slow  # trains a run and builds bundles from it


@pytest.fixture(scope="module")
def built(movielens_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run, two bundles of it: through valid (for evaluation) and through test (the
    default, every event), and the data they were built from."""
    base = tmp_path_factory.mktemp("through")
    cfg = small_config(movielens_dir, train={"max_epochs": 1})
    train(cfg, out=base / "run")
    kw: dict[str, Any] = {"ranker": False, "progress_bar": False}
    valid = build_bundle(base / "run", base / "valid", through="valid", **kw)
    whole = build_bundle(base / "run", base / "whole", **kw)
    return {"run": base / "run", "valid": valid, "whole": whole, "data": load_data(cfg)}


def _seen(bundle: LoadedBundle, u: int) -> set[int]:
    assert bundle.users is not None
    return set(bundle.users.seen(u).tolist())


def test_a_bundle_through_valid_records_it_and_holds_no_test_event(
    built: dict[str, Any],
) -> None:
    data: Interactions = built["data"]
    keep = data.split <= VALID
    assert (data.split == TEST).sum() > 0
    last = int(data.timestamp[keep].max())
    valid, whole = LoadedBundle.load(built["valid"].path), LoadedBundle.load(built["whole"].path)
    # the manifest records the cut; the bundle clock starts at the last event included
    m = valid.manifest.data
    assert m["through"] == "valid" and m["through_unix"] == last == m["last_event_time"]
    assert m["events"] == int(keep.sum()) and valid.last_event_time == last
    assert m["counts"] == data.meta.counts  # the dataset's identity, all of it
    w = whole.manifest.data
    assert w["through"] == "test" and w["events"] == len(data.item)
    assert w["last_event_time"] == int(data.timestamp.max()) >= last
    # popularity: the counts over train + valid only
    np.testing.assert_array_equal(
        valid.activity.table[:, 0], np.bincount(data.item[keep], minlength=data.n_items + 1)
    )
    np.testing.assert_array_equal(
        whole.activity.table[:, 0], np.bincount(data.item, minlength=data.n_items + 1)
    )
    assert (valid.activity.first_seen <= last).all()
    # each user's items seen and history: their train + valid items, none only in test
    assert valid.users is not None
    assert (valid.users.history.times <= last).all()
    test_only_users = 0
    for u in range(data.n_users):
        span = slice(data.offsets[u], data.offsets[u + 1])
        items, splits = data.item[span], data.split[span]
        before = set(items[splits <= VALID].tolist())
        test_only = set(items[splits == TEST].tolist()) - before
        assert _seen(valid, u) == before, u
        assert not test_only & set(valid.users.history.of(u)[0].tolist())
        assert test_only <= _seen(whole, u)
        test_only_users += bool(test_only)
    assert test_only_users > 900  # nearly every user has test items (the split's 10%)
    # co-occurrence and the item-item model: from train + valid, not every event
    cut = snapshot.cut(data, "valid")
    cfg = from_dict(valid.manifest.config, where="manifest")
    np.testing.assert_array_equal(
        valid.item_neighbors.ids, snapshot.neighbors(cut, cfg.ranker, cfg.train.seed).ids
    )
    assert not np.array_equal(valid.item_neighbors.ids, whole.item_neighbors.ids)
    assert not np.array_equal(valid.item_regression.weights, whole.item_regression.weights)


def test_evaluate_scores_a_bundle_through_valid_on_test(
    built: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(built["valid"].path.parent)
    assert main(["evaluate", root, "--json", "--split", "test"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "test" and report["users"] > 900
    assert report["metrics"]["recall@20"] > 0.05 and report["retrieval"]["recall@20"] > 0.05
    # ... but not on valid, which it has seen
    assert main(["evaluate", root, "--split", "valid"]) == 2
    err = capsys.readouterr().err
    assert "built through valid" in err and "valid split" in err and root in err


def test_evaluate_refuses_a_bundle_that_has_seen_the_split(
    built: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path = built["whole"].path
    for argv in (["--split", "test"], []):  # test is the default
        assert main(["evaluate", str(path.parent), *argv]) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "built through test" in err
        assert "evaluating it on test" in err and "--through valid" in err


def test_a_bundle_without_the_record_counts_as_built_through_test(
    built: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "bundles" / "v000001"
    shutil.copytree(built["valid"].path, old)
    doc = json.loads((old / "manifest.json").read_text())
    for key in ("through", "through_unix", "events"):
        del doc["data"][key]
    (old / "manifest.json").write_text(json.dumps(doc))
    assert main(["evaluate", str(old), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "holds every event (through test)" in err and "--through valid" in err


def test_build_through_train_refuses_a_ranker(built: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(TailoredError, match="--through train: the re-ranker"):
        build_bundle(built["run"], tmp_path / "b", through="train", ranker=True)
    with pytest.raises(SystemExit):  # argparse: not a split
        main(["bundle", "build", str(built["run"]), "--out", "x", "--through", "later"])


def _on_copy(result: BuildResult, movielens_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the bundle reading a copy of its dataset (``tmp_path/site``): the version
    and the dataset directory."""
    site = tmp_path / "site"
    shutil.copytree(movielens_dir, site)
    version = tmp_path / "bundles" / "v000001"
    shutil.copytree(result.path, version)
    doc = json.loads((version / "manifest.json").read_text())
    doc["config"]["data"]["dataset"] = str(site)
    (version / "manifest.json").write_text(json.dumps(doc))
    return version, site


def _edit_meta(site: Path, **fields: Any) -> None:
    doc = json.loads((site / "dataset.json").read_text())
    doc.update(fields)
    (site / "dataset.json").write_text(json.dumps(doc))


def test_refresh_picks_up_more_events_of_the_same_site(
    built: dict[str, Any], movielens_dir: Path, tmp_path: Path
) -> None:
    version, site = _on_copy(built["valid"], movielens_dir, tmp_path)
    # the site re-imported with more events: some users rated a few more movies later
    events = pq.read_table(site / "events.parquet")
    more = events.slice(0, 50).to_pylist()
    end = int(pc.max(events.column("timestamp")).as_py())
    for k, row in enumerate(more):
        row.update(item_id=str(1 + (k * 37) % 1682), timestamp=end + 3600 * (k + 1))
    pq.write_table(
        pa.concat_tables([events, pa.Table.from_pylist(more, events.schema)]),
        site / "events.parquet",
    )
    counts = json.loads((site / "dataset.json").read_text())["counts"]
    _edit_meta(site, counts={**counts, "events": counts["events"] + len(more)})
    second = refresh(version, progress_bar=False)
    m = verify_bundle(second.path)
    assert second.path.name == "v000002" and m.data["counts"]["events"] == 100_050
    # a bundle made for evaluation stays one: through valid, as its source
    assert m.data["through"] == "valid" and "data_changed_from" not in m.extra
    now = load_data(from_dict(m.config, where="manifest"))
    keep = now.split <= VALID
    assert m.data["events"] == int(keep.sum()) < len(now.item) == 100_050
    assert m.data["last_event_time"] == int(now.timestamp[keep].max())


def test_refresh_refuses_another_dataset(
    built: dict[str, Any],
    movielens_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    version, site = _on_copy(built["valid"], movielens_dir, tmp_path)
    meta = json.loads((site / "dataset.json").read_text())
    _edit_meta(site, name="another-site")
    with pytest.raises(TailoredError, match="dataset 'movielens-100k' then, 'another-site' now"):
        refresh(version, progress_bar=False)
    _edit_meta(site, name=meta["name"], key_fingerprint="0123456789abcdef")
    assert main(["refresh", str(version), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"key_fingerprint {meta['key_fingerprint']!r} then" in err and "--data-changed" in err
    assert not (version.parent / "v000002").exists()
    # ... unless the data changed on purpose
    assert main(["refresh", str(version), "--no-progress", "--data-changed"]) == 0
    m = verify_bundle(version.parent / "v000002")
    assert m.extra["data_changed_from"]["key_fingerprint"] == meta["key_fingerprint"]
    assert m.data["key_fingerprint"] == "0123456789abcdef"
    assert BUNDLE_FILES["user_embeddings"] in {f.path for f in m.files}
