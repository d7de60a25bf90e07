"""The user tower's serving half in ONNX agrees with torch, on random and on real inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tailored.train.onnx import max_abs_diff
from tailored.train.two_tower.export import (
    USER_TOWER_INPUTS,
    UserTowerServing,
    export_user_tower,
    history_table,
    user_tower_example,
)
from tailored.train.two_tower.model import TowerSpec, TwoTower


def _model(encoder: str, causal: bool) -> TwoTower:
    spec = TowerSpec(
        n_items=40,
        item_categorical=(5,),
        item_multi=(7,),
        item_numeric=1,
        user_categorical=(3, 4),
        user_numeric=2,
        context=(3,),
    )
    g = torch.Generator().manual_seed(0)
    model = TwoTower(
        spec,
        torch.randint(0, 5, (41, 1), generator=g),
        torch.randint(0, 7, (41, 1, 8), generator=g),
        torch.randn(41, 1, generator=g),
        dim=16,
        id_dim=16,
        hidden=32,
        encoder=encoder,
        history_length=6,
        heads=2,
        user_id_buckets=10,
        causal_history=causal,
    )
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("encoder", "causal"), [("gru", False), ("transformer", False), ("mean", False), ("gru", True)]
)
def test_user_tower_onnx_agrees_with_torch(encoder: str, causal: bool, tmp_path: Path) -> None:
    model = _model(encoder, causal)
    path = export_user_tower(model, 6, tmp_path / "user_tower.onnx")
    serving = UserTowerServing(model)
    # random inputs, another batch size than the traced one
    example = user_tower_example(model, 6, batch=5)
    random_inputs = {n: v.numpy() for n, v in zip(USER_TOWER_INPUTS, example, strict=True)}
    assert max_abs_diff(serving, path, random_inputs) <= 1e-4
    # real inputs: histories gathered from the item table, as serving does, including an
    # empty history and a full one
    table = history_table(model)
    history = np.array([[0, 0, 0, 0, 0, 0], [0, 0, 3, 9, 1, 2], [5, 6, 7, 8, 9, 10]])
    real = {
        "user_hash": np.array([0, 3, 10]),
        "user_cat": np.array([[1, 2], [0, 3], [2, 1]]),
        "user_num": np.array([[0.5, -1.0], [0.0, 0.0], [1.0, 2.0]], np.float32),
        "context": np.array([[1], [0], [2]]),
        "history": table[history],
        "history_mask": history > 0,
    }
    assert max_abs_diff(serving, path, real) <= 1e-4
    # and the served embedding is the model's own for the same user
    t = {k: torch.from_numpy(v) for k, v in real.items()}
    want = model.user_embeddings(
        t["user_hash"], t["user_cat"], t["user_num"], t["context"], torch.from_numpy(history)
    )
    import onnxruntime as ort

    (got,) = ort.InferenceSession(str(path)).run(None, real)
    np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-4)
