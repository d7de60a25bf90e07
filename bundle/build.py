"""Building bundles: ``tailored bundle build RUN`` (the first version, with the ranker trained
on the run's own candidates) and ``tailored refresh RUN_OR_BUNDLE`` (every item and user
re-embedded with the current model, the index rebuilt, a new version written).

A refresh reads the dataset as it is now: items are the bundle's rows in the order of the
dataset's ``items.parquet``; an item the model was not trained on gets id 0 and is embedded
from its metadata, encoded with the vocabularies saved at training time.

A bundle knows the events of the splits up to ``through`` only (``--through train | valid |
test``, default ``test``: every event, as a live site's bundle): the users' histories,
items seen and exposures, the user embeddings, the item counts, co-occurrence, item-item
model, context popularity and segments are computed from them
(:func:`tailored.bundle.snapshot.cut`). The manifest's ``data`` records ``through``,
``through_unix`` (the last event included, which is also ``last_event_time``, where the
bundle's serving clock starts) and ``events``.
A bundle built ``--through valid`` is the one to evaluate on test (``tailored evaluate``
refuses a bundle on a period it has seen).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pytorch_lightning.utilities import rank_zero_only

from tailored.bundle import snapshot
from tailored.bundle.availability import item_windows
from tailored.bundle.format import (
    BUNDLE_FILES,
    COHORT_FILES,
    BundleError,
    BundleWriter,
    load_json,
    resolve_bundle,
    verify_bundle,
)
from tailored.config import Config, SegmentsConfig, from_dict
from tailored.data.exposures import EXPOSURE_EVENTS
from tailored.data.features import FeatureEncoder, FeatureTable, user_hash_buckets
from tailored.data.interactions import Interactions
from tailored.data.ranking_features import HISTORY_EVENTS
from tailored.data.splits import TRAIN
from tailored.errors import TailoredError
from tailored.paths import dataset_dir
from tailored.retrieval.choose import BuiltIndex
from tailored.retrieval.embed import EmbeddedItems, embed_items, embed_users
from tailored.retrieval.segments import describe_segments, fit_segments
from tailored.train.runs import load_data
from tailored.train.threads import torch_threads
from tailored.train.two_tower.data import UserHistory
from tailored.train.two_tower.model import TowerSpec, TwoTower, build_model

__all__ = ["BuildResult", "build_bundle", "refresh"]

_log = logging.getLogger(__name__)
# positives per user kept in the bundle for serving: as many as the ranker's features read
USER_SNAPSHOT_EVENTS = HISTORY_EVENTS
_WORK_ENV = "TAILORED_EMBED_WORK"
_USER_BLOCK = 1 << 20  # users whose history windows are cut at once
_CHECKED_USERS = 256  # users whose tower output ONNX must reproduce


@dataclass
class BuildResult:
    path: Path  # the new bundle version
    items: int
    new_items: int
    users: int
    item_seconds: float  # embedding every item (the predict loop)
    items_per_second: float

    def describe(self) -> dict[str, Any]:
        """The manifest's ``metrics.refresh``."""
        return {
            "items": self.items,
            "new_items": self.new_items,
            "users": self.users,
            "item_seconds": round(self.item_seconds, 3),
            "items_per_second": round(self.items_per_second, 1) if self.item_seconds else None,
        }


@dataclass
class _Source:
    """A trained two-tower model and what it was trained with."""

    cfg: Config
    info: dict[str, Any]  # model.json's content
    model: TwoTower
    train_item_ids: np.ndarray  # str [N_train], the item behind model index i + 1
    previous: dict[str, Any]  # what the source bundle or run carries over


def _rank() -> int:
    """This process's global rank (0 without DDP)."""
    return int(getattr(rank_zero_only, "rank", 0))


def _item_table(info: dict[str, Any], items_t: pa.Table) -> FeatureTable:
    return FeatureEncoder.from_json(info["item_encoder"]).transform(items_t).with_padding_row()


def _load_model(cfg: Config, info: dict[str, Any], state: dict[str, torch.Tensor]) -> TwoTower:
    spec = TowerSpec.from_json(info["spec"])
    n = spec.n_items + 1
    model = build_model(
        spec,
        cfg.model,
        np.zeros((n, len(spec.item_categorical)), np.int64),
        np.zeros((n, len(spec.item_multi), state["item_multi"].shape[-1]), np.int64),
        np.zeros((n, spec.item_numeric), np.float32),
    )
    model.load_state_dict(state)
    return model.eval()


def _from_run(run_dir: Path) -> tuple[_Source, Interactions]:
    from tailored.train.runs import load_run

    run = load_run(run_dir)  # refuses a dataset that changed since training
    info = json.loads((Path(run_dir) / "model.json").read_text())
    metrics_path = Path(run_dir) / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    previous = {"source": str(Path(run_dir).resolve()), "two_tower": metrics}
    return _Source(run.cfg, info, run.model, run.data.item_ids, previous), run.data


def _from_bundle(path: Path) -> _Source:
    from safetensors.torch import load_file

    manifest = verify_bundle(resolve_bundle(path))
    root = manifest.path
    info = load_json(root / BUNDLE_FILES["model"])
    cfg = from_dict(manifest.config, where=f"{root}/manifest.json config")
    state = load_file(str(root / BUNDLE_FILES["weights"]))
    items = pq.read_table(root / BUNDLE_FILES["items"], columns=["item_id", "train_index"])
    idx = items.column("train_index").to_numpy()
    ids = items.column("item_id").to_numpy(zero_copy_only=False)
    train_ids = np.empty(int(idx.max(initial=0)), object)
    train_ids[idx[idx > 0] - 1] = ids[idx > 0]
    previous = {
        "source": f"{root.resolve()}",
        "two_tower": manifest.metrics.get("two_tower", {}),
        "ranker": manifest.metrics.get("ranker"),
        "ranker_onnx": root / BUNDLE_FILES["ranker"],
        "data": manifest.data,
    }
    return _Source(cfg, info, _load_model(cfg, info, state), train_ids, previous)


def _model_users(src: _Source, data: Interactions) -> FeatureTable:
    """``data``'s users' profile fields encoded by the model's own user encoder, in
    ``data.user_ids``' order: what serving reads of them (a refresh's data may have been
    encoded otherwise: a new value shifts a field's codes)."""
    # the rows of data.user_ids, in its order (an erasure since the data was read changes
    # neither: the sweep after the swap removes what it erased)
    users_t = pq.read_table(dataset_dir(src.cfg.data.dataset) / "users.parquet")
    at = pc.index_in(pa.array(data.user_ids, pa.string()), value_set=users_t.column("user_id"))
    if at.null_count:
        raise BundleError(
            f"{dataset_dir(src.cfg.data.dataset)}: {at.null_count} users of the training data "
            "are no longer in the dataset (erased meanwhile?); build again"
        )
    return FeatureEncoder.from_json(src.info["user_encoder"]).transform(users_t.take(at))


def _user_inputs(src: _Source, data: Interactions, users: FeatureTable) -> dict[str, np.ndarray]:
    """The user tower's inputs of ``data``'s users, ``users`` their model-encoded fields."""
    m = src.cfg.model
    hist = UserHistory.of(data, tuple(np.unique(data.split).tolist()) or (TRAIN,))
    history = np.empty((data.n_users, m.history_length), np.int64)
    for lo in range(0, data.n_users, _USER_BLOCK):  # the window's temporaries a block at a time
        every = np.arange(lo, min(lo + _USER_BLOCK, data.n_users))
        history[lo : lo + len(every)] = hist.last(every, m.history_length)
    return {
        "user_hash": user_hash_buckets(data.user_ids, m.user_id_buckets),
        "user_cat": users.categorical,
        "user_num": users.numeric,
        "context": np.zeros((data.n_users, data.context.shape[1]), np.int64),
        "history": history,
    }


def _current_items(src: _Source) -> tuple[pa.Table, np.ndarray, FeatureTable]:
    """The dataset's items now: the table, each row's model index (0 = new), encoded rows."""
    items_t = pq.read_table(dataset_dir(src.cfg.data.dataset) / "items.parquet")
    ids = items_t.column("item_id").to_numpy(zero_copy_only=False)
    known = {str(v): i + 1 for i, v in enumerate(src.train_item_ids)}
    train_index = np.fromiter((known.get(str(v), 0) for v in ids), np.int64, len(ids))
    return items_t, train_index, _item_table(src.info, items_t)


def _write_items(w: BundleWriter, items_t: pa.Table, train_index: np.ndarray) -> None:
    titles = (
        items_t.column("title")
        if "title" in items_t.column_names
        else pa.nulls(items_t.num_rows, pa.string())
    )
    table = pa.table(
        {
            "item_id": items_t.column("item_id"),
            "title": titles,
            "train_index": pa.array(train_index, pa.int64()),
        }
    )
    pq.write_table(table, w.path(BUNDLE_FILES["items"]))


def _save(w: BundleWriter, name: str, array: np.ndarray) -> None:
    np.save(w.path(BUNDLE_FILES[name]), np.ascontiguousarray(array), allow_pickle=False)


def _sample(emb: np.ndarray, n: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).choice(len(emb), min(n, len(emb)), replace=False)
    return emb[np.sort(rows)]


@dataclass
class _Embedded:
    """Every item and (optionally) every user embedded by the source model."""

    items: EmbeddedItems  # embeddings float32 [N+1, D], history table float32 [N+1, id_dim]
    users: np.ndarray | None  # float32 [U, D]
    item_seconds: float  # embedding every item (the predict loop)


def _write_bundle(
    src: _Source,
    data: Interactions,
    root: Path,
    *,
    ranker_onnx: Any,
    metrics: dict[str, Any],
    devices: int,
    progress_bar: bool,
    users: bool,
    through: str,
    extra: dict[str, Any] | None = None,
) -> BuildResult:
    """Embed, index and write one bundle version from the events of ``data`` up to split
    ``through``; ``ranker_onnx(path)`` writes the ranker."""
    data = snapshot.cut(data, through)
    items_t, train_index, items = _current_items(src)
    # read and encoded once: the user tower's inputs and the cohort counts both need them
    model_users = _model_users(src, data) if users or src.cfg.ranker.cohorts else None
    uin = _user_inputs(src, data, model_users) if users and model_users is not None else None
    with torch_threads(src.cfg.train.threads, processes=devices):
        emb = _embed(src, train_index, items, uin, devices=devices, progress_bar=progress_bar)
    if uin is not None:  # the windows were for the embedding; the ONNX check reads a few
        uin["history"] = uin["history"][:_CHECKED_USERS].copy()
    n = len(train_index)
    if _rank() != 0:  # another DDP rank: rank 0 writes the bundle
        return BuildResult(root, n, 0, 0, emb.item_seconds, 0.0)
    built = _build_index(src, emb)
    with BundleWriter(root) as w:
        _write_models(w, src, uin, emb, ranker_onnx, metrics)
        _write_item_tables(w, src, data, items_t, train_index, items, emb, model_users)
        built.index.save(w.path(BUNDLE_FILES["index"] + "/index.json").parent)
        if emb.users is not None and uin is not None:
            _write_user_tables(w, data, uin, emb.users)
            metrics["segments"] = _write_segments(w, src.cfg.segments, data, emb.users)
        result = BuildResult(
            root,
            n,
            int((train_index == 0).sum()),
            0 if emb.users is None else len(emb.users),
            emb.item_seconds,
            n / emb.item_seconds if emb.item_seconds else 0.0,
        )
        result.path = w.commit(
            config=src.cfg.to_dict(),
            data=_data_identity(src, data, through),
            metrics=_json_safe(
                {**metrics, "index": built.describe(), "refresh": result.describe()}
            ),
            extra={"source": src.previous["source"], **(extra or {})},
        )
    _log.info(
        "bundle %s: %d items (%d new), index %s", result.path, n, result.new_items, built.index.kind
    )
    return result


def _embed(
    src: _Source,
    train_index: np.ndarray,
    items: FeatureTable,
    uin: dict[str, np.ndarray] | None,
    *,
    devices: int,
    progress_bar: bool,
) -> _Embedded:
    """Every item (and user, given their tower inputs ``uin``) through the model's towers."""
    # DDP ranks are this program started again: they find the work directory in the
    # environment rank 0 passes on
    work = Path(os.environ.get(_WORK_ENV) or tempfile.mkdtemp(prefix="tailored-refresh-"))
    os.environ[_WORK_ENV] = str(work)
    try:
        start = time.perf_counter()
        emb = embed_items(
            src.model,
            np.r_[0, train_index],
            items,
            work / "items",
            devices=devices,
            progress_bar=progress_bar,
        )
        item_seconds = time.perf_counter() - start
        user_emb = None
        if uin is not None:
            user_emb = embed_users(
                src.model,
                uin,
                emb.history,
                work / "users",
                devices=devices,
                progress_bar=progress_bar,
            )
    finally:
        if _rank() == 0:
            shutil.rmtree(work, ignore_errors=True)
            os.environ.pop(_WORK_ENV, None)
    return _Embedded(emb, user_emb, item_seconds)


def _build_index(src: _Source, emb: _Embedded) -> BuiltIndex:
    """The ``[index]`` the configuration asks for over the item embeddings (ids: bundle rows
    1..N), its recall measured on a sample of the users' embeddings."""
    from tailored.retrieval import build_index

    idx = src.cfg.index
    vectors = emb.items.embeddings[1:]
    queries = None
    if emb.users is not None:
        queries = _sample(emb.users, idx.recall_queries, src.cfg.train.seed)
    return build_index(
        vectors,
        np.arange(1, len(vectors) + 1, dtype=np.int64),
        kind=idx.kind,
        params={k: int(v) if float(v).is_integer() else v for k, v in idx.params.items()},
        sample_queries=queries,
        k=idx.recall_k,
        target_recall=idx.target_recall or None,
        budget_ms=idx.search_budget_ms or None,
    )


def _write_models(
    w: BundleWriter,
    src: _Source,
    uin: dict[str, np.ndarray] | None,
    emb: _Embedded,
    ranker_onnx: Any,
    metrics: dict[str, Any],
) -> None:
    """``model.json``, the two-tower weights (for a later refresh), the user tower as ONNX
    (checked against torch; the difference goes into ``metrics``) and the ranker."""
    from safetensors.torch import save_file

    from tailored.train.two_tower.export import export_user_tower

    model_info = {
        **src.info,
        "history_length": src.cfg.model.history_length,
        "user_id_buckets": src.cfg.model.user_id_buckets,
    }
    w.path(BUNDLE_FILES["model"]).write_text(json.dumps(model_info, indent=1))
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in src.model.state_dict().items()},
        str(w.path(BUNDLE_FILES["weights"])),
    )
    tower_path = w.path(BUNDLE_FILES["user_tower"])
    export_user_tower(src.model, src.cfg.model.history_length, tower_path)
    metrics["user_tower_onnx_max_abs_diff"] = _check_user_tower(
        src, uin, emb.items.history, tower_path
    )
    if ranker_onnx is not None:
        ranker_onnx(w.path(BUNDLE_FILES["ranker"]))


def _write_item_tables(
    w: BundleWriter,
    src: _Source,
    data: Interactions,
    items_t: pa.Table,
    train_index: np.ndarray,
    items: FeatureTable,
    emb: _Embedded,
    model_users: FeatureTable | None,
) -> None:
    """The item rows: ids and titles, embeddings, encoded metadata and the build-time
    snapshots the ranker's features and the non-personalized results read (the cohorts'
    counted by ``model_users``, the users' fields as the model encodes them)."""
    _write_items(w, items_t, train_index)
    _save(w, "item_embeddings", emb.items.embeddings)
    _save(w, "item_history", emb.items.history)
    _save(w, "item_categorical", items.categorical)
    _save(w, "item_multi", items.multi)
    _save(w, "item_numeric", items.numeric)
    _save(w, "item_activity", snapshot.activity(data))
    _save(w, "item_first_seen", snapshot.first_seen(data))
    cut_time = int(data.timestamp.max()) if len(data.timestamp) else 0
    start, end = item_windows(dataset_dir(src.cfg.data.dataset), cut_time)
    if len(start) != len(train_index) + 1:
        raise TailoredError(
            f"{dataset_dir(src.cfg.data.dataset)}: {len(start) - 1} items in the catalog, the "
            f"bundle has {len(train_index)} rows; the dataset changed while it was built"
        )
    _save(w, "item_available_from", start)
    _save(w, "item_available_until", end)
    model_vocabs: dict[str, list[str]] = src.info.get("context_vocabs") or {}
    if model_vocabs:
        for name, arr in snapshot.context_popular(data, model_vocabs).items():
            _save(w, name, arr)
    neighbors = snapshot.neighbors(data, src.cfg.ranker, src.cfg.train.seed)
    _save(w, "item_neighbors", neighbors.ids)
    _save(w, "item_neighbor_weights", neighbors.weights)
    regression = snapshot.regression(data, src.cfg.ranker)
    _save(w, "item_ease_rows", regression.rows)
    _save(w, "item_ease_weights", regression.weights)
    if src.cfg.ranker.cohorts and model_users is not None:
        cohorts = snapshot.cohorts(
            data,
            src.cfg.ranker,
            encoder=FeatureEncoder.from_json(src.info["user_encoder"]),
            user_cat=model_users.categorical,
        )
        for name, attr in COHORT_FILES.items():
            _save(w, name, getattr(cohorts, attr))


def _write_user_tables(
    w: BundleWriter, data: Interactions, uin: dict[str, np.ndarray], user_emb: np.ndarray
) -> None:
    """The user rows: embeddings, pseudonyms and what serving knows of each user at build
    time (its own events come after)."""
    _save(w, "user_embeddings", user_emb)
    pq.write_table(pa.table({"user_id": data.user_ids}), w.path(BUNDLE_FILES["user_ids"]))
    _save(w, "user_categorical", uin["user_cat"])
    _save(w, "user_numeric", uin["user_num"])
    for name, arr in snapshot.user_snapshot(data, USER_SNAPSHOT_EVENTS).items():
        _save(w, name, arr)
    for name, arr in snapshot.user_seen(data).items():
        _save(w, name, arr)
    for name, arr in snapshot.user_exposures(data, EXPOSURE_EVENTS).items():  # where any
        _save(w, name, arr)


def _write_segments(
    w: BundleWriter, cfg: SegmentsConfig, data: Interactions, user_emb: np.ndarray
) -> dict[str, Any]:
    """k-means over the user embeddings, each user's segment, and each segment described
    (:mod:`tailored.retrieval.segments`); what the manifest's metrics say of them."""
    if cfg.k == 0 or len(user_emb) < cfg.k:
        return {"k": 0, "why": "[segments] k = 0" if cfg.k == 0 else "fewer users than k"}
    seg = fit_segments(user_emb, cfg.k, seed=0, niter=cfg.niter, sample=cfg.sample)
    _save(w, "user_segments", seg.labels)
    _save(w, "segment_centroids", seg.centroids)
    seen = snapshot.user_seen(data)
    described = describe_segments(
        seg.labels,
        k=seg.k,
        user_items=(seen["user_seen_offsets"], seen["user_seen_items"].astype(np.int64) - 1),
        item_values=_item_values(data),
        item_names=[
            str(t) if t else str(i)
            for t, i in zip(
                data.item_titles if data.item_titles is not None else [None] * data.n_items,
                data.item_ids,
                strict=True,
            )
        ],
        user_values={
            name: (data.users.categorical[:, j], data.user_encoder.vocabs[name])
            for j, name in enumerate(data.user_encoder.categorical)
        },
    )
    doc = {"k": seg.k, "objective": seg.objective, "segments": described}
    w.path(BUNDLE_FILES["segments"]).write_text(json.dumps(_json_safe(doc), indent=2) + "\n")
    return {"k": seg.k, "sizes": [s["users"] for s in described]}


def _item_values(data: Interactions) -> dict[str, list[list[str]]]:
    """Each item's values of every categorical and multi-categorical item field (row 0, the
    padding, left out)."""
    enc, table = data.item_encoder, data.items
    out: dict[str, list[list[str]]] = {}
    for j, name in enumerate(enc.categorical):
        vocab = enc.vocabs[name]
        out[name] = [[vocab[c - 1]] if c > 0 else [] for c in table.categorical[1:, j].tolist()]
    for j, name in enumerate(enc.multi):
        vocab = enc.vocabs[name]
        out[name] = [[vocab[c - 1] for c in row if c > 0] for row in table.multi[1:, j].tolist()]
    return out


def _data_identity(src: _Source, data: Interactions, through: str) -> dict[str, Any]:
    """The manifest's ``data``: which dataset, its counts (all of it) and key, up to which
    split the bundle knows its events (``data``: those events only) and where they end."""
    last = int(data.timestamp.max()) if len(data.timestamp) else 0
    return {
        "dataset": data.meta.name,
        "path": str(dataset_dir(src.cfg.data.dataset)),
        "counts": data.meta.counts,
        "key_fingerprint": data.meta.key_fingerprint,
        "through": through,
        "through_unix": last,  # the last event included
        "events": len(data.item),  # the positive events included
        # the bundle's last event: serving adds the online events after it (the bundle clock)
        "last_event_time": last,
    }


def _check_through(through: str, ranker: bool) -> None:
    if through not in snapshot.SPLITS:
        raise TailoredError(f"--through: one of {', '.join(snapshot.SPLITS)}, not {through!r}")
    if through == "train" and ranker:
        raise TailoredError(
            "--through train: the re-ranker is fitted on the validation split, so a bundle "
            "with one has seen it; build with --no-ranker, or --through valid"
        )


def _check_refresh_data(src: _Source, data: Interactions, data_changed: bool) -> dict[str, Any]:
    """Refuse to refresh a bundle from a dataset other than its own (see :func:`refresh`);
    what the manifest's ``extra`` records of a change allowed by ``data_changed``."""
    was = src.previous.get("data") or {}
    then = {"dataset": was.get("dataset"), "key_fingerprint": was.get("key_fingerprint")}
    now = {"dataset": data.meta.name, "key_fingerprint": data.meta.key_fingerprint}
    # a field the source's manifest does not record (an older bundle) cannot differ
    differ = [k for k in then if then[k] is not None and then[k] != now[k]]
    if not differ:
        return {}
    what = ", ".join(f"{k} {then[k]!r} then, {now[k]!r} now" for k in differ)
    if not data_changed:
        raise TailoredError(
            f"{src.previous['source']}: built from another dataset than "
            f"{dataset_dir(src.cfg.data.dataset)} holds now ({what}); a refresh picks up the "
            "new events and items of the same site. Build a new bundle from a run trained on "
            "this data, or pass --data-changed if the data changed on purpose"
        )
    _log.warning("refresh from changed data (%s): --data-changed", what)
    return {"data_changed_from": then}


def _check_user_tower(
    src: _Source, uin: dict[str, np.ndarray] | None, table: np.ndarray, path: Path
) -> float:
    """torch vs onnxruntime on up to 256 real users (random inputs if there are none)."""
    from tailored.train.onnx import max_abs_diff
    from tailored.train.two_tower.export import UserTowerServing, user_tower_example

    if uin is not None and len(uin["user_hash"]):
        rows = slice(0, _CHECKED_USERS)
        hist = uin["history"][rows]
        inputs = {k: v[rows] for k, v in uin.items() if k != "history"}
        inputs["history"] = table[hist].astype(np.float32)
        inputs["history_mask"] = hist > 0
        inputs["user_num"] = inputs["user_num"].astype(np.float32)
    else:
        names = ("user_hash", "user_cat", "user_num", "context", "history", "history_mask")
        example = user_tower_example(src.model, src.cfg.model.history_length)
        inputs = {k: v.numpy() for k, v in zip(names, example, strict=True)}
    diff = max_abs_diff(UserTowerServing(src.model), path, inputs)
    if diff > 1e-3:
        raise TailoredError(f"user tower: ONNX and torch disagree by {diff:.2e}")
    return diff


def _json_safe(obj: Any) -> Any:
    """NaN and infinities become None: the manifest is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def build_bundle(
    run_dir: Path,
    root: Path,
    *,
    ranker: bool | None = None,
    devices: int = 1,
    progress_bar: bool = True,
    users: bool = True,
    through: str = "test",
) -> BuildResult:
    """The first bundle of a run: the ranker is trained on the run's own candidates (unless
    ``ranker`` is False or the configuration disables it) and exported with the user tower.

    The bundle knows the events of the splits up to ``through`` (see the module doc): the
    default, ``test``, is every event, as a live site serves; ``valid`` makes a bundle to
    evaluate on the test period. The ranker learns from the training and validation splits
    whatever ``through`` says, so ``through="train"`` is refused with a ranker."""
    from tailored.train.onnx import max_abs_diff
    from tailored.train.ranker.export import export_ranker
    from tailored.train.ranker.fit import fit_ranker
    from tailored.train.runs import LoadedRun

    _check_through(through, bool(ranker))  # a bad name fails before the run is read
    src, data = _from_run(Path(run_dir))
    fit = ranker if ranker is not None else src.cfg.ranker.enabled
    _check_through(through, fit)
    metrics: dict[str, Any] = {"two_tower": src.previous["two_tower"]}
    write_ranker = None
    if fit:
        run = LoadedRun(src.cfg, src.model, data)
        result, tables, requests = fit_ranker(run, src.cfg.ranker, progress_bar=progress_bar)
        example = tables.batch(requests.take(np.arange(min(4, len(requests.users)))))
        n_requests = len(requests.users)
        # the ranker's training tables and requests (gigabytes at 10M users): the export
        # traces ``example`` only, so they go before the users are embedded
        del tables, requests
        metrics["ranker"] = {
            "holdout_ndcg@10": result.holdout_ndcg10,
            "holdout_retrieval_ndcg@10": result.holdout_retrieval_ndcg10,
            "epochs": result.epochs,
            "members": len(result.epochs),
            "requests": n_requests,
            "lists_per_user": src.cfg.ranker.lists_per_user,
            "candidates": src.cfg.ranker.candidates,
        }

        def write_ranker(path: Path) -> None:
            export_ranker(result.model, example, path)
            inputs = {k: v.numpy() for k, v in example.items()}
            diff = max_abs_diff(result.model, path, inputs)
            metrics["ranker"]["onnx_max_abs_diff"] = diff
            if diff > 1e-3:
                raise TailoredError(f"ranker: ONNX and torch disagree by {diff:.2e}")

    return _write_bundle(
        src,
        data,
        Path(root),
        ranker_onnx=write_ranker,
        metrics=metrics,
        devices=devices,
        progress_bar=progress_bar,
        users=users,
        through=through,
    )


def refresh(
    source: Path,
    root: Path | None = None,
    *,
    devices: int = 1,
    progress_bar: bool = True,
    users: bool = True,
    through: str | None = None,
    data_changed: bool = False,
) -> BuildResult:
    """Re-embed every item and user with the model of ``source`` (a run directory or a
    bundle), rebuild the index and write a new bundle version under ``root`` (default: the
    source bundle's root). From a bundle, its ranker is carried over unchanged.

    ``through``: the last split whose events the new version knows (see the module doc);
    by default the source bundle's own (``test`` for one that does not record it), so that a
    bundle made for evaluation stays one, and a live site's keeps every event; from a run,
    ``test``.

    The dataset must be the one the source bundle was built from: the same dataset name and
    the same pseudonymization key (fingerprint) as its manifest records. Its counts may
    differ: new events, new items, users erased or events past retention are what a refresh
    is for (a re-import of the same site with more events refreshes). Another name or
    another key is refused, unless ``data_changed`` says the data changed on purpose (the
    new version's ``extra.data_changed_from`` then records what it was)."""
    source = Path(source)
    if (source / "model.pt").is_file():
        if root is None:
            raise TailoredError(f"{source}: a run directory; say where the bundle goes (--out)")
        return build_bundle(
            source,
            root,
            devices=devices,
            progress_bar=progress_bar,
            users=users,
            through=through or "test",
        )
    src = _from_bundle(source)
    bundle_root = Path(root) if root is not None else resolve_bundle(source).parent
    ranker_path: Path = src.previous["ranker_onnx"]
    through = through or snapshot.built_through(src.previous["data"])
    _check_through(through, ranker_path.exists())
    data = load_data(src.cfg)
    extra = _check_refresh_data(src, data, data_changed)
    copy = (lambda dst: shutil.copyfile(ranker_path, dst)) if ranker_path.exists() else None
    metrics = {"two_tower": src.previous["two_tower"]}
    if src.previous.get("ranker"):
        metrics["ranker"] = src.previous["ranker"]
    return _write_bundle(
        src,
        data,
        bundle_root,
        ranker_onnx=copy,
        metrics=metrics,
        devices=devices,
        progress_bar=progress_bar,
        users=users,
        through=through,
        extra=extra,
    )
