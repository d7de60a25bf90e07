"""What several test modules share: the repository root, the test pseudonymization key, a
small training configuration on real MovieLens-100k, and resealing a bundle a test altered
(fixtures live in ``conftest.py``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tailored.config import Config, load_config

__all__ = ["ROOT", "SMALL", "TEST_KEY", "reseal", "small_config"]

ROOT = Path(__file__).resolve().parents[1]
TEST_KEY = bytes.fromhex("00112233445566778899aabbccddeeff" * 2)

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
