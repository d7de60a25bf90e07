"""The bundle: one versioned directory with everything ``serve`` needs, checked before use.

``ROOT/v000001/``, ``ROOT/v000002/``... each hold the files (ONNX, Parquet, ``.npy``, FAISS,
JSON vocabularies) and ``manifest.json``: format and bundle version, creation time (UTC),
config, data snapshot, metrics, extra, and path, size (bytes) and sha256 of every file. A
writer works in a hidden ``ROOT/.staging-<uuid>/`` and publishes with one rename. Nothing in
a bundle may execute code when loaded: only :data:`ALLOWED_SUFFIXES` (no pickles).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from tailored.errors import TailoredError

__all__ = [
    "ALLOWED_SUFFIXES",
    "BUNDLE_FILES",
    "COHORT_FILES",
    "FORMAT_VERSION",
    "MANIFEST",
    "BundleError",
    "BundleWriter",
    "FileEntry",
    "Manifest",
    "bundle_versions",
    "erasure_lock",
    "latest_bundle",
    "load_json",
    "load_npy",
    "reseal",
    "resolve_bundle",
    "verify_bundle",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_SAFE = (".onnx", ".npy", ".parquet", ".json", ".faiss", ".safetensors", ".txt")
ALLOWED_SUFFIXES = frozenset(_SAFE)  # formats whose loaders run no code
# the bundle's layout: what each file holds is documented where it is loaded
# (tailored.bundle.runtime) and written (tailored.bundle.build); paths are relative
BUNDLE_FILES = {
    "model": "model/model.json",
    "user_tower": "model/user_tower.onnx",
    "ranker": "model/ranker.onnx",
    "weights": "model/two_tower.safetensors",
    "items": "items/items.parquet",
    "item_embeddings": "items/embeddings.npy",
    "item_history": "items/history.npy",
    "item_categorical": "items/categorical.npy",
    "item_multi": "items/multi.npy",
    "item_numeric": "items/numeric.npy",
    "item_activity": "items/activity.npy",
    "item_first_seen": "items/first_seen.npy",
    # when each item may be served (tailored.bundle.availability)
    "item_available_from": "items/available_from.npy",
    "item_available_until": "items/available_until.npy",
    "item_neighbors": "items/neighbors.npy",
    "item_neighbor_weights": "items/neighbor_weights.npy",
    "item_ease_rows": "items/ease_rows.npy",
    "item_ease_weights": "items/ease_weights.npy",
    "context_popular": "items/context_popular.npy",
    "context_popular_counts": "items/context_popular_counts.npy",
    "index": "index",
    "user_embeddings": "users/embeddings.npy",
    "user_ids": "users/users.parquet",
    "user_categorical": "users/categorical.npy",
    "user_numeric": "users/numeric.npy",
    # each user's most recent positives, ragged (tailored.bundle.per_user)
    "user_history_offsets": "users/history_offsets.npy",
    "user_history": "users/history.npy",
    "user_history_times": "users/history_times.npy",
    # each user's most recent exposures (impressions), for the ranker's shown_before; only
    # from data with exposure events
    "user_exposure_offsets": "users/exposure_offsets.npy",
    "user_exposures": "users/exposures.npy",
    "user_exposure_times": "users/exposure_times.npy",
    "user_seen_offsets": "users/seen_offsets.npy",
    "user_seen_items": "users/seen_items.npy",
    # the hashed id bucket each user was trained with, written when the users were re-keyed
    # (their new pseudonyms hash elsewhere)
    "user_id_buckets": "users/id_buckets.npy",
    # how many users of each cohort engaged with each item ([ranker] cohort_fields; only
    # where it names fields): CohortCounts's arrays
    "cohort_columns": "cohorts/columns.npy",
    "cohort_ids": "cohorts/cohorts.npy",
    "cohort_offsets": "cohorts/offsets.npy",
    "cohort_items": "cohorts/items.npy",
    "cohort_counts": "cohorts/counts.npy",
    "cohort_totals": "cohorts/totals.npy",
    "cohort_item_totals": "cohorts/item_totals.npy",
    "user_segments": "users/segments.npy",
    "segment_centroids": "segments/centroids.npy",
    "segments": "segments/segments.json",
}
# the cohort files, each with the CohortCounts attribute it holds
COHORT_FILES = {
    "cohort_columns": "columns",
    "cohort_ids": "cohorts",
    "cohort_offsets": "offsets",
    "cohort_items": "items",
    "cohort_counts": "counts",
    "cohort_totals": "totals",
    "cohort_item_totals": "item_totals",
}
_VERSION = re.compile(r"v(\d{6,})")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_OBJECTS = ("config", "data", "metrics", "extra")
_FIELDS: dict[str, type] = {"format_version": int, "version": str, "created": str}
_FIELDS |= {**dict.fromkeys(_OBJECTS, dict), "files": list}


class BundleError(TailoredError):
    """A bundle is missing, malformed or differs from its manifest; the message names the file."""


@dataclass(frozen=True)
class FileEntry:
    """One file of a bundle: path relative to the bundle (POSIX), size in bytes, sha256 hex."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A verified bundle's ``manifest.json``; ``path`` is the bundle (version) directory."""

    path: Path
    format_version: int
    version: str
    created: str  # UTC, ISO 8601
    config: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, Any]
    extra: dict[str, Any]
    files: tuple[FileEntry, ...]

    def to_json(self) -> dict[str, Any]:
        """The manifest as written to disk, plus ``path``."""
        return {**asdict(self), "path": str(self.path)}


def _check_name(name: str, where: str) -> str:
    """A safe relative POSIX path with an allowed suffix, or :class:`BundleError`."""
    p = PurePosixPath(name)
    if not name or "\\" in name or p.is_absolute() or any(s in ("..", ".") for s in p.parts):
        raise BundleError(f"{where}: {name!r} must be a relative path inside the bundle")
    if p.suffix not in ALLOWED_SUFFIXES:
        allowed = ", ".join(sorted(ALLOWED_SUFFIXES))
        raise BundleError(
            f"{where}: {name!r} has a disallowed suffix (no pickles or code); use one of {allowed}"
        )
    if name == MANIFEST:
        raise BundleError(f"{where}: {MANIFEST!r} is written by the bundle itself")
    return p.as_posix()


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # reads in chunks


def _scan(directory: Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``directory``, the manifest excluded;
    symbolic links and special files are refused."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        for name in [*dirnames, *filenames]:
            full = Path(dirpath, name)
            rel = full.relative_to(directory).as_posix()
            if full.is_symlink():
                raise BundleError(f"{directory}: {rel} is a symbolic link; bundles hold real files")
            if name in filenames and not full.is_file():
                raise BundleError(f"{directory}: {rel} is not a regular file")
            if name in filenames and rel != MANIFEST:
                found.append(_check_name(rel, str(directory)))
    return sorted(found)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def erasure_lock(version: Path) -> Path:
    """The lock file an erasure holds while it rewrites a version in place (exclusive) and a
    loader while it verifies and reads one (shared), so that no loader reads half of each:
    one per bundles root (the version's folder)."""
    return Path(version).parent / ".erasure.lock"


def bundle_versions(root: Path) -> list[Path]:
    """Every committed version directory under ``root`` (one with a manifest), oldest first."""
    return [p for _, p in sorted(_versions(Path(root)).items()) if (p / MANIFEST).is_file()]


def _versions(root: Path) -> dict[int, Path]:
    if not root.is_dir():
        return {}
    return {int(m[1]): p for p in root.iterdir() if (m := _VERSION.fullmatch(p.name))}


class BundleWriter:
    """Writes a new bundle version under ``root``: all or nothing.

    Files go into a hidden staging directory (see :meth:`path`); :meth:`commit` hashes them,
    writes the manifest and renames the directory to ``root/vNNNNNN``. If the ``with`` block
    raises, or ``commit`` is never called, the staging directory is removed.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.staging = self.root / f".staging-{uuid.uuid4().hex}"

    def __enter__(self) -> BundleWriter:
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(mode=0o700)  # user data inside: this account's only
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)  # gone already after a commit

    def path(self, name: str) -> Path:
        """Where to write the bundle file ``name`` (relative, e.g. ``vocab/genre.json``);
        parent folders are created."""
        if not self.staging.is_dir():  # not entered, or committed
            raise BundleError("BundleWriter.path: use it inside `with BundleWriter(root) as w:`")
        out = self.staging / _check_name(name, "BundleWriter.path")
        out.parent.mkdir(parents=True, exist_ok=True)
        return out

    def commit(
        self,
        *,
        config: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Hash and fsync every file, write the manifest, publish and return ``root/vNNNNNN``."""
        if not self.staging.is_dir():
            raise BundleError("BundleWriter.commit: commit once, inside the `with` block")
        files = []
        for rel in _scan(self.staging):
            full = self.staging / rel
            full.chmod(0o600)  # user embeddings and histories: this account's only
            _fsync(full)
            files.append({"path": rel, "size": full.stat().st_size, "sha256": _sha256(full)})
        objects = dict(zip(_OBJECTS, (config, data, metrics, extra), strict=True))
        if wrong := [k for k, v in objects.items() if not isinstance(v, dict | None)]:
            raise BundleError(f"BundleWriter.commit: {', '.join(wrong)} must be dicts")
        doc: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "version": "",
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **{k: v or {} for k, v in objects.items()},
            "files": files,
        }
        n = max(_versions(self.root), default=0) + 1
        while True:  # another writer may publish the same number first: take the next one
            doc["version"] = f"v{n:06d}"
            self._write_manifest(doc)
            target = self.root / doc["version"]
            try:
                os.rename(self.staging, target)  # atomic; fails if target holds a bundle
                break
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                n += 1
        # the lock an erasure rewriting a version takes, and a loader shares (a loader that
        # finds none goes on without it)
        os.close(os.open(erasure_lock(target), os.O_CREAT | os.O_RDWR, 0o600))
        _fsync(self.root)
        return target

    def _write_manifest(self, doc: dict[str, Any]) -> None:
        try:
            text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"
        except (TypeError, ValueError) as e:
            msg = "config, data, metrics and extra must be plain JSON (lists, not arrays; no NaN)"
            raise BundleError(f"BundleWriter.commit: {msg}: {e}") from e
        tmp = self.staging / f".{MANIFEST}.tmp"
        with tmp.open("w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.staging / MANIFEST)
        _fsync(self.staging)


def reseal(
    directory: Path,
    extra: dict[str, Any],
    changed: Collection[str],
    *,
    data: dict[str, Any] | None = None,
) -> None:
    """Rewrite the manifest of bundle ``directory`` after the files ``changed`` (paths
    relative to it) were rewritten on purpose (an erasure, a re-keying): those are hashed
    again, the others keep their entries; ``extra`` and ``data`` are updated with what is
    given; version, creation time, configuration and metrics stay. For a copy of a version
    before it is published again; the manifest is written beside and renamed."""
    mpath = directory / MANIFEST
    doc = json.loads(mpath.read_text())
    entries = {f["path"]: f for f in doc["files"]}
    for rel in changed:
        full = directory / _check_name(rel, str(directory))
        _fsync(full)
        entries[rel] = {"path": rel, "size": full.stat().st_size, "sha256": _sha256(full)}
    doc["files"] = [entries[k] for k in sorted(entries)]
    doc["extra"] = {**doc.get("extra", {}), **extra}
    doc["data"] = {**doc.get("data", {}), **(data or {})}
    text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"
    tmp = directory / f".{MANIFEST}.tmp"
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, mpath)
    _fsync(directory)


def _parse_manifest(doc: Any, where: str, directory: Path) -> Manifest:
    def bad(what: str) -> BundleError:
        return BundleError(f"{where}: malformed manifest: {what}; rebuild the bundle")

    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    for key, kind in _FIELDS.items():
        if type(doc.get(key)) is not kind:  # `is`, not isinstance: a bool is no int
            raise bad(f"{key!r} must be a JSON {kind.__name__}")
    if doc["format_version"] != FORMAT_VERSION:
        raise bad(f"unknown format_version {doc['format_version']} (expected {FORMAT_VERSION})")
    try:
        datetime.fromisoformat(doc["created"])
    except ValueError as err:
        raise bad(f"'created' is not an ISO 8601 time: {doc['created']!r}") from err
    entries = []
    for i, e in enumerate(doc["files"]):
        ok = isinstance(e, dict) and isinstance(e.get("path"), str)
        ok = ok and type(e.get("size")) is int and e["size"] >= 0
        if not (ok and _SHA256.fullmatch(str(e.get("sha256")))):
            raise bad(f"files[{i}] needs path (string), size (int >= 0), sha256 (64 hex digits)")
        entries.append(FileEntry(_check_name(e["path"], where), e["size"], e["sha256"]))
    if len({e.path for e in entries}) != len(entries):
        raise bad("a file is listed twice")
    fields = {k: doc[k] for k in _FIELDS if k != "files"}
    return Manifest(path=directory, files=tuple(entries), **fields)


def verify_bundle(path: str | Path) -> Manifest:
    """Check a bundle (version) directory against its manifest and return the manifest.

    Refuses, with :class:`BundleError`, a missing or malformed manifest, a listed file that
    is missing, a file that is not listed, a size or sha256 mismatch, a disallowed suffix
    and symbolic links.
    """
    directory = Path(path)
    mpath = directory / MANIFEST
    if mpath.is_symlink() or not mpath.is_file():
        raise BundleError(f"{mpath}: no manifest; not a bundle, or one not finished writing")
    try:
        doc = json.loads(mpath.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{mpath}: malformed manifest, not JSON ({err}); rebuild it") from err
    manifest = _parse_manifest(doc, str(mpath), directory)
    on_disk = set(_scan(directory))
    listed = {f.path for f in manifest.files}
    if missing := sorted(listed - on_disk):
        raise BundleError(f"{directory}: listed in the manifest but missing: {', '.join(missing)}")
    if unlisted := sorted(on_disk - listed):
        raise BundleError(
            f"{directory}: not listed in the manifest: {', '.join(unlisted)}; "
            "remove them or rebuild the bundle"
        )
    for f in manifest.files:
        size = (directory / f.path).stat().st_size
        if size != f.size:
            raise BundleError(f"{directory / f.path}: size {size} bytes, manifest says {f.size}")
    for f in manifest.files:
        if _sha256(directory / f.path) != f.sha256:
            raise BundleError(f"{directory / f.path}: sha256 differs from the manifest (altered)")
    return manifest


def latest_bundle(root: str | Path, exclude: Collection[str] = ()) -> Path | None:
    """The highest committed version directory (one with a manifest) under ``root``, leaving
    out the version names in ``exclude``, or None."""
    done = {
        n: p
        for n, p in _versions(Path(root)).items()
        if p.name not in exclude and (p / MANIFEST).is_file()
    }
    return done[max(done)] if done else None


def resolve_bundle(path: str | Path, exclude: Collection[str] = ()) -> Path:
    """A version directory as is, or the latest version under a bundle root (leaving out the
    version names in ``exclude``: a running experiment's candidates, say)."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return p
    if not p.is_dir():
        raise BundleError(f"{p}: no such bundle directory")
    latest = latest_bundle(p, exclude)
    if latest is None:
        also = f", other than {sorted(exclude)}" if exclude else ""
        raise BundleError(
            f"{p}: neither a bundle (no {MANIFEST}) nor a root holding committed versions "
            f"(vNNNNNN/){also}; build one first"
        )
    return latest


def load_npy(path: str | Path, *, mmap_mode: Literal["r", "c"] | None = None) -> np.ndarray:
    """An array from a ``.npy`` file; pickled objects are refused. ``mmap_mode="r"`` maps the
    file instead of reading it (for large embedding tables)."""
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode=mmap_mode)
    except (ValueError, OSError) as e:
        raise BundleError(f"{path}: not a loadable .npy array without pickles: {e}") from e
    if not isinstance(arr, np.ndarray):
        raise BundleError(f"{path}: expected one array (.npy), found an archive")
    return arr


def load_json(path: str | Path) -> Any:
    """A JSON document from a bundle file."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not readable JSON: {e}") from e
