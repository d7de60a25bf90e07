"""A training run directory: what ``tailored train`` writes and what evaluation, the ranker
and the bundle builder read back::

    config.json      the resolved configuration
    model.json       TowerSpec, model hyper-parameters, feature vocabularies, dataset identity
    model.pt         the TwoTower state dict (tensors only; read with weights_only=True)
    checkpoints/     Lightning checkpoints (best by validation ndcg@10, and last)
    logs/            the CSV or TensorBoard logger's files
    metrics.json     validation and test metrics of the best checkpoint, and the baseline

:func:`load_data` reads and splits the dataset a configuration names; a run is read back
only against the data it was trained on (same pseudonymization key, same counts).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tailored.config import Config, ConfigError, from_dict
from tailored.data.interactions import Interactions, PositiveRule, UserShard, load_interactions
from tailored.data.splits import TRAIN, VALID
from tailored.errors import TailoredError
from tailored.paths import dataset_dir, write_json_atomic
from tailored.train.two_tower.model import TowerSpec, TwoTower, build_model

__all__ = ["LoadedRun", "load_data", "load_run", "save_model", "shown_in_training"]


def load_data(
    cfg: Config, *, exposures: bool = True, shard: UserShard | None = None
) -> Interactions:
    """The configured dataset's interactions; ``exposures=False``: without its exposure
    events; ``shard``: one shard's users' only (see
    :func:`~tailored.data.interactions.load_interactions`)."""
    d = cfg.data
    rule = PositiveRule.from_config(d)
    data = load_interactions(
        dataset_dir(d.dataset),
        rule,
        split=d.split,
        valid_ratio=d.valid_ratio,
        test_ratio=d.test_ratio,
        valid_start=d.valid_start,
        test_start=d.test_start,
        exposures=exposures,
        shard=shard,
        numeric_buckets=cfg.model.numeric_buckets,
    )
    # the ranker's co-occurrence within sessions needs the data to log them: said before a
    # run trains for hours, not when its ranker is fitted
    data.cooccurrence_sessions(cfg.ranker.cooccurrence)
    if exposures:
        for section, strength in (
            ("loss", cfg.loss.exposure_correction),
            ("ranker", cfg.ranker.exposure_correction),
        ):
            if strength:
                shown_in_training(data, section)
    return data


def shown_in_training(data: Interactions, section: str) -> np.ndarray:
    """Exposures per item of the known periods (training and validation; float64 [N + 1]),
    which ``[section] exposure_correction`` reads: refused where the data has none."""
    shown = data.item_exposure((TRAIN, VALID))
    if not shown.any():
        raise ConfigError(
            f"[{section}] exposure_correction: {data.meta.name} has no exposure events in its "
            'training period (a type with role = "exposure", such as impressions); set it to 0'
        )
    return shown


@dataclass
class LoadedRun:
    cfg: Config
    model: TwoTower
    data: Interactions


def load_run(run_dir: Path, data: Interactions | None = None) -> LoadedRun:
    """The trained model of ``run_dir`` and its dataset (re-read and re-split)."""
    run_dir = Path(run_dir)
    for name in ("config.json", "model.json", "model.pt"):
        if not (run_dir / name).is_file():
            raise TailoredError(
                f"{run_dir}: not a finished run (no {name}); train one with `tailored train`"
            )
    try:
        cfg = from_dict(
            json.loads((run_dir / "config.json").read_text()), where=str(run_dir / "config.json")
        )
        info = json.loads((run_dir / "model.json").read_text())
        spec = TowerSpec.from_json(info["spec"])
        trained_on = info["dataset"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise TailoredError(f"{run_dir}: config.json or model.json is malformed ({e!r})") from e
    data = data if data is not None else load_data(cfg)
    if data.meta.key_fingerprint != trained_on["key_fingerprint"]:
        raise TailoredError(
            f"{run_dir}: trained on data pseudonymized with another key "
            f"than {trained_on['path']} now has"
        )
    if data.meta.counts != trained_on["counts"]:
        raise TailoredError(
            f"{run_dir}: the dataset at {trained_on['path']} changed since "
            f"training (counts {trained_on['counts']} then, "
            f"{data.meta.counts} now); train again"
        )
    model = build_model(
        spec, cfg.model, data.items.categorical, data.items.multi, data.items.numeric
    )
    try:
        state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, KeyError) as e:
        raise TailoredError(f"{run_dir / 'model.pt'}: cannot load the model ({e})") from e
    model.eval()
    return LoadedRun(cfg, model, data)


def save_model(
    out: Path, cfg: Config, spec: TowerSpec, data: Interactions, model: TwoTower
) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".model.pt.", dir=out)
    os.close(fd)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, out / "model.pt")
    write_json_atomic(out / "config.json", cfg.to_dict())
    write_json_atomic(
        out / "model.json",
        {
            "spec": spec.to_json(),
            "user_encoder": data.user_encoder.to_json(),
            "item_encoder": data.item_encoder.to_json(),
            "context_vocabs": data.context_vocabs,
            "dataset": {
                "name": data.meta.name,
                "path": str(dataset_dir(cfg.data.dataset)),
                "key_fingerprint": data.meta.key_fingerprint,
                "counts": data.meta.counts,
            },
        },
    )
