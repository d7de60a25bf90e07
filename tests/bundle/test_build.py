"""From a trained run to a verified bundle and back: build, load without torch's help,
evaluate two-stage, refuse tampering, and refresh after new items arrive (real
MovieLens-100k, a small model)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tailored.bundle.build import BuildResult, build_bundle, refresh
from tailored.bundle.evaluate import evaluate_bundle
from tailored.bundle.format import BUNDLE_FILES, BundleError, verify_bundle
from tailored.bundle.runtime import LoadedBundle
from tailored.cli import main
from tailored.config import load_config
from tailored.train.two_tower.fit import train
from tests.helpers import reseal, small_config

pytestmark = pytest.mark.slow  # trains a run and builds bundles from it

# two members, two lists per user: the ensemble goes through export, bundle and evaluation
RANKER = {
    "max_epochs": 2,
    "candidates": 50,
    "max_users": 400,
    "hidden": 32,
    "patience": 1,
    "ensemble": 2,
    "lists_per_user": 2,
}


@pytest.fixture(scope="module")
def built(
    movielens_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, BuildResult]:
    """A copy of the dataset (the refresh test adds an item to it), a run of two pairs of
    towers (``[model] ensemble``: export, refresh and serving see the wider vectors), its
    bundle (built through valid, to be evaluated on test)."""
    base = tmp_path_factory.mktemp("bundle")
    dataset = base / "movielens-100k"
    shutil.copytree(movielens_dir, dataset)
    small = small_config(dataset, train={"max_epochs": 2}, model={"ensemble": 2}).to_dict()
    cfg = load_config(values={**small, "ranker": RANKER, "index": {"recall_queries": 100}})
    run = base / "run"
    train(cfg, out=run)
    result = build_bundle(run, base / "bundles", progress_bar=False, through="valid")
    return dataset, run, result


def test_a_bundle_holds_everything_and_verifies(built: tuple[Path, Path, BuildResult]) -> None:
    _, run, result = built
    assert result.path.name == "v000001" and result.items == 1682 and result.users == 943
    manifest = verify_bundle(result.path)
    names = {f.path for f in manifest.files}
    for key in (
        "model",
        "user_tower",
        "ranker",
        "weights",
        "items",
        "item_embeddings",
        "item_neighbors",
        "user_embeddings",
    ):
        assert BUNDLE_FILES[key] in names, key
    assert {"index/index.faiss", "index/ids.npy", "index/index.json"} <= names
    assert manifest.data["counts"]["items"] == 1682 and manifest.data["through"] == "valid"
    assert manifest.config["ranker"]["candidates"] == 50
    m = manifest.metrics
    assert m["user_tower_onnx_max_abs_diff"] <= 1e-4
    assert m["ranker"]["onnx_max_abs_diff"] <= 1e-4
    assert m["ranker"]["members"] == 2 and len(m["ranker"]["epochs"]) == 2
    # 400 users with validation items: at their next event, a second list for most of them
    # (400 to 800), and two stamped as serving stamps them, each (800; request_time "mixed")
    assert 1200 < m["ranker"]["requests"] <= 1600
    assert m["index"]["kind"] == "exact"  # 1,682 items: exact search is cheapest
    # an exact index has nothing to tune, but its search is timed like any other
    assert m["index"]["tuning"] is None and m["index"]["search_ms"] > 0
    assert m["refresh"]["new_items"] == 0 and m["refresh"]["items_per_second"] > 0
    assert m["two_tower"]["test"]["metrics"]["ndcg@10"] > 0
    assert manifest.extra["source"] == str(run.resolve())


def test_the_ranker_clock_scores_the_bundle_as_served_at_later_clocks(
    built: tuple[Path, Path, BuildResult],
) -> None:
    """``benchmarks.quality.ranker_clock`` scores the bundle through ``evaluate``'s own
    request path, stamped at the bundle clock plus some days: retrieval does not read the
    clock, so its lists are the same at every clock; the ranker's may not be."""
    from benchmarks.quality.ranker_clock import clock_metrics
    from tailored.config import from_dict
    from tailored.train.runs import load_data

    _, _, result = built
    cfg = from_dict(LoadedBundle.load(result.path).manifest.config, where="test")
    out = clock_metrics(result.path, load_data(cfg), cfg, [0.0, 30.0])
    assert set(out) == {"bundle+0d", "bundle+30d"}
    assert out["bundle+0d"]["retrieval"] == out["bundle+30d"]["retrieval"]
    for lists in out.values():
        for metrics in lists.values():
            assert 0.0 < metrics["ndcg@10"] <= 1.0 and 0.0 < metrics["recall@10"] <= 1.0


def test_two_stage_evaluation_from_the_bundle(built: tuple[Path, Path, BuildResult]) -> None:
    _, _, result = built
    report = evaluate_bundle(result.path, split="test")
    assert report["users"] == 943 and report["ranker"] is True
    for key in ("metrics", "retrieval", "popularity"):
        assert set(report[key]) >= {"ndcg@10", "recall@20", "mrr@10", "itemcoverage@10"}
    # the index's top-K from the bundle's ONNX user tower is the run's own full ranking
    run_report = json.loads((built[1] / "metrics.json").read_text())["test"]["metrics"]
    assert report["retrieval"]["ndcg@10"] == pytest.approx(run_report["ndcg@10"], abs=2e-3)
    assert report["retrieval"]["ndcg@10"] > report["popularity"]["ndcg@10"]
    assert report["metrics"]["ndcg@10"] > report["popularity"]["ndcg@10"]
    # metrics per user segment, beside the other groups: every evaluated user in one
    segments = report["groups"]["segment"]
    assert len(segments) == 8 and sum(g["users"] for g in segments.values()) == 943
    assert all(0 <= g["ndcg@10"] <= 1 for g in segments.values())


def test_evaluate_cli_on_a_bundle(
    built: tuple[Path, Path, BuildResult], capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, result = built
    assert main(["evaluate", str(result.path.parent), "--json", "--split", "test"]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert report["version"] == "v000001" and report["split"] == "test"
    assert {"metrics", "retrieval", "popularity"} <= set(report)
    assert main(["evaluate", str(result.path)]) == 0
    text = capsys.readouterr().out
    assert "two-stage" in text and "retrieval" in text and "popularity" in text


def test_loading_refuses_an_altered_bundle(
    built: tuple[Path, Path, BuildResult], tmp_path: Path
) -> None:
    copy = tmp_path / "v000001"
    shutil.copytree(built[2].path, copy)
    emb = copy / BUNDLE_FILES["item_embeddings"]
    data = bytearray(emb.read_bytes())
    data[-1] ^= 0xFF
    emb.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"embeddings\.npy"):
        LoadedBundle.load(copy)
    emb.unlink()
    with pytest.raises(BundleError, match=r"embeddings\.npy"):
        LoadedBundle.load(copy)


def test_refresh_under_ddp_writes_the_same_embeddings(
    built: tuple[Path, Path, BuildResult], tmp_path: Path
) -> None:
    """Two gloo processes each embed a share of the items and users through the predict
    loop; rank 0 merges the shards and writes the bundle."""
    first = built[2].path
    out = tmp_path / "ddp-bundles"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tailored.cli",
            "refresh",
            str(first),
            "--out",
            str(out),
            "--devices",
            "2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Tip:" not in proc.stderr  # Lightning's advertising, kept out of every command
    (version,) = [p for p in out.iterdir() if p.name.startswith("v")]
    verify_bundle(version)
    for name in ("item_embeddings", "item_history", "user_embeddings"):
        a = np.load(first / BUNDLE_FILES[name])
        b = np.load(version / BUNDLE_FILES[name])
        np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)


def test_refresh_embeds_new_items_from_metadata(built: tuple[Path, Path, BuildResult]) -> None:
    dataset, _, first = built
    items = pq.read_table(dataset / "items.parquet")
    # a new movie arrives after training: same genres as the first item, no ratings yet
    row = items.slice(0, 1).to_pylist()[0]
    row.update(item_id="new-movie-1", title="A New Movie (1998)")
    pq.write_table(
        pa.concat_tables([items, pa.Table.from_pylist([row], items.schema)]),
        dataset / "items.parquet",
    )
    second = refresh(first.path, progress_bar=False)
    assert second.path.name == "v000002" and second.items == 1683 and second.new_items == 1
    old, new = LoadedBundle.load(first.path), LoadedBundle.load(second.path)
    assert new.item_neighbors.ids.shape[0] == 1684  # padding row + 1,683 items
    assert new.item_ids[-1] == "new-movie-1" and new.n_items == 1683
    # known items keep their embeddings; the new one has a unit-norm embedding of its own
    np.testing.assert_allclose(new.item_embeddings[:1683], old.item_embeddings, atol=1e-5)
    assert np.linalg.norm(new.item_embeddings[1683]) == pytest.approx(1.0, abs=1e-4)
    # ... and the index finds it: its own vector's nearest item is itself
    _, rows = new.retrieve(new.item_embeddings[1683][None, :], 1)
    assert rows[0, 0] == 1683
    # the ranker is carried over unchanged
    assert (second.path / BUNDLE_FILES["ranker"]).read_bytes() == (
        first.path / BUNDLE_FILES["ranker"]
    ).read_bytes()


def _ranker_reading(
    bundle: LoadedBundle, n_dense: int, path: Path
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """A ranker (random weights) that reads the first ``n_dense`` ranking features, exported
    to ``path``: (rank() arguments but ``dense``, all the features, its torch scores)."""
    import torch

    from tailored.config import from_dict
    from tailored.data.ranking_features import DENSE_FEATURES, ranker_inputs
    from tailored.train.ranker.export import export_ranker
    from tailored.train.ranker.fit import ranker_spec
    from tailored.train.ranker.model import RANKER_INPUTS, Ranker
    from tailored.train.runs import load_data

    cfg = from_dict(bundle.manifest.config, where="manifest")
    data = load_data(cfg)
    spec = ranker_spec(data, bundle.item_embeddings.shape[1], cfg.ranker)
    torch.manual_seed(0)
    ranker = Ranker(dataclasses.replace(spec, dense=n_dense)).eval()
    rng = np.random.default_rng(0)
    width = max(n_dense, len(DENSE_FEATURES))
    dense = rng.normal(size=(1, 4, width)).astype(np.float32)
    args: dict[str, Any] = {
        "users": data.users.take(np.array([3])),
        "context": np.zeros((1, data.context.shape[1]), np.int64),
        "candidates": np.array([[5, 9, 14, 200]]),
        "user_emb": rng.normal(size=(1, bundle.item_embeddings.shape[1])).astype(np.float32),
    }
    feeds = ranker_inputs(
        **args, items=bundle.items, item_emb=bundle.item_embeddings, dense=dense[..., :n_dense]
    )
    example = {k: torch.from_numpy(feeds[k]) for k in RANKER_INPUTS}
    export_ranker(ranker, example, path)
    with torch.no_grad():
        expect = ranker(*(example[k] for k in RANKER_INPUTS)).numpy()
    return args, dense, expect


def test_a_bundle_from_before_the_item_item_model_still_serves(
    built: tuple[Path, Path, BuildResult], tmp_path: Path
) -> None:
    """A bundle written before ``ease_score`` existed: no item-item model files, and a ranker
    that reads one ranking feature fewer. It loads, its ranker reads the features it was
    trained on (they are only ever appended), and a refresh of it keeps that ranker."""
    from tailored.data.ranking_features import DENSE_FEATURES

    new = LoadedBundle.load(built[2].path)
    # every movie with a rating before the test period (the bundle is built through valid)
    assert new.item_regression.weights.shape == (1649, 1649)
    assert new.ranker_dense == len(DENSE_FEATURES)
    old = tmp_path / "bundles" / "v000001"
    shutil.copytree(built[2].path, old)
    for key in ("item_ease_rows", "item_ease_weights", "user_seen_offsets", "user_seen_items"):
        (old / BUNDLE_FILES[key]).unlink()
    n_old = len(DENSE_FEATURES) - 1
    args, dense, expect = _ranker_reading(new, n_old, old / BUNDLE_FILES["ranker"])
    reseal(old)

    bundle = LoadedBundle.load(old)
    assert bundle.item_regression.weights.shape == (0, 0)
    assert (bundle.item_regression.scores(np.array([1, 2]), args["candidates"][0]) == 0).all()
    assert bundle.ranker_dense == n_old
    # without every user's items, serving's "already interacted" falls back to the snapshot
    assert new.users is not None and bundle.users is not None
    assert new.users.seen_offsets is not None
    row = int(np.argmax(np.diff(new.users.seen_offsets)))  # the heaviest user: 664 movies
    recent = new.users.history.of(row)[0]
    assert len(new.users.seen(row)) > len(recent) == 200 and set(recent) < set(new.users.seen(row))
    np.testing.assert_array_equal(bundle.users.seen(row), recent)
    got = bundle.rank(**args, dense=dense)  # all the features this version computes
    np.testing.assert_allclose(got[0], expect, rtol=1e-4, atol=1e-4)

    second = refresh(old, progress_bar=False)  # the model is fitted; the old ranker stays
    refreshed = LoadedBundle.load(second.path)
    assert refreshed.item_regression.weights.shape[0] > 0
    assert refreshed.ranker_dense == n_old
    np.testing.assert_allclose(refreshed.rank(**args, dense=dense)[0], expect, rtol=1e-4, atol=1e-4)


def test_a_ranker_reading_more_features_than_this_version_is_refused(
    built: tuple[Path, Path, BuildResult], tmp_path: Path
) -> None:
    from tailored.data.ranking_features import DENSE_FEATURES

    copy = tmp_path / "v000001"
    shutil.copytree(built[2].path, copy)
    n = len(DENSE_FEATURES) + 1
    _ranker_reading(LoadedBundle.load(built[2].path), n, copy / BUNDLE_FILES["ranker"])
    reseal(copy)
    with pytest.raises(BundleError, match=rf"ranker\.onnx: reads {n} ranking features"):
        LoadedBundle.load(copy)


def test_the_item_item_model_files_are_checked(
    built: tuple[Path, Path, BuildResult], tmp_path: Path
) -> None:
    copy = tmp_path / "v000001"
    shutil.copytree(built[2].path, copy)
    rows_path = copy / BUNDLE_FILES["item_ease_rows"]
    rows = np.load(rows_path)
    for bad in (np.r_[rows[:-1], 1682], rows.astype(np.float32), np.r_[-2, rows[1:]]):
        np.save(rows_path, bad)
        reseal(copy)
        with pytest.raises(BundleError, match=r"ease_rows\.npy .* not an item-item model"):
            LoadedBundle.load(copy)
    (copy / BUNDLE_FILES["item_ease_weights"]).unlink()
    np.save(rows_path, rows)
    reseal(copy)
    with pytest.raises(BundleError, match=r"no items/ease_weights\.npy beside its pair"):
        LoadedBundle.load(copy)


def test_bundle_build_cli_refuses_a_missing_run(tmp_path: Path) -> None:
    assert main(["bundle", "build", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
