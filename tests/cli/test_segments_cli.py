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
