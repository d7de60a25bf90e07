"""The bundle a server is answering with, swapped atomically.

:class:`LiveBundle` verifies, loads and warms a bundle into a
:class:`~tailored.serve.recommender.Recommender` before it replaces the current one in a
single reference assignment. A request reads :attr:`LiveBundle.current` once and finishes on
that bundle even if a swap happens meanwhile; a bundle that fails to verify or load is
refused and the current one keeps serving. Optionally a thread watches a bundles directory
and loads each new committed version it finds.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

from tailored.bundle.format import BundleError, erasure_lock, latest_bundle, resolve_bundle
from tailored.bundle.runtime import LoadedBundle
from tailored.config import ServeConfig
from tailored.data.tombstones import locked
from tailored.errors import ConfigError, TailoredError
from tailored.retrieval import IndexInputError, ItemIndex
from tailored.serve.recommender import Recommender, Request

__all__ = ["LiveBundle", "apply_search_params"]

_log = logging.getLogger(__name__)


def load_recommender(path: Path, cfg: ServeConfig, exclude: Collection[str] = ()) -> Recommender:
    """Verify and load the bundle at ``path`` (a version, or a root: its latest version not in
    ``exclude``), then warm it: one request through every stage, so that the first real
    request pays no set-up."""
    if cfg.index_threads:
        import faiss

        faiss.omp_set_num_threads(cfg.index_threads)
    # a root's latest version, found while no erasure is swapping one (which hides it a moment)
    root = path if not (path / "manifest.json").is_file() else path.parent
    with locked(erasure_lock(root / "v"), shared=True):
        version = resolve_bundle(path, exclude)
    try:
        bundle = LoadedBundle.load(version, threads=cfg.onnx_threads, onnx_device=cfg.onnx_device)
    except ConfigError as e:  # what loading refuses as a setting: the ONNX device
        raise ConfigError(f"[serve] {e}") from e
    if cfg.index_search:
        apply_search_params(bundle.index, cfg.index_search)
    rec = Recommender(bundle, cfg)
    probe = str(bundle.users.ids[0]) if bundle.users is not None and len(bundle.users) else "0" * 32
    for user in (probe, "0" * 32):
        rec.recommend(
            Request(
                user=user,
                k=min(10, cfg.max_k),
                surface=cfg.surfaces[0],
                time=time.time(),
                personalized=True,
            )
        )
    # FAISS copies the index to a GPU on its first search (the warm-up's), where it can; the
    # index does not change while served, so where it searches is known from here on, and
    # Status need not ask describe() (which serializes the index) on every call
    rec.index_device = "cpu" if bundle.index.describe().get("device", "cpu") == "cpu" else "gpu"
    # (each ONNX model's provider is logged as its session starts, tailored.bundle.runtime)
    _log.info(
        "bundle %s: %s index searching on the %s",
        bundle.version,
        bundle.index.kind,
        rec.index_device.upper(),
    )
    return rec


def apply_search_params(index: ItemIndex, params: Mapping[str, int]) -> None:
    """``[serve] index_search`` on a loaded index; an error names the setting and what the
    index accepts (a bundle with an exact index has no search-time parameters)."""
    setter = getattr(index, "set_search_params", None)
    if setter is None or not getattr(index, "search_params", ()):
        raise TailoredError(
            f"[serve] index_search: the bundle's {index.kind} index has no search-time "
            f"parameters (got {dict(params)})"
        )
    try:
        setter(**params)
    except IndexInputError as e:
        raise TailoredError(f"[serve] index_search: {e}") from e
    _log.info("index search parameters set to %s", dict(params))


class LiveBundle:
    """The current :class:`Recommender` and the means to replace it."""

    def __init__(
        self,
        path: Path,
        cfg: ServeConfig,
        *,
        watch_root: Path | None = None,
        reserved: frozenset[str] = frozenset(),
    ) -> None:
        """Serve ``path`` (a version, or a root: its latest not ``reserved``); ``watch_root``
        (default ``path``) is where :meth:`watch` and a reload without a path look for
        versions."""
        self.cfg = cfg
        self.source = Path(watch_root if watch_root is not None else path)
        self.current = load_recommender(Path(path), cfg, reserved)
        self.reloads = 0
        self.failed_reloads = 0
        self._lock = threading.Lock()  # one load at a time; requests never take it
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        # versions an experiment serves to a variant, or that lost one: neither the watcher
        # nor a reload without a path makes them everyone's bundle (promoting one does)
        self.reserved = reserved
        # refused versions, with what their files looked like then (tried again if that changes)
        self._refused: dict[Path, tuple[int, int]] = {}
        # called with the new version after every swap, whoever asked for it (the metrics)
        self.on_swap: Callable[[str], None] = lambda version: None

    @property
    def version(self) -> str:
        return self.current.bundle.version

    def reload(self, path: Path | None = None) -> tuple[str, str, float, Path]:
        """Load ``path`` (default: the latest under the source) and swap it in; returns
        (new version, previous version, seconds, the loaded version's directory). Raises
        TailoredError and keeps the current bundle when the new one is bad."""
        with self._lock:
            start = time.perf_counter()
            previous = self.version
            source = Path(path) if path else self.source
            try:
                rec = load_recommender(source, self.cfg, () if path else self.reserved)
            except Exception as e:  # whatever a bundle holds, the current one keeps serving
                self.failed_reloads += 1
                _log.warning("bundle refused, still serving %s: %s", previous, e)
                if isinstance(e, TailoredError | OSError | ValueError):
                    raise
                raise BundleError(
                    f"{source}: cannot be loaded ({type(e).__name__}: {e}); rebuild it"
                ) from e
            self.current = rec  # the swap: one reference assignment
            self.reloads += 1
            seconds = time.perf_counter() - start
            _log.info("bundle %s -> %s in %.2f s", previous, rec.bundle.version, seconds)
            self.on_swap(rec.bundle.version)
            return rec.bundle.version, previous, seconds, rec.bundle.manifest.path

    def watch(self, interval: float) -> None:
        """Poll the source directory every ``interval`` seconds; load new versions."""
        if interval <= 0 or self._watcher is not None:
            return
        self._watcher = threading.Thread(
            target=self._watch_loop, args=(interval,), name="bundle-watcher", daemon=True
        )
        self._watcher.start()

    def _watch_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self._check_for_new()
            except Exception:  # the watcher outlives anything a bundles directory holds
                _log.exception("bundle watcher: checking %s failed; trying again", self.source)

    def _check_for_new(self) -> None:
        latest = latest_bundle(self.source, self.reserved) if self.source.is_dir() else None
        current = self.current.bundle.manifest.path
        if latest is None or latest == current:
            return
        if latest.name < current.name and current.parent == latest.parent:
            return  # never go back to an older version
        seen = _files_signature(latest)
        if self._refused.get(latest) == seen:
            return  # refused as it is; a copy still being written changes, and is tried again
        try:
            self.reload(latest)
        except (TailoredError, OSError, ValueError):
            self._refused[latest] = seen  # logged by reload

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)


def _files_signature(path: Path) -> tuple[int, int]:
    """How many files a bundle directory holds and the newest modification (ns): what
    changes while someone is still copying it in."""
    count, newest = 0, 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime_ns)
            except OSError:
                continue
            count += 1
    return count, newest
