"""``tailored segments``: the segments a MovieLens-100k bundle was built with, described in
words, as text and JSON, and the quality report over a range of k."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tailored.bundle.format import BUNDLE_FILES, latest_bundle, load_npy
from tailored.cli import main

pytestmark = pytest.mark.slow  # the session's trained bundle (conftest's serve_bundle)


def test_a_bundle_holds_its_segments_described(
    serve_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = latest_bundle(serve_bundle)
    assert version is not None
    labels = load_npy(version / BUNDLE_FILES["user_segments"])
    users = load_npy(version / BUNDLE_FILES["user_embeddings"])
    assert labels.shape == (len(users),) and set(np.unique(labels).tolist()) == set(range(8))
    assert main(["segments", str(serve_bundle), "--json", "--quality", "2,8"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["k"] == 8 and [s["segment"] for s in doc["segments"]] == list(range(8))
    assert [s["users"] for s in doc["segments"]] == np.bincount(labels, minlength=8).tolist()
    # MovieLens' genres and profile fields are what a segment is described by
    described = [s for s in doc["segments"] if s["over_indexing"].get("genres")]
    assert described and all(
        g["lift"] >= 1.2 for s in described for g in s["over_indexing"]["genres"]
    )
    assert any(s["profile"] for s in doc["segments"])
    assert [q["k"] for q in doc["quality"]] == [2, 8]
    assert all(-1 <= q["silhouette"] <= 1 for q in doc["quality"])
    assert main(["segments", str(serve_bundle)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("bundle ") and "8 segments of 943 users" in text
    assert text.count("  Segment ") == 8


def test_bad_segment_arguments_are_named(
    serve_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["segments", str(serve_bundle), "--quality", "two"]) == 2
    assert "--quality: expected k values" in capsys.readouterr().err
    assert main(["segments", str(serve_bundle), "--quality", "1"]) == 2
    assert "each k must be in [2, 943]" in capsys.readouterr().err


def test_an_experiment_report_breaks_the_lift_down_by_the_bundles_segments(
    serve_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bundle's own users, exposed and clicking in a real SQLite state: the report's
    per-segment table counts each of them in their segment."""
    import pyarrow.parquet as pq

    from tailored.serve.sqlite_state import SQLiteState
    from tailored.serve.state import StoredEvent
    from tests.experiments.helpers import event_log, experiment_toml

    version = latest_bundle(serve_bundle)
    assert version is not None
    ids = pq.read_table(version / BUNDLE_FILES["user_ids"]).column("user_id").to_pylist()
    labels = load_npy(version / BUNDLE_FILES["user_segments"])
    log = event_log(0.3, users=len(ids), seed=5)
    rename = {f"{i:032x}": str(u) for i, u in enumerate(ids)}  # the log's users: the bundle's
    by_user: dict[str, list[StoredEvent]] = {}
    for user, kind, item, t, value in log:
        by_user.setdefault(rename[user], []).append(StoredEvent(item, kind, t, value, "home"))
    with SQLiteState(tmp_path / "state.db") as state:
        state.record(by_user, default_allows=True)
    (tmp_path / "e.toml").write_text(
        experiment_toml(
            "ranker",
            "l",
            "s",
            [("control", 0.5, {}), ("treatment", 0.5, {"ranker": False})],
            start="2025-12-01T00:00:00Z",
            end="2026-01-01T00:00:00Z",
        )
    )
    args = ["experiment", "report", "ranker", "--experiments", str(tmp_path / "e.toml")]
    args += ["--state", f"sqlite:///{tmp_path / 'state.db'}", "--now", "2025-12-09T00:00:00Z"]
    assert main([*args, "--json", "--segments", str(serve_bundle)]) == 0
    seg = json.loads(capsys.readouterr().out)["segments"]
    assert seg["tests"] == 8 and "Bonferroni" in seg["caveat"]
    sizes = {label: sum(r["users"].values()) for label, r in seg["by_segment"].items()}
    assert sorted(sizes.values()) == sorted(np.bincount(labels, minlength=8).tolist())
    assert all(label.split(": ", 1)[0].isdigit() for label in sizes)
    assert main([*args, "--segments", str(tmp_path)]) == 2  # no bundle there
    assert f"{tmp_path}: neither a bundle" in capsys.readouterr().err
