"""Ranker latency in onnxruntime: one request's candidates scored in one call.

``python -m benchmarks.serving.ranker_latency --bundle BUNDLE`` times the bundle's own ranker on
real rows (its items, features of a real shape); without ``--bundle``, a ranker of the
default size with random weights over synthetic inputs (1,000 items, 20 tags). For 1 and 2
intra-op threads: p50 / p99 / mean milliseconds per call of ``--candidates`` rows, after a
warm-up, over ``--calls`` calls; beside it, the same calls to a one-layer model with the
same inputs (the baseline: onnxruntime's own per-call cost, measured in the same run).
JSON to ``benchmarks/results/ranker_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._machine import machine
from benchmarks._paths import RESULTS

__all__ = ["main"]

OUT = RESULTS / "ranker_latency.json"


def _random_ranker(path: Path, candidates: int) -> tuple[dict[str, np.ndarray], int]:
    import torch

    from tailored.config import RankerConfig
    from tailored.data.ranking_features import DENSE_FEATURES
    from tailored.train.ranker.export import export_ranker
    from tailored.train.ranker.model import RANKER_INPUTS, Ranker, RankerSpec

    cfg = RankerConfig()
    spec = RankerSpec(
        user_categorical=(3, 22, 800),
        user_numeric=1,
        context=(4, 4),
        item_categorical=(50,),
        item_multi=(20,),
        item_numeric=1,
        dense=len(DENSE_FEATURES),
        embedding_dim=64,
        feature_dim=cfg.feature_dim,
        cross_layers=cfg.cross_layers,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
    )
    torch.manual_seed(0)
    model = Ranker(spec).eval()
    rng = np.random.default_rng(0)
    rows: dict[str, np.ndarray] = {
        "user_cat": rng.integers(1, 3, (candidates, 3)),
        "user_num": rng.normal(size=(candidates, 1)).astype(np.float32),
        "context": rng.integers(1, 4, (candidates, 2)),
        "item_cat": rng.integers(1, 50, (candidates, 1)),
        "item_multi": rng.integers(0, 20, (candidates, 1, 8)),
        "item_num": rng.normal(size=(candidates, 1)).astype(np.float32),
        "dense": rng.normal(size=(candidates, len(DENSE_FEATURES))).astype(np.float32),
        "user_emb": rng.normal(size=(candidates, 64)).astype(np.float32),
        "item_emb": rng.normal(size=(candidates, 64)).astype(np.float32),
    }
    example = {k: torch.from_numpy(np.ascontiguousarray(rows[k])) for k in RANKER_INPUTS}
    export_ranker(model, example, path)
    params = sum(p.numel() for p in model.parameters())
    return rows, params


def _bundle_rows(path: Path, candidates: int) -> tuple[Path, dict[str, np.ndarray], int]:
    import onnx

    from tailored.bundle.format import BUNDLE_FILES
    from tailored.bundle.runtime import LoadedBundle
    from tailored.data.ranking_features import DENSE_FEATURES, ranker_inputs

    bundle = LoadedBundle.load(path)
    rng = np.random.default_rng(0)
    cands = rng.choice(np.arange(1, bundle.n_items + 1), (1, candidates), replace=False)
    from tailored.data.features import FeatureTable

    n_user_cat = len(bundle.user_encoder().categorical)
    n_user_num = len(bundle.user_encoder().numeric)
    users = FeatureTable(
        np.ones((1, n_user_cat), np.int64),
        np.zeros((1, 0, 8), np.int64),
        np.zeros((1, n_user_num), np.float32),
    )
    rows = ranker_inputs(
        users=users,
        context=np.zeros((1, len(bundle.info.get("context_vocabs", {}))), np.int64),
        items=bundle.items,
        item_emb=bundle.item_embeddings,
        candidates=cands,
        dense=rng.normal(size=(1, candidates, len(DENSE_FEATURES))).astype(np.float32),
        user_emb=bundle.item_embeddings[cands[0, :1]],
    )
    path = bundle.manifest.path / BUNDLE_FILES["ranker"]
    params = sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)
    return path, rows, params


def _time(path: Path, rows: dict[str, np.ndarray], threads: int, calls: int) -> dict[str, float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: rows[i.name] for i in session.get_inputs()}
    for _ in range(50):
        session.run(None, feeds)
    ms = np.empty(calls)
    for j in range(calls):
        start = time.perf_counter()
        session.run(None, feeds)
        ms[j] = (time.perf_counter() - start) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def _baseline(path: Path, rows: dict[str, np.ndarray]) -> Path:
    """A one-layer model over the dense features with the ranker's inputs and output."""
    import torch

    from tailored.train.onnx import export_onnx
    from tailored.train.ranker.model import RANKER_INPUTS

    class Linear(torch.nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(d, 1)

        def forward(
            self,
            user_cat: torch.Tensor,
            user_num: torch.Tensor,
            context: torch.Tensor,
            item_cat: torch.Tensor,
            item_multi: torch.Tensor,
            item_num: torch.Tensor,
            dense: torch.Tensor,
            user_emb: torch.Tensor,
            item_emb: torch.Tensor,
        ) -> torch.Tensor:
            return self.lin(dense).squeeze(-1)

    example = tuple(torch.from_numpy(np.ascontiguousarray(rows[k])) for k in RANKER_INPUTS)
    return export_onnx(Linear(rows["dense"].shape[1]), example, RANKER_INPUTS, "score", path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bundle", type=Path, help="time this bundle's ranker on its items")
    p.add_argument("--candidates", type=int, default=200)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle:
            path, rows, params = _bundle_rows(args.bundle, args.candidates)
        else:
            path = Path(tmp) / "ranker.onnx"
            rows, params = _random_ranker(path, args.candidates)
        base = _baseline(Path(tmp) / "linear.onnx", rows)
        result: dict[str, Any] = {
            "machine": machine(),
            "source": str(args.bundle) if args.bundle else "random weights, default size",
            "parameters": params,
            "candidates": args.candidates,
            "calls": args.calls,
            "threads": {},
        }
        for threads in (1, 2):
            result["threads"][str(threads)] = {
                "ranker": _time(path, rows, threads, args.calls),
                "one_layer_baseline": _time(base, rows, threads, args.calls),
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["threads"], indent=2))
    return result


if __name__ == "__main__":
    main()
