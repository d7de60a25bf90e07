"""The bundle: writing is all or nothing, and any difference from the manifest is refused."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tailored.bundle.format import (
    MANIFEST,
    BundleError,
    BundleWriter,
    latest_bundle,
    load_json,
    load_npy,
    resolve_bundle,
    verify_bundle,
)
from tailored.cli import main

EMB = np.arange(12, dtype=np.float32).reshape(4, 3)


def _write(root: Path, metrics: dict[str, float] | None = None) -> Path:
    """A small bundle: an .npy, a .json in a subfolder, a .parquet and ONNX-named bytes."""
    with BundleWriter(root) as w:
        np.save(w.path("item_embeddings.npy"), EMB)
        w.path("vocab/genre.json").write_text(json.dumps({"drama": 0, "comedy": 1}))
        pq.write_table(pa.table({"item_id": ["a", "b", "c", "d"]}), w.path("items.parquet"))
        w.path("user_tower.onnx").write_bytes(b"\x08\x07not-really-onnx")
        return w.commit(
            config={"model": {"dim": 3}},
            data={"dataset": "synthetic", "counts": {"items": 4}},
            metrics=metrics if metrics is not None else {"recall@10": 0.25},
            extra={"note": "test"},
        )


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return _write(tmp_path / "bundles")


def _refused(path: Path, *fragments: str) -> None:
    with pytest.raises(BundleError) as e:
        verify_bundle(path)
    for fragment in fragments:
        assert fragment in str(e.value), (fragment, str(e.value))


def _rewrite_manifest(bundle: Path, **changes: object) -> None:
    doc = json.loads((bundle / MANIFEST).read_text())
    doc.update(changes)
    (bundle / MANIFEST).write_text(json.dumps(doc))


def test_round_trip(bundle: Path) -> None:
    m = verify_bundle(bundle)
    assert bundle.name == m.version == "v000001"
    assert m.path == bundle and m.format_version == 1 and m.created.endswith("+00:00")
    assert m.config == {"model": {"dim": 3}} and m.metrics == {"recall@10": 0.25}
    assert m.data["dataset"] == "synthetic" and m.extra == {"note": "test"}
    paths = [f.path for f in m.files]
    assert paths == ["item_embeddings.npy", "items.parquet", "user_tower.onnx", "vocab/genre.json"]
    assert all(len(f.sha256) == 64 and f.size == (bundle / f.path).stat().st_size for f in m.files)
    np.testing.assert_array_equal(load_npy(bundle / "item_embeddings.npy"), EMB)
    assert load_npy(bundle / "item_embeddings.npy", mmap_mode="r").shape == (4, 3)
    assert load_json(bundle / "vocab/genre.json") == {"drama": 0, "comedy": 1}
    assert pq.read_table(bundle / "items.parquet").column("item_id").to_pylist()[0] == "a"
    # no staging left; the erasure lock (bundle.format.erasure_lock) stays beside the versions
    assert sorted(p.name for p in bundle.parent.iterdir()) == [".erasure.lock", "v000001"]


def test_versions_increment_and_latest_is_highest(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    assert latest_bundle(root) is None
    first, second = _write(root), _write(root)
    assert (first.name, second.name) == ("v000001", "v000002")
    (root / "v000007").mkdir()  # a name taken but never committed: skipped, not loaded
    assert latest_bundle(root) == second
    assert _write(root).name == "v000008"


def test_version_taken_concurrently_takes_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tailored.bundle.format as bundle_module

    root = tmp_path / "bundles"
    _write(root)
    monkeypatch.setattr(bundle_module, "_versions", lambda root: {})  # as if v000001 were new
    second = _write(root)
    assert second.name == "v000002" and verify_bundle(second).version == "v000002"


def test_failure_inside_with_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    with pytest.raises(RuntimeError), BundleWriter(root) as w:
        np.save(w.path("item_embeddings.npy"), EMB)
        raise RuntimeError("export failed")
    with BundleWriter(root) as w:
        w.path("a.json").write_text("{}")  # commit never called
    assert list(root.iterdir()) == []
    assert latest_bundle(root) is None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("x.pkl", "disallowed suffix"),
        ("model.pt", "disallowed suffix"),
        ("../x.json", "relative path inside"),
        ("/tmp/x.json", "relative path inside"),
        (MANIFEST, "written by the bundle"),
    ],
)
def test_writer_refuses_bad_names(tmp_path: Path, name: str, message: str) -> None:
    with BundleWriter(tmp_path) as w, pytest.raises(BundleError, match=message):
        w.path(name)


def test_writer_refuses_non_json_metadata(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "b") as w, pytest.raises(BundleError, match="plain JSON"):
        w.commit(metrics={"loss": float("nan")})
    assert list((tmp_path / "b").iterdir()) == []


def test_missing_file(bundle: Path) -> None:
    (bundle / "items.parquet").unlink()
    _refused(bundle, "missing", "items.parquet")


def test_extra_file(bundle: Path) -> None:
    (bundle / "vocab" / "new.json").write_text("{}")
    _refused(bundle, "not listed", "vocab/new.json")


def test_altered_byte_same_size(bundle: Path) -> None:
    f = bundle / "user_tower.onnx"
    data = bytearray(f.read_bytes())
    data[3] ^= 0xFF
    f.write_bytes(bytes(data))
    _refused(bundle, "sha256", "user_tower.onnx")


def test_truncated_file(bundle: Path) -> None:
    f = bundle / "item_embeddings.npy"
    f.write_bytes(f.read_bytes()[:-4])
    _refused(bundle, "size", "item_embeddings.npy")


def test_disallowed_suffix_on_disk(bundle: Path) -> None:
    (bundle / "evil.pkl").write_bytes(b"\x80\x04.")
    _refused(bundle, "disallowed suffix", "evil.pkl")


def test_symlink(bundle: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    (bundle / "vocab" / "genre.json").unlink()
    os.symlink(target, bundle / "vocab" / "genre.json")
    _refused(bundle, "symbolic link", "vocab/genre.json")


def test_missing_manifest(bundle: Path) -> None:
    (bundle / MANIFEST).unlink()
    _refused(bundle, "no manifest")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": 99}, "unknown format_version 99"),
        ({"format_version": True}, "'format_version' must be"),
        ({"metrics": [1, 2]}, "'metrics' must be"),
        ({"created": "yesterday"}, "ISO 8601"),
        ({"files": [{"path": "a.json", "size": -1, "sha256": "0" * 64}]}, "files[0]"),
        ({"files": [{"path": "../x.json", "size": 2, "sha256": "0" * 64}]}, "relative path"),
    ],
)
def test_malformed_manifest(bundle: Path, changes: dict[str, object], message: str) -> None:
    _rewrite_manifest(bundle, **changes)
    _refused(bundle, "manifest", message)


def test_manifest_not_json(bundle: Path) -> None:
    (bundle / MANIFEST).write_text("{not json")
    _refused(bundle, "malformed manifest", "not JSON")


def test_resolve_bundle(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    _write(root)
    second = _write(root)
    assert resolve_bundle(root) == second
    assert resolve_bundle(root / "v000001") == root / "v000001"
    with pytest.raises(BundleError, match="neither a bundle"):
        resolve_bundle(tmp_path)
    with pytest.raises(BundleError, match="no such"):
        resolve_bundle(tmp_path / "absent")


def test_load_npy_refuses_pickles(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(BundleError, match="without pickles"):
        load_npy(tmp_path / "obj.npy")


def test_cli_verify(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bundle", "verify", str(bundle.parent)]) == 0
    out = capsys.readouterr().out
    assert "v000001 ok" in out and "4 files" in out and "recall@10: 0.2500" in out
    assert main(["bundle", "verify", "--json", str(bundle)]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v000001"
    (bundle / "evil.pkl").write_bytes(b"x")
    assert main(["bundle", "verify", str(bundle)]) == 2
    assert "evil.pkl" in capsys.readouterr().err


def test_cli_verify_subprocess_exit_codes(bundle: Path) -> None:
    run = [sys.executable, "-m", "tailored.cli", "bundle", "verify", str(bundle)]
    assert subprocess.run(run, capture_output=True, text=True).returncode == 0
    (bundle / "items.parquet").unlink()
    bad = subprocess.run(run, capture_output=True, text=True)
    assert bad.returncode == 2 and "missing" in bad.stderr


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bundle", "verify", "--help"])
    assert e.value.code == 0
    assert "usage: tailored bundle verify" in capsys.readouterr().out


def test_a_bundle_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """Bundles hold user embeddings and histories: the version directory is 0700 and every
    file 0600, like a dataset's directory."""
    with BundleWriter(tmp_path / "bundles") as w:
        np.save(w.path("users/embeddings.npy"), np.zeros((2, 3), np.float32))
        version = w.commit()
    assert stat.S_IMODE(version.stat().st_mode) == 0o700
    assert stat.S_IMODE((version / "users" / "embeddings.npy").stat().st_mode) == 0o600
