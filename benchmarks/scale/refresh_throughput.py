"""Batch embedding refresh throughput: items embedded per second through Lightning's predict
loop (:func:`tailored.retrieval.embed.embed_items`), beside the bare item tower called in a
plain loop over the same batches, its inputs on the device and its outputs kept there (the
baseline: what the predict loop costs on top).

``python -m benchmarks.scale.refresh_throughput --items 1000000`` (an item tower of the shipped
synthetic configuration's size, random weights: throughput does not depend on training).
On CUDA it also times exact top-k over the items with torch (``TorchTopKIndex``), queries/s
at batch 1 and 256. JSON to ``benchmarks/results/refresh_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._machine import machine
from benchmarks._paths import RESULTS
from tailored.data.features import FeatureTable
from tailored.retrieval.embed import embed_items
from tailored.train.two_tower.model import TowerSpec, TwoTower

__all__ = ["main"]

OUT = RESULTS / "refresh_throughput.json"


def _catalog(n: int, seed: int = 0) -> tuple[TwoTower, FeatureTable]:
    rng = np.random.default_rng(seed)
    spec = TowerSpec(n_items=n, item_categorical=(51,), item_multi=(21,), item_numeric=2)
    items = FeatureTable(
        rng.integers(1, 51, (n, 1)),
        rng.integers(0, 21, (n, 1, 8)),
        rng.normal(size=(n, 2)).astype(np.float32),
    )
    torch.manual_seed(seed)
    empty = torch.zeros((n + 1, 1), dtype=torch.long)
    model = TwoTower(
        spec,
        empty,
        torch.zeros((n + 1, 1, 8), dtype=torch.long),
        torch.zeros((n + 1, 2)),
        encoder="gru",
        history_length=20,
    )
    return model.eval(), items


@torch.no_grad()
def _bare(model: TwoTower, ids: np.ndarray, items: FeatureTable, batch: int) -> float:
    """The item tower called in a plain loop, on the device the predict loop used (bf16
    autocast on CUDA, as there), on the same footing: inputs moved to the device once,
    outputs kept there and brought back once (the time of both moves included)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    start = time.perf_counter()
    inputs = [
        torch.from_numpy(a).to(device) for a in (ids, items.categorical, items.multi, items.numeric)
    ]
    out = torch.empty((len(ids), model.user_tower.out_dim), device=device)
    with autocast:
        for i in range(0, len(ids), batch):
            out[i : i + batch] = model.item_tower(*(x[i : i + batch] for x in inputs)).float()
    out.cpu()
    return time.perf_counter() - start


def _cuda_topk(emb: np.ndarray) -> dict[str, float]:
    from tailored.retrieval.torch_index import TorchTopKIndex

    index = TorchTopKIndex(emb.shape[1], device="cuda")
    index.build(emb, np.arange(len(emb), dtype=np.int64))
    out: dict[str, float] = {}
    rng = np.random.default_rng(1)
    for batch in (1, 256):
        q = rng.normal(size=(batch, emb.shape[1])).astype(np.float32)
        index.search(q, 100)
        calls = 200 if batch == 1 else 20
        start = time.perf_counter()
        for _ in range(calls):
            index.search(q, 100)
        out[f"batch_{batch}_queries_per_second"] = calls * batch / (time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    model, items = _catalog(args.items)
    ids = np.arange(1, args.items + 1, dtype=np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up on one batch: CUDA's start and the first Trainer's set-up are not per item
        warm = np.arange(min(args.batch, args.items))
        embed_items(
            model, ids[warm], items.take(warm), Path(tmp), batch_size=args.batch, progress_bar=False
        )
        start = time.perf_counter()
        emb = embed_items(model, ids, items, Path(tmp), batch_size=args.batch, progress_bar=False)
        seconds = time.perf_counter() - start
    bare = _bare(model, ids, items, args.batch)
    result: dict[str, Any] = {
        "machine": machine(),
        "items": args.items,
        "batch": args.batch,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "predict_loop_seconds": seconds,
        "predict_loop_items_per_second": args.items / seconds,
        "bare_tower_seconds": bare,
        "bare_tower_items_per_second": args.items / bare,
    }
    if torch.cuda.is_available():
        result["cuda_exact_topk"] = _cuda_topk(emb.embeddings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    return result


if __name__ == "__main__":
    main()
