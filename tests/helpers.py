"""What several test modules share: the repository root, the test pseudonymization key, a
small training configuration on real MovieLens-100k, and resealing a bundle a test altered
(fixtures live in ``conftest.py``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tailored.config import Config, load_config

__all__ = [
    "ROOT",
    "SMALL",
    "TEST_KEY",
    "cuda_available",
    "reseal",
    "small_config",
    "synthetic_bundle",
]

ROOT = Path(__file__).resolve().parents[1]
TEST_KEY = bytes.fromhex("00112233445566778899aabbccddeeff" * 2)


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU: the one gate of the GPU-only tests (``skipif(not
    cuda_available(), ...)``); torch is imported only when asked."""
    import torch

    return bool(torch.cuda.is_available())


# a model small enough to train on MovieLens-100k in seconds on two cores
SMALL: dict[str, dict[str, Any]] = {
    "model": {
        "sequence_encoder": "gru",
        "dim": 32,
        "id_dim": 32,
        "hidden": 64,
        "history_length": 20,
    },
    "train": {"max_epochs": 3, "batch_size": 512, "lr": 3e-3, "progress_bar": False},
}


def small_config(dataset: Path, **sections: dict[str, Any]) -> Config:
    """:data:`SMALL` on ``dataset`` (ratings as positives); ``sections`` override its keys."""
    values: dict[str, Any] = {"data": {"dataset": str(dataset), "positive_events": {"rating": 1.0}}}
    for name, section in SMALL.items():
        values[name] = {**section, **sections.get(name, {})}
    return load_config(values=values)


def reseal(bundle: Path) -> None:
    """Rewrite a copied bundle's manifest for the files it now holds, as its writer would: a
    bundle altered on purpose that still verifies."""
    manifest_path = bundle / "manifest.json"
    doc = json.loads(manifest_path.read_text())
    doc["files"] = [f for f in doc["files"] if (bundle / f["path"]).exists()]
    for f in doc["files"]:
        blob = (bundle / f["path"]).read_bytes()
        f.update(size=len(blob), sha256=hashlib.sha256(blob).hexdigest())
    manifest_path.write_text(json.dumps(doc))


def synthetic_bundle(
    base: Path,
    *,
    users: int = 800,
    items: int = 300,
    seed: int = 3,
    overrides: dict[str, Any] | None = None,
) -> tuple[Path, Config]:
    """A small synthetic site (``base/site``, with its planted truth) and a bundle of a model
    trained on it (``overrides`` of its configuration beside the small sizes): the bundles
    root (``base/bundles``) and the training configuration. Minutes at most on 2 cores."""
    from tailored.bundle.build import build_bundle
    from tailored.data.synth import generate_synthetic
    from tailored.train.two_tower.fit import train

    ds = base / "site"
    generate_synthetic(
        ds, n_users=users, n_items=items, events_per_user=25, seed=seed, key=TEST_KEY
    )
    cfg = load_config(
        ROOT / "configs" / "synthetic.toml",
        overrides={
            "data.dataset": str(ds),
            "model.dim": 16,
            "model.id_dim": 16,
            "model.hidden": 32,
            "train.max_epochs": 1,
            "train.progress_bar": False,
            "ranker.max_epochs": 1,
            "ranker.candidates": 30,
            "ranker.hidden": 16,
            "index.recall_queries": 50,
            **(overrides or {}),
        },
    )
    train(cfg, out=base / "run")
    build_bundle(base / "run", base / "bundles", progress_bar=False)
    return base / "bundles", cfg
