"""Erasure and retention in the bundles a server loads: a user's rows (their embedding,
pseudonym, profile, history, items seen, exposures and segment) removed from every version
under a root, or the history and exposure entries from before a time.

Each version is rewritten beside itself and swapped in (:func:`tailored.data.forget.swap_dir`:
the version is the old files or the new, never half of each) and resealed: the manifest
hashes the rewritten files again and counts the users erased in ``extra.erased_users``. The
version keeps its name, so experiments that name it still find it. One erasure at a time per
root, between processes too (a lock file in the root). A server that has the version loaded
keeps its copy in memory until its next swap, but serves an erased user as a new one from the
moment the online state holds their tombstone. What the model learned from a user (the
weights, the item-side statistics) is not a row that can be removed: the user is left out of
every later training run (:mod:`tailored.data.tombstones`), and the next bundle no longer
holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tailored.bundle.format import (
    BUNDLE_FILES,
    MANIFEST,
    bundle_versions,
    erasure_lock,
    load_json,
    reseal,
)
from tailored.bundle.per_user import PerUser
from tailored.data.features import user_hash_buckets
from tailored.data.forget import RekeyError, recover_dir, swap_dir
from tailored.data.pseudonym import KeyMap
from tailored.data.tombstones import as_mask, locked, tombstoned

__all__ = ["BundleStore"]

# each user's recent events with their times (tailored.bundle.per_user), which retention
# trims, by what the count of entries removed is called
_TIMED = {"history_entries": "history", "exposure_entries": "exposures"}

# one row per user, in the order of users/users.parquet
_PER_USER = (
    "user_embeddings",
    "user_categorical",
    "user_numeric",
    "user_segments",
    "user_id_buckets",
)


class BundleStore:
    """The bundles under ``root`` (every version; or ``root`` itself when it is one version)
    as a store of user data (:class:`tailored.privacy.erasure.Forgettable` and ``Retains``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        one = (self.root / MANIFEST).is_file()
        self._lock = erasure_lock(self.root if one else self.root / "v")

    @property
    def store(self) -> str:
        return f"bundles {self.root}"

    def versions(self) -> list[Path]:
        if (self.root / MANIFEST).is_file():
            recover_dir(self.root)
            return [self.root]
        for staged in self.root.glob(".v*.*"):  # a swap a crash interrupted
            name = staged.name.removeprefix(".").rsplit(".", 1)[0]
            recover_dir(self.root / name)
        return bundle_versions(self.root)

    def forget(self, user: str) -> dict[str, int]:
        """Remove ``user`` (a pseudonym) from every version."""
        return self.forget_many([user])[user]

    def forget_many(self, users: Collection[str]) -> dict[str, dict[str, int]]:
        """Remove each of ``users`` (pseudonyms) from every version, one rewrite per version
        for all of them; per user, the versions they were removed from."""
        wanted = pa.array(sorted(set(users)), pa.string())
        out = {u: {"user_rows": 0} for u in users}
        with locked(self._lock):
            for version in self.versions():
                ids = _ids(version)
                if ids is None:
                    continue
                gone = as_mask(pc.is_in(ids, value_set=wanted))
                if gone.any():
                    for u in ids.filter(pa.array(gone)).to_pylist():
                        out[u]["user_rows"] += 1
                    _rewrite(version, ~gone)
        return out

    def forget_tombstoned(self, stones: frozenset[str]) -> dict[str, int]:
        """Remove the rows of every user whose tombstone is in ``stones`` (a sweep after a
        crash, or of a bundle copied in from before an erasure); how many rows and versions."""
        rows = versions = 0
        with locked(self._lock):
            for version in self.versions():
                ids = _ids(version)
                if ids is None:
                    continue
                gone = tombstoned(ids, stones)
                if gone.any():
                    _rewrite(version, ~gone)
                    rows += int(gone.sum())
                    versions += 1
        return {"user_rows": rows, "versions": versions}

    def export(self, user: str) -> dict[str, Any]:
        """What each version holds of ``user`` (``tailored.privacy.export.Exportable``): the
        recent items a request starts from, the items they engaged with, what they were
        shown recently (where the bundle keeps it), their segment."""
        with locked(self._lock, shared=True):
            found = (_export(p, user) for p in bundle_versions(self.root))
            return {"versions": [v for v in found if v is not None]}

    def key_fingerprint(self) -> str | None:
        """The key fingerprint of the versions' user ids: one for all, or None for none."""
        with locked(self._lock, shared=True):
            prints = {_fingerprint(v) for v in bundle_versions(self.root) if _ids(v) is not None}
        if len(prints) > 1:
            return f"mixed: {', '.join(sorted(p or 'unknown' for p in prints))}"
        return next(iter(prints), None)

    def rekey(self, keys: KeyMap) -> dict[str, int]:
        """Move every version's users to the new key: their ids mapped, the fingerprint in the
        manifest changed, and the id bucket each user was trained with kept
        (``users/id_buckets.npy``: the new pseudonym hashes elsewhere), one swap per version;
        versions already under the new key are left as they are."""
        users = unmapped = versions = 0
        with locked(self._lock):
            for version in self.versions():
                ids = _ids(version)
                now = _fingerprint(version)
                if ids is None or now == keys.new_fingerprint:
                    continue
                if now not in (keys.old_fingerprint, None):
                    raise RekeyError(
                        f"{version}: written with key {now}, neither the old key "
                        f"({keys.old_fingerprint}) nor the new ({keys.new_fingerprint})"
                    )
                mapped, missing = keys.apply(ids)
                users += len(ids) - missing
                unmapped += missing
                versions += 1

                def write(new: Path, ids: pa.Array = ids, mapped: pa.Array = mapped) -> None:
                    changed = [
                        _replace(
                            new,
                            "user_ids",
                            lambda p: pq.write_table(pa.table({"user_id": mapped}), p),
                        )
                    ]
                    if not (new / BUNDLE_FILES["user_id_buckets"]).is_file():
                        n = int(load_json(new / BUNDLE_FILES["model"]).get("user_id_buckets", 0))
                        old = user_hash_buckets(ids.to_numpy(zero_copy_only=False), n)
                        path = new / BUNDLE_FILES["user_id_buckets"]
                        np.save(path, old, allow_pickle=False)
                        changed.append(BUNDLE_FILES["user_id_buckets"])
                    reseal(
                        new,
                        {"rekeyed_from": keys.old_fingerprint},
                        changed,
                        data={"key_fingerprint": keys.new_fingerprint},
                    )

                swap_dir(version, write)
        return {"users": users, "unmapped_users": unmapped, "versions": versions}

    def purge(self, before_ms: int) -> dict[str, int]:
        """Drop every history and exposure entry from before ``before_ms`` (unix ms) from each
        version's users' recent events (``users/history*.npy``, what a request uses as the
        user's recent items, and ``users/exposure*.npy``, what they were shown). The items a
        user has seen (``users/seen_*``) carry no time; they are what the bundle's training
        data held, and go when a bundle built after the limit replaces this one."""
        counts = dict.fromkeys(_TIMED, 0)
        versions = 0
        with locked(self._lock):
            for version in self.versions():
                trimmed: dict[str, np.ndarray] = {}
                for what, group in _TIMED.items():
                    events = PerUser.load(version, group)
                    if events is None:
                        continue
                    old = events.times.astype(np.int64) * 1000 < before_ms  # s vs ms
                    if old.any():
                        counts[what] += int(old.sum())
                        trimmed |= events.entries(~old).arrays(group)
                if not trimmed:
                    continue
                versions += 1

                def write(new: Path, trimmed: dict[str, np.ndarray] = trimmed) -> None:
                    changed = [_save(new, name, arr) for name, arr in trimmed.items()]
                    reseal(new, {"retention_before_ms": int(before_ms)}, changed)

                swap_dir(version, write)
        return {**counts, "versions": versions}


def _export(version: Path, user: str) -> dict[str, Any] | None:
    ids = _ids(version)
    if ids is None:
        return None
    rows = np.flatnonzero(as_mask(pc.equal(ids, user)))
    if not len(rows):
        return None
    row = int(rows[0])
    item_ids = pq.read_table(version / BUNDLE_FILES["items"], columns=["item_id"])
    items = item_ids.column("item_id").to_pylist()  # bundle row r + 1 is items[r]
    out: dict[str, Any] = {
        "version": version.name,
        "recent_items": _recent(version, "history", row, items),
    }
    if (version / BUNDLE_FILES["user_exposures"]).is_file():
        out["recent_exposures"] = _recent(version, "exposures", row, items)
    if (version / BUNDLE_FILES["user_seen_offsets"]).is_file():
        offsets = np.load(version / BUNDLE_FILES["user_seen_offsets"], mmap_mode="r")
        seen = np.load(version / BUNDLE_FILES["user_seen_items"], mmap_mode="r")
        out["items_engaged"] = [items[int(i) - 1] for i in seen[offsets[row] : offsets[row + 1]]]
    if (version / BUNDLE_FILES["user_segments"]).is_file():
        seg = int(np.load(version / BUNDLE_FILES["user_segments"], mmap_mode="r")[row])
        described = load_json(version / BUNDLE_FILES["segments"]).get("segments", [])
        found: dict[str, Any] = next((d for d in described if d.get("segment") == seg), {})
        out["segment"] = {"segment": seg, "summary": found.get("summary", "")}
    return out


def _recent(version: Path, group: str, row: int, item_ids: list[str]) -> list[dict[str, Any]]:
    """The user at ``row``'s recent events of ``group`` (:data:`_TIMED`), oldest first: item
    id and time (unix s)."""
    events = PerUser.load(version, group, mmap=True)
    if events is None:
        return []
    got, times = events.of(row)
    return [
        {"item_id": item_ids[int(i) - 1], "time": int(t)}
        for i, t in zip(got.tolist(), times.tolist(), strict=True)
    ]


def _fingerprint(version: Path) -> str | None:
    return load_json(version / MANIFEST).get("data", {}).get("key_fingerprint") or None


def _ids(version: Path) -> pa.Array | None:
    path = version / BUNDLE_FILES["user_ids"]
    if not path.is_file():
        return None
    return pq.read_table(path).column("user_id").combine_chunks()


def _rewrite(version: Path, keep: np.ndarray) -> None:
    def write(new: Path) -> None:
        ids = pq.read_table(new / BUNDLE_FILES["user_ids"])
        changed = [
            _replace(new, "user_ids", lambda p: pq.write_table(ids.filter(pa.array(keep)), p))
        ]
        for name in _PER_USER:
            if (new / BUNDLE_FILES[name]).is_file():
                arr = np.load(new / BUNDLE_FILES[name], allow_pickle=False)
                changed.append(_save(new, name, arr[keep]))
        for group in _TIMED.values():
            events = PerUser.load(new, group)
            if events is not None:
                changed += [_save(new, k, a) for k, a in events.users(keep).arrays(group).items()]
        if (new / BUNDLE_FILES["user_seen_offsets"]).is_file():
            offsets = np.load(new / BUNDLE_FILES["user_seen_offsets"], allow_pickle=False)
            items = np.load(new / BUNDLE_FILES["user_seen_items"], allow_pickle=False)
            lengths = np.diff(offsets)
            changed.append(_save(new, "user_seen_items", items[np.repeat(keep, lengths)]))
            kept = np.r_[0, np.cumsum(lengths[keep])].astype(offsets.dtype)
            changed.append(_save(new, "user_seen_offsets", kept))
        before = int(load_json(new / MANIFEST).get("extra", {}).get("erased_users", 0))
        reseal(new, {"erased_users": before + int((~keep).sum())}, changed)

    swap_dir(version, write)


def _replace(root: Path, name: str, write: Callable[[Path], None]) -> str:
    """Write bundle file ``name`` as a new file (until then a hard link to the old version's:
    never written through); its path relative to the bundle."""
    path = root / BUNDLE_FILES[name]
    path.unlink(missing_ok=True)  # a file the older layout lacks (the offsets) is new
    write(path)
    return BUNDLE_FILES[name]


def _save(root: Path, name: str, array: np.ndarray) -> str:
    return _replace(
        root, name, lambda p: np.save(p, np.ascontiguousarray(array), allow_pickle=False)
    )
