"""A loaded bundle's models, run without torch: user tower (onnxruntime) -> index top-N ->
ranker (onnxruntime). Serving and the two-stage offline evaluation both use this class.

Items are addressed by bundle row (1-based; row r is ``item_ids[r - 1]``, 0 = none), which
is also what the index stores as ids.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tailored.bundle.availability import ItemWindows
from tailored.bundle.checks import check_loaded
from tailored.bundle.format import (
    BUNDLE_FILES,
    COHORT_FILES,
    BundleError,
    Manifest,
    erasure_lock,
    load_json,
    load_npy,
    verify_bundle,
)
from tailored.bundle.per_user import PerUser, splits_entries
from tailored.data.features import FeatureEncoder, FeatureTable
from tailored.data.ranking_features import (
    DENSE_FEATURES,
    ActivitySnapshot,
    CohortCounts,
    ItemNeighbors,
    ItemRegression,
    cohort_columns,
    popularity_penalized,
    ranker_inputs,
)
from tailored.data.tombstones import locked
from tailored.errors import ConfigError, TailoredError
from tailored.retrieval.index import Exclude, ItemIndex, load_index

__all__ = ["ContextPopular", "LoadedBundle", "SegmentModel", "UserSnapshot", "onnx_providers"]

_log = logging.getLogger(__name__)
_CUDA, _CPU = "CUDAExecutionProvider", "CPUExecutionProvider"

_USER_FILES = (
    "user_embeddings",
    "user_ids",
    "user_categorical",
    "user_numeric",
    "user_history",
    "user_history_times",
)
# the ragged layout's offsets (tailored.bundle.per_user); a bundle of the dense layout has none
_OFFSET_FILES = ("user_history_offsets", "user_exposure_offsets")


def onnx_providers(device: str = "auto") -> list[str]:
    """onnxruntime execution providers for ``device``, first choice first: "auto" CUDA where
    this onnxruntime has it (onnxruntime-gpu, the ``gpu`` extra), else the CPU; "cpu"; "cuda"
    CUDA, a :class:`ConfigError` where it is absent. The CPU comes last in every list: it
    runs what CUDA does not."""
    import onnxruntime as ort

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"onnx_device: {device!r} is not one of ['auto', 'cpu', 'cuda']")
    available = ort.get_available_providers()
    if device == "cuda" and _CUDA not in available:
        raise ConfigError(
            f'onnx_device: "cuda", but onnxruntime {ort.__version__} has no {_CUDA} (it has '
            f"{', '.join(available)}); install onnxruntime-gpu (pip install '.[gpu]') on a "
            'machine with CUDA 12, or set "auto" or "cpu"'
        )
    return [_CUDA, _CPU] if device != "cpu" and _CUDA in available else [_CPU]


def _session(path: Path, threads: int, device: str) -> Any:
    """An onnxruntime session of the model at ``path`` on ``device`` (see
    :func:`onnx_providers`); the provider it runs on is logged."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    wanted = onnx_providers(device)
    session = ort.InferenceSession(str(path), opts, providers=wanted)
    # onnxruntime-gpu lists CUDA even where it cannot start it (no GPU, no CUDA libraries),
    # then runs on the CPU: what the session reports is what it uses
    provider = session.get_providers()[0]
    if device == "cuda" and provider != _CUDA:
        raise ConfigError(
            f'onnx_device: "cuda", but onnxruntime could not start {_CUDA} for {path.name} '
            f'(it runs on {provider}; its log says why): check the GPU and CUDA 12, or set "auto" '
            'or "cpu"'
        )
    log = _log.warning if provider != wanted[0] else _log.info
    log("%s runs on %s (asked for %s)", path.name, provider, ", ".join(wanted))
    return session


@dataclass(frozen=True)
class SegmentModel:
    """The bundle's user segments: ``centroids`` float32 [k, d] (unit length), ``labels`` a
    few words naming each, ``of_user`` int32 [U] each bundle user's segment."""

    centroids: np.ndarray
    labels: tuple[str, ...]
    of_user: np.ndarray

    @classmethod
    def load(cls, root: Path) -> SegmentModel | None:
        paths = [root / BUNDLE_FILES[k] for k in ("segment_centroids", "segments", "user_segments")]
        if not all(p.exists() for p in paths):
            return None  # built with [segments] k = 0, or by an older version
        doc = load_json(paths[1])
        described = doc.get("segments") if isinstance(doc, dict) else None
        if not isinstance(described, list) or not all(isinstance(s, dict) for s in described):
            raise BundleError(f"{paths[1]}: expected an object with a 'segments' list")
        labels = tuple(str(s.get("label", f"segment {i}")) for i, s in enumerate(described))
        return cls(load_npy(paths[0]), labels, load_npy(paths[2]))

    def nearest(self, embedding: np.ndarray) -> int:
        """The segment of a user embedding [1, d] or [d] (the most similar centroid)."""
        return int(np.argmax(self.centroids @ np.asarray(embedding, np.float32).reshape(-1)))


@dataclass
class UserSnapshot:
    """What the bundle knows of its users at build time: ``ids`` str [U] pseudonyms; encoded
    profiles ``categorical`` int64 [U, C] and ``numeric`` float32 [U, F]; each user's most
    recent positives, ``history`` (bundle rows and seconds, oldest first); every item each
    user has a positive for, user u's at ``seen_items[seen_offsets[u]:seen_offsets[u + 1]]``
    (a bundle older than these two: the history stands in); each user's most recent
    exposures, ``exposures`` (None: data without exposure events, or a bundle older than
    them)."""

    ids: np.ndarray
    categorical: np.ndarray
    numeric: np.ndarray
    history: PerUser
    seen_offsets: np.ndarray | None = None
    seen_items: np.ndarray | None = None
    # the hashed id bucket each user was trained with, where the users were re-keyed since
    # (int64 [U]); else a user's bucket is their pseudonym's hash
    id_buckets: np.ndarray | None = None
    exposures: PerUser | None = None

    def __post_init__(self) -> None:
        self._rows = {str(u): i for i, u in enumerate(self.ids)}

    def row(self, pseudonym: str) -> int | None:
        """The user's row, or None for a user the bundle does not know."""
        return self._rows.get(pseudonym)

    def __len__(self) -> int:
        return len(self.ids)

    def seen(self, row: int) -> np.ndarray:
        """The bundle rows the user at ``row`` has a positive for (build time), int [S]."""
        if self.seen_offsets is None or self.seen_items is None:
            return self.history.of(row)[0]
        return self.seen_items[self.seen_offsets[row] : self.seen_offsets[row + 1]]

    def shown(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """What the user at ``row`` was shown (build time): bundle rows int32 [X] and times
        int64 [X] seconds, oldest first; empty without exposures in the bundle."""
        if self.exposures is None:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        return self.exposures.of(row)

    @classmethod
    def load(cls, root: Path) -> UserSnapshot | None:
        if not all((root / BUNDLE_FILES[k]).exists() for k in _USER_FILES):
            return None
        ids = pq.read_table(root / BUNDLE_FILES["user_ids"]).column("user_id")
        return cls(
            ids=ids.to_numpy(zero_copy_only=False),
            categorical=load_npy(root / BUNDLE_FILES["user_categorical"]),
            numeric=load_npy(root / BUNDLE_FILES["user_numeric"]),
            history=_history(root),
            **_seen(root, len(ids)),
            id_buckets=_id_buckets(root, len(ids)),
            exposures=PerUser.load(root, "exposures"),
        )


def _id_buckets(root: Path, n_users: int) -> np.ndarray | None:
    path = root / BUNDLE_FILES["user_id_buckets"]
    if not path.exists():
        return None
    buckets = load_npy(path)
    if not np.issubdtype(buckets.dtype, np.integer) or buckets.shape != (n_users,):
        raise BundleError(
            f"{path}: {buckets.dtype} {buckets.shape}, not one id bucket for each of {n_users} "
            "users"
        )
    return buckets.astype(np.int64)


def _optional_pair(root: Path, first: str, second: str) -> tuple[np.ndarray, ...] | None:
    """Two bundle files that come together (``BUNDLE_FILES`` keys): both loaded, or None
    where a bundle older than them has neither; one without the other is refused."""
    paths = [root / BUNDLE_FILES[k] for k in (first, second)]
    missing = [p for p in paths if not p.exists()]
    if len(missing) == 2:
        return None
    if missing:
        raise BundleError(f"{root}: no {missing[0].relative_to(root)} beside its pair")
    return tuple(load_npy(p) for p in paths)


def _seen(root: Path, n_users: int) -> dict[str, np.ndarray]:
    pair = _optional_pair(root, "user_seen_offsets", "user_seen_items")
    if pair is None:
        return {}
    offsets, items = pair
    if not (
        offsets.shape == (n_users + 1,)
        and np.issubdtype(items.dtype, np.integer)
        and splits_entries(offsets, items)
    ):
        raise BundleError(
            f"{root}: {BUNDLE_FILES['user_seen_offsets']} ({offsets.dtype} {offsets.shape}) and "
            f"{BUNDLE_FILES['user_seen_items']} ({items.dtype} {items.shape}) are not each of "
            f"{n_users} users' items"
        )
    return {"seen_offsets": offsets, "seen_items": items}


def _history(root: Path) -> PerUser:
    history = PerUser.load(root, "history")
    if history is None:  # UserSnapshot.load found both files
        raise BundleError(f"{root}: no {BUNDLE_FILES['user_history']}")
    return history


@dataclass(frozen=True)
class ContextPopular:
    """The items with the most positives in each context (``device = mobile``, ``surface =
    home``...), for the non-personalized result of a request that gives its context.

    ``rows``: int64 [K, V+1, T] item rows, best first, 0-padded, for the K context fields of
    ``model.json``'s ``context_vocabs`` in order and their value codes (0, unknown, empty);
    ``counts``: float32 [K, V+1, T] their positives in that context."""

    rows: np.ndarray
    counts: np.ndarray

    @classmethod
    def load(cls, root: Path) -> ContextPopular | None:
        path = root / BUNDLE_FILES["context_popular"]
        if not path.exists():  # a bundle without context fields, or of an older format
            return None
        return cls(load_npy(path), load_npy(root / BUNDLE_FILES["context_popular_counts"]))

    def top(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Items popular in the given context, codes int64 [K] (0 = not given): rows and
        scores (positives summed over the given fields), best first; ties keep the order of
        the first given field's list."""
        given = [(f, int(c)) for f, c in enumerate(codes) if 0 < c < self.rows.shape[1]]
        if not given:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        rows = np.concatenate([self.rows[f, c] for f, c in given])
        counts = np.concatenate([self.counts[f, c] for f, c in given])
        keep = rows > 0
        rows, counts = rows[keep], counts[keep]
        uniq, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
        total = np.bincount(inverse, weights=counts).astype(np.float32)
        order = np.lexsort((first, -total))
        return uniq[order].astype(np.int64), total[order]


def _dense_width(ranker: Any | None, root: Path) -> int:
    for i in ranker.get_inputs() if ranker is not None else ():
        if i.name == "dense" and len(i.shape) == 2 and isinstance(i.shape[1], int):
            if i.shape[1] > len(DENSE_FEATURES):
                raise BundleError(
                    f"{root / BUNDLE_FILES['ranker']}: reads {i.shape[1]} ranking features; "
                    f"this version of tailored computes {len(DENSE_FEATURES)} (a bundle "
                    "written by a newer version?)"
                )
            return int(i.shape[1])
    return 0


def _index(root: Path) -> ItemIndex:
    """The bundle's index; a missing or inconsistent one is a :class:`BundleError` (the
    message names the file)."""
    try:
        return load_index(root / BUNDLE_FILES["index"])
    except TailoredError as e:
        raise BundleError(f"{e}; rebuild the bundle") from e


def _regression(root: Path, n_items: int) -> ItemRegression:
    pair = _optional_pair(root, "item_ease_rows", "item_ease_weights")
    if pair is None:
        return ItemRegression.empty(n_items)
    r, w = pair
    k = w.shape[0] if w.ndim == 2 else -1
    if not (
        np.issubdtype(r.dtype, np.integer)
        and r.shape == (n_items + 1,)
        and np.issubdtype(w.dtype, np.floating)
        and w.shape == (k, k)
        and (not len(r) or (int(r.min()) >= -1 and int(r.max()) < k))
    ):
        raise BundleError(
            f"{root}: {BUNDLE_FILES['item_ease_rows']} ({r.dtype} {r.shape}) and "
            f"{BUNDLE_FILES['item_ease_weights']} ({w.dtype} {w.shape}) are not an item-item "
            f"model of {n_items} items: rows must be integers in [-1, K) for each item and "
            "row 0, weights a float K x K matrix"
        )
    if not np.isfinite(w).all():
        raise BundleError(
            f"{root / BUNDLE_FILES['item_ease_weights']}: {int((~np.isfinite(w)).sum())} "
            "values are NaN or infinite; rebuild the bundle"
        )
    return ItemRegression(r.astype(np.int64), w)


def _ranker_section(root: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The ``[ranker]`` table of the bundle's configuration (its manifest's ``config``)."""
    section = config.get("ranker") or {}
    if not isinstance(section, dict):
        raise BundleError(f"{root}: manifest.json: config.ranker is no table: {section!r}")
    return section


def _ranker_number(root: Path, config: dict[str, Any], key: str, whole: bool) -> float:
    """``[ranker] key`` of the bundle's configuration, a number >= 0 (``whole``: an integer),
    0 where the configuration has none (a bundle built before the setting)."""
    value = _ranker_section(root, config).get(key, 0)
    ok = isinstance(value, int) if whole else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not 0 <= float(value) < math.inf:
        kind = "an integer" if whole else "a number"
        raise BundleError(
            f"{root}: manifest.json: config.ranker.{key}: must be {kind} >= 0, got {value!r}"
        )
    return float(value)


def _cohorts(
    root: Path, n_items: int, users: FeatureEncoder, config: dict[str, Any]
) -> CohortCounts:
    """The bundle's cohort counts, of users encoded by ``users`` under the bundle's
    configuration ``config`` (its ``[ranker] cohorts``); a bundle built without cohorts (or
    before them) has none: every user's cohort features 0. Some of the files without the
    others, cohorts other than the configuration's, or arrays that do not fit together are
    refused."""
    paths = {key: root / BUNDLE_FILES[key] for key in COHORT_FILES}
    present = [key for key, p in paths.items() if p.exists()]
    if not present:
        return CohortCounts.empty(n_items)
    if len(present) < len(paths):
        missing = next(BUNDLE_FILES[k] for k in paths if k not in present)
        raise BundleError(f"{root}: no {missing} beside the other cohort files")
    c = CohortCounts(**{attr: load_npy(paths[key]) for key, attr in COHORT_FILES.items()})
    defs = _ranker_section(root, config).get("cohorts") or ()
    try:
        expected = cohort_columns(users, defs)
    except (ConfigError, TypeError) as e:
        raise BundleError(
            f"{root}: {BUNDLE_FILES['cohort_columns']}: the configuration's [ranker] cohorts "
            f"{defs!r} name no cohorts of this model's users: {e}"
        ) from e
    if (wrong := _cohorts_unfit(c, n_items, expected)) is not None:
        raise BundleError(f"{root}: {wrong}; rebuild the bundle")
    return c


def _cohorts_unfit(c: CohortCounts, n_items: int, columns: np.ndarray) -> str | None:
    """What is wrong with the cohort arrays, naming the file(s) (None: they fit together,
    the bundle's ``n_items`` items and the cohort ``columns`` its configuration gives)."""
    f = {attr: BUNDLE_FILES[key] for key, attr in COHORT_FILES.items()}
    arrays = {attr: getattr(c, attr) for attr in f}
    for attr in ("columns", "cohorts", "offsets", "items"):
        if not np.issubdtype(arrays[attr].dtype, np.integer):
            return f"{f[attr]}: {arrays[attr].dtype} where integers belong"
    for attr in ("counts", "totals", "item_totals"):
        a = arrays[attr]
        if not np.issubdtype(a.dtype, np.floating):
            return f"{f[attr]}: {a.dtype} where floats belong"
        if a.ndim != 1 or not np.isfinite(a).all() or (a.size and float(a.min()) < 0):
            return f"{f[attr]}: not a vector of finite numbers >= 0"
    if not np.array_equal(c.columns, columns):
        return (
            f"{f['columns']}: {c.columns.tolist()!r}, where the configuration's [ranker] "
            f"cohorts give {columns.tolist()!r} (definition, user column, codes)"
        )
    if not CohortCounts.keys_fit(columns, n_items):
        return f"{f['columns']}: more cohorts of {n_items} items than a 64-bit key holds"
    s = len(c.cohorts) if c.cohorts.ndim == 1 else -1
    if s < 0 or (s and not bool((np.diff(c.cohorts) > 0).all())):
        return f"{f['cohorts']}: not a sorted vector of distinct cohorts"
    if s and (int(c.cohorts[0]) < 0 or int(c.cohorts[-1]) >= CohortCounts.n_keys(columns)):
        return f"{f['cohorts']}: cohorts outside 0..{CohortCounts.n_keys(columns) - 1}"
    if not len(columns) and s:
        return f"{f['cohorts']}: {s} cohorts of no cohort definition"
    if c.totals.shape != (s,):
        return f"{f['totals']}: shape {c.totals.shape}, one per cohort of {f['cohorts']} ({s})"
    if c.item_totals.shape != (n_items + 1,):
        return f"{f['item_totals']}: shape {c.item_totals.shape}, one per item row belongs"
    if c.items.ndim != 1 or c.items.shape != c.counts.shape:
        return f"{f['items']} and {f['counts']}: not two vectors of one length"
    if c.offsets.shape != (s + 1,) or not splits_entries(c.offsets, c.items):
        return (
            f"{f['offsets']}: not {s + 1} offsets (one more than the cohorts of {f['cohorts']}) "
            f"cutting the {len(c.items)} items of {f['items']}"
        )
    if s and not bool((np.diff(c.offsets) > 0).all()):
        return f"{f['offsets']}: a cohort with no items in {f['items']} (a kept one has some)"
    if len(c.items) and (int(c.items.min()) < 1 or int(c.items.max()) > n_items):
        return f"{f['items']}: items outside 1..{n_items}"
    # each cohort's items sorted: no step down inside a cohort's slice
    down = np.flatnonzero(np.diff(c.items.astype(np.int64)) <= 0) + 1
    if np.isin(down, c.offsets[1:-1], invert=True).any():
        return f"{f['items']}: a cohort's items (cut by {f['offsets']}) not sorted and distinct"
    # a cohort's users are some of everyone's: its count of an item at most the item's total
    counts = c.counts.astype(np.float64)
    if (counts > c.item_totals[c.items].astype(np.float64) * (1 + 1e-6) + 1e-6).any():
        return f"{f['counts']}: a count above its item's total in {f['item_totals']}"
    per_cohort = np.repeat(np.arange(s), np.diff(c.offsets))
    sums = np.bincount(per_cohort, weights=counts, minlength=s)
    if not np.allclose(sums, c.totals, rtol=1e-5, atol=1e-3):
        return f"{f['totals']}: not the sum of each cohort's counts in {f['counts']}"
    return None


@dataclass
class LoadedBundle:
    """The serving half of a bundle (see the module doc). Build with :meth:`load`."""

    manifest: Manifest
    info: dict[str, Any]  # model/model.json
    item_ids: np.ndarray  # str [N] site ids
    item_titles: np.ndarray | None
    items: FeatureTable  # encoded metadata [N+1, ...], row 0 padding
    item_embeddings: np.ndarray  # float32 [N+1, D]
    item_history: np.ndarray  # float32 [N+1, id_dim]
    activity: ActivitySnapshot  # item counts all / 7 days / 30 days, first seen, at build time
    item_neighbors: ItemNeighbors  # co-occurrence neighbours, from every event at build time
    # the item-item model, from every event at build time (a bundle older than it: none)
    item_regression: ItemRegression
    index: ItemIndex
    user_tower: Any
    ranker: Any | None
    users: UserSnapshot | None = None  # without one, every user is new to the bundle
    # per context field and value, the items with the most positives in it (build time)
    context_popular: ContextPopular | None = None
    ranker_input_names: frozenset[str] = frozenset()  # what the ranker graph reads, once
    # how many ranking features the ranker reads: the first ones (features are only ever
    # appended, so a ranker of an older bundle reads those it was trained on); 0 = all
    ranker_dense: int = 0
    segments: SegmentModel | None = None  # k-means over the user embeddings, at build
    # when each item may be served (an older bundle: none, every item always)
    windows: ItemWindows | None = None
    # [ranker] popularity_penalty of the bundle's configuration (popularity_penalized)
    popularity_penalty: float = 0.0
    # [ranker] popularity_penalty_below: the places the penalty leaves in the ranker's order
    popularity_penalty_below: int = 0
    # how many users of each cohort engaged with each item (none: the features 0)
    cohorts: CohortCounts | None = None

    @classmethod
    def load(cls, path: Path, *, threads: int = 1, onnx_device: str = "auto") -> LoadedBundle:
        """Verify the bundle at ``path`` against its manifest (refusing a missing, extra or
        altered file) and load it; ``threads`` per onnxruntime session, each on
        ``onnx_device`` (:func:`onnx_providers`). An erasure rewriting the version waits until
        it is loaded, and the load until the erasure is done
        (:func:`tailored.bundle.format.erasure_lock`)."""
        with locked(erasure_lock(Path(path)), shared=True):
            return cls._load(Path(path), threads, onnx_device)

    @classmethod
    def _load(cls, path: Path, threads: int, device: str) -> LoadedBundle:
        manifest = verify_bundle(path)
        root = manifest.path
        optional = {"ranker", "weights", "context_popular", "context_popular_counts"}
        optional |= {"item_ease_rows", "item_ease_weights", "user_seen_offsets", "user_seen_items"}
        optional |= {"user_segments", "segment_centroids", "segments", "user_id_buckets"}
        optional |= {"item_available_from", "item_available_until"}
        optional |= {"user_exposures", "user_exposure_times", *_OFFSET_FILES}
        optional |= set(_USER_FILES) | set(COHORT_FILES)
        for key, name in BUNDLE_FILES.items():
            if key not in optional and not (root / name).exists():
                raise BundleError(
                    f"{root}: no {name}, which serving needs (a bundle of an older format?); "
                    "write a new version with `tailored refresh`"
                )
        info = load_json(root / BUNDLE_FILES["model"])
        items_t = pq.read_table(root / BUNDLE_FILES["items"])
        titles = items_t.column("title").to_numpy(zero_copy_only=False)
        ranker_path = root / BUNDLE_FILES["ranker"]
        ranker = _session(ranker_path, threads, device) if ranker_path.exists() else None
        bundle = cls(
            manifest=manifest,
            info=info,
            item_ids=items_t.column("item_id").to_numpy(zero_copy_only=False),
            item_titles=titles,
            items=FeatureTable(
                load_npy(root / BUNDLE_FILES["item_categorical"]),
                load_npy(root / BUNDLE_FILES["item_multi"]),
                load_npy(root / BUNDLE_FILES["item_numeric"]),
            ),
            item_embeddings=load_npy(root / BUNDLE_FILES["item_embeddings"]),
            item_history=load_npy(root / BUNDLE_FILES["item_history"]),
            activity=ActivitySnapshot(
                load_npy(root / BUNDLE_FILES["item_activity"]),
                load_npy(root / BUNDLE_FILES["item_first_seen"]),
            ),
            item_neighbors=ItemNeighbors(
                load_npy(root / BUNDLE_FILES["item_neighbors"]),
                load_npy(root / BUNDLE_FILES["item_neighbor_weights"]),
            ),
            item_regression=_regression(root, len(items_t)),
            index=_index(root),
            user_tower=_session(root / BUNDLE_FILES["user_tower"], threads, device),
            ranker=ranker,
            users=UserSnapshot.load(root),
            context_popular=ContextPopular.load(root),
            ranker_input_names=frozenset(
                i.name for i in (ranker.get_inputs() if ranker is not None else ())
            ),
            ranker_dense=_dense_width(ranker, root),
            segments=SegmentModel.load(root),
            windows=ItemWindows.load(root, len(items_t) + 1),
            popularity_penalty=_ranker_number(
                root, manifest.config, "popularity_penalty", whole=False
            ),
            popularity_penalty_below=int(
                _ranker_number(root, manifest.config, "popularity_penalty_below", whole=True)
            ),
            cohorts=_cohorts(
                root, len(items_t), FeatureEncoder.from_json(info["user_encoder"]), manifest.config
            ),
        )
        check_loaded(bundle)  # the hashes say the files are as written, not that they agree
        return bundle

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def onnx_provider(self) -> str:
        """The onnxruntime execution provider the user tower runs on ("CPUExecutionProvider",
        "CUDAExecutionProvider")."""
        return str(self.user_tower.get_providers()[0])

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def last_event_time(self) -> int:
        """The bundle's data ends here (unix seconds): online events after it are new."""
        return int(self.manifest.data.get("last_event_time", 0))

    @property
    def history_length(self) -> int:
        return int(self.info["history_length"])

    def user_encoder(self) -> FeatureEncoder:
        return FeatureEncoder.from_json(self.info["user_encoder"])

    def item_encoder(self) -> FeatureEncoder:
        return FeatureEncoder.from_json(self.info["item_encoder"])

    def user_embeddings(
        self,
        *,
        user_hash: np.ndarray,
        user_cat: np.ndarray,
        user_num: np.ndarray,
        context: np.ndarray,
        history: np.ndarray,
    ) -> np.ndarray:
        """Users' tower inputs (``history`` int [B, L] bundle rows, 0-padded on the left,
        most recent last) -> float32 [B, D]."""
        if history.shape[1] != self.history_length:
            raise TailoredError(
                f"history: expected {self.history_length} slots, got {history.shape[1]}"
            )
        feeds = {
            "user_hash": np.asarray(user_hash, np.int64),
            "user_cat": np.asarray(user_cat, np.int64),
            "user_num": np.asarray(user_num, np.float32),
            "context": np.asarray(context, np.int64),
            "history": self.item_history[history].astype(np.float32),
            "history_mask": history > 0,
        }
        (emb,) = self.user_tower.run(None, feeds)
        return np.asarray(emb, np.float32)

    def retrieve(
        self, user_emb: np.ndarray, n: int, exclude: Exclude = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` bundle rows by the index: (scores float32 [B, n], rows int64 [B, n]);
        rows 0 (score 0) where fewer are available."""
        scores, ids = self.index.search(user_emb, n, exclude)
        found = ids > 0
        return np.where(found, scores, 0.0).astype(np.float32), np.where(found, ids, 0)

    def rank(
        self,
        *,
        users: FeatureTable,
        context: np.ndarray,
        candidates: np.ndarray,
        dense: np.ndarray,
        user_emb: np.ndarray,
        popularity_penalty: float | None = None,
        popularity_penalty_below: int | None = None,
    ) -> np.ndarray:
        """Ranker scores float32 [R, C] of ``candidates`` (int [R, C], bundle rows) for R
        requests, less the configured popularity penalty (:func:`popularity_penalized`, under
        the configured ``popularity_penalty_below`` places; an experiment variant's
        ``popularity_penalty`` and ``popularity_penalty_below`` instead, where given); without
        a ranker in the bundle, the retrieval scores (``dense[..., 0]``)."""
        if self.ranker is None:
            return dense[..., 0].astype(np.float32)
        score = self._ranker_scores(users, context, candidates, dense, user_emb)
        p = self.popularity_penalty if popularity_penalty is None else float(popularity_penalty)
        below = (
            self.popularity_penalty_below
            if popularity_penalty_below is None
            else int(popularity_penalty_below)
        )
        return popularity_penalized(score, dense, candidates, p, below)

    def _ranker_scores(
        self,
        users: FeatureTable,
        context: np.ndarray,
        candidates: np.ndarray,
        dense: np.ndarray,
        user_emb: np.ndarray,
    ) -> np.ndarray:
        feeds = ranker_inputs(
            users=users,
            context=context,
            items=self.items,
            item_emb=self.item_embeddings,
            candidates=candidates,
            dense=dense[..., : self.ranker_dense] if self.ranker_dense else dense,
            user_emb=user_emb,
        )
        # the exporter drops inputs a ranker does not read (fields the config turned off)
        names = self.ranker_input_names
        assert self.ranker is not None  # rank() answers without one itself
        (score,) = self.ranker.run(None, {k: v for k, v in feeds.items() if k in names})
        return np.asarray(score, np.float32).reshape(candidates.shape)
