"""A bundle whose hashes match its manifest but whose contents disagree is refused at load,
with the file named; the watcher outlives any bundle dropped into its directory and still
picks up a good one; ReloadBundle answers FAILED_PRECONDITION, never INTERNAL."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from tailored.bundle.format import BundleError, latest_bundle
from tailored.bundle.runtime import LoadedBundle
from tailored.config import load_serve_config
from tailored.data.pseudonym import Pseudonymizer
from tailored.serve.bundles import LiveBundle
from tailored.serve.client import Client
from tailored.serve.server import Service, create_server
from tailored.serve.sqlite_state import SQLiteState
from tests.helpers import TEST_KEY, reseal

pytestmark = pytest.mark.slow  # the session's serving bundle is trained once for all


def _version(serve_bundle: Path) -> Path:
    v = latest_bundle(serve_bundle)
    assert v is not None
    return v


def _broken(good: Path, at: Path, damage: Callable[[Path], None]) -> Path:
    """A copy of ``good`` at ``at``, damaged, with a manifest rewritten to match; made beside
    and renamed into place, as a bundle writer publishes."""
    staging = at.with_name(f".staging-{at.name}")
    shutil.copytree(good, staging)
    damage(staging)
    reseal(staging)
    staging.rename(at)
    return at


def _fewer_embeddings(b: Path) -> None:
    emb = np.load(b / "items" / "embeddings.npy")
    np.save(b / "items" / "embeddings.npy", emb[:-100])


def _nan_embedding(b: Path) -> None:
    emb = np.load(b / "items" / "embeddings.npy")
    emb[7, 3] = np.nan
    np.save(b / "items" / "embeddings.npy", emb)


def _history_out_of_range(b: Path) -> None:
    hist = np.load(b / "users" / "history.npy")
    hist[-1] = 10**6
    np.save(b / "users" / "history.npy", hist)


def _neighbors_as_floats(b: Path) -> None:
    ids = np.load(b / "items" / "neighbors.npy")
    np.save(b / "items" / "neighbors.npy", ids.astype(np.float32))


def _undamaged(b: Path) -> None:
    pass


def _garbage_ranker(b: Path) -> None:
    (b / "model" / "ranker.onnx").write_bytes(b"not an onnx graph" * 10)


@pytest.mark.parametrize(
    ("damage", "file", "what"),
    [
        (_fewer_embeddings, "items/embeddings.npy", "rows"),
        (_nan_embedding, "items/embeddings.npy", "NaN or infinite"),
        (_history_out_of_range, "users/history.npy", "outside"),
        (_neighbors_as_floats, "items/neighbors.npy", "int"),
    ],
    ids=["fewer-embeddings", "nan-embedding", "history-out-of-range", "float-neighbors"],
)
def test_an_inconsistent_bundle_is_refused_naming_the_file(
    serve_bundle: Path,
    tmp_path: Path,
    damage: Callable[[Path], None],
    file: str,
    what: str,
) -> None:
    bad = _broken(_version(serve_bundle), tmp_path / "v000002", damage)
    with pytest.raises(BundleError, match=what) as err:
        LoadedBundle.load(bad)
    assert str(bad / file) in str(err.value)


@pytest.fixture
def watched(serve_bundle: Path, tmp_path: Path) -> Iterator[tuple[Path, LiveBundle]]:
    root = tmp_path / "bundles"
    shutil.copytree(_version(serve_bundle), root / "v000001")
    live = LiveBundle(root, load_serve_config(overrides={"clock": "bundle"}))
    live.watch(0.05)
    yield root, live
    live.close()


def _until(cond: Callable[[], bool], seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _until_refused(live: LiveBundle, count: int) -> bool:
    return _until(lambda: live.failed_reloads == count)


def _serving(live: LiveBundle) -> Path:
    return live.current.bundle.manifest.path


def test_the_watcher_survives_bad_bundles_and_then_loads_a_good_one(
    watched: tuple[Path, LiveBundle],
) -> None:
    root, live = watched
    good = root / "v000001"
    damages = [_fewer_embeddings, _nan_embedding, _garbage_ranker, _history_out_of_range]
    for n, damage in enumerate(damages, start=2):
        _broken(good, root / f"v{n:06d}", damage)
        assert _until_refused(live, n - 1), f"v{n:06d} not tried"
        assert _serving(live) == good
    assert live._watcher is not None and live._watcher.is_alive()
    _broken(good, root / "v000009", _undamaged)  # a good one after them: picked up
    # a copy: its manifest still says v000001 inside, so look at where it was loaded from
    assert _until(lambda: _serving(live) == root / "v000009")
    assert live.failed_reloads == len(damages)


def test_a_bundle_still_being_copied_in_is_tried_again_once_complete(
    watched: tuple[Path, LiveBundle],
) -> None:
    """``cp -r`` into the watched directory: the watcher may find the manifest before the
    files. That refusal is not for ever: once the files change, the version is tried again."""
    root, live = watched
    good, new = root / "v000001", root / "v000002"
    new.mkdir()
    shutil.copy2(good / "manifest.json", new / "manifest.json")  # the manifest first
    assert _until(lambda: live.failed_reloads == 1)
    time.sleep(0.3)  # tried once as it is, not again
    assert live.failed_reloads == 1 and _serving(live) == good
    for part in sorted(p for p in good.iterdir() if p.name != "manifest.json"):
        if part.is_dir():
            shutil.copytree(part, new / part.name)
        else:
            shutil.copy(part, new / part.name)
    assert _until(lambda: _serving(live) == new)


def test_reload_bundle_refuses_a_broken_bundle_with_failed_precondition(
    serve_bundle: Path, tmp_path: Path
) -> None:
    good = _version(serve_bundle)
    cfg = load_serve_config(overrides={"clock": "bundle"})
    token = "test-admin-token"
    service = Service(
        LiveBundle(good, cfg),
        SQLiteState(tmp_path / "state.db"),
        Pseudonymizer(TEST_KEY),
        cfg,
        admin_token=token,
    )
    server, port = create_server("127.0.0.1:0", service)
    server.start()
    try:
        with Client(f"127.0.0.1:{port}", token=token) as client:
            for n, damage in enumerate([_garbage_ranker, _fewer_embeddings], start=2):
                bad = _broken(good, tmp_path / f"v{n:06d}", damage)
                with pytest.raises(grpc.RpcError) as err:
                    client.reload(str(bad))
                assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert str(bad) in (err.value.details() or "")
            assert client.recommend("1", 5).bundle_version == good.name
    finally:
        server.stop(None)
        service.close()
