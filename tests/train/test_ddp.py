"""Distributed data parallel training, two processes on the CPU (gloo), through the CLI as a
user would launch it: the command re-launches itself once per rank, and each rank reads its
own users' events (tailored.train.distributed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tailored.train.evaluate import evaluate_run

pytestmark = pytest.mark.slow  # trains under DDP in two processes


def test_ddp_two_cpu_processes(movielens_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "ddp.toml"
    cfg.write_text(f"""
[data]
dataset = "{movielens_dir}"
positive_events = {{ rating = 1.0 }}
[model]
sequence_encoder = "mean"
dim = 16
id_dim = 16
hidden = 32
history_length = 10
[train]
max_epochs = 1
batch_size = 1024
accelerator = "cpu"
devices = 2
strategy = "ddp"
progress_bar = false
limit_val_users = 600
final_eval_users = 600
""")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tailored.cli", "train", "--config", str(cfg), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in log
    assert "All distributed processes registered. Starting with 2 processes" in log
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    # each rank read its own half of the users' events, and none twice
    read = dict(re.findall(r"rank (\d) of 2: (\d+) of 100000 events", log))
    assert sorted(read) == ["0", "1"] and sum(map(int, read.values())) == 100_000
    assert all(40_000 < int(n) < 60_000 for n in read.values())
    # both ranks agreed on which items had no training positive (an all-event fact)
    untrained = set(re.findall(r"(\d+) of 1682 items had no training positive", log))
    assert len(untrained) == 1, untrained
    # one model, written once by rank 0, loadable without executing code
    state = torch.load(out / "model.pt", weights_only=True)
    # the validation NDCG reduced over the two ranks is the final report's on the same
    # checkpoint and the same 600 users: no user counted twice, none missed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_valid_ndcg@10"] == pytest.approx(
        metrics["valid"]["metrics"]["ndcg@10"], abs=1e-4
    )
    # and that report, each rank ranking its own users, is one process's evaluation of the
    # same sample of the whole data
    alone = evaluate_run(out, split="valid", history="all", max_users=600, seed=0)
    assert metrics["valid"]["users"] == alone["users"] == 600
    for name, value in alone["metrics"].items():
        assert metrics["valid"]["metrics"][name] == pytest.approx(value, abs=1e-6), name
    assert metrics["valid"]["popularity"] == pytest.approx(alone["popularity"], abs=1e-9)
    assert state and json.loads((out / "model.json").read_text())["spec"]["n_items"] == 1682
