"""Training and evaluating a small two-tower model on the real MovieLens-100k."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tailored.cli import main
from tailored.train.evaluate import evaluate_run, format_report
from tailored.train.two_tower.fit import RunResult, train
from tests.helpers import small_config

pytestmark = pytest.mark.slow  # trains small models on MovieLens-100k


@pytest.fixture(scope="module")
def small_run(
    movielens_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, RunResult]:
    out = tmp_path_factory.mktemp("run")
    return out, train(small_config(movielens_dir), out=out)


def test_a_run_directory_has_everything(small_run: tuple[Path, RunResult]) -> None:
    out, result = small_run
    for name in (
        "config.json",
        "model.json",
        "model.pt",
        "checkpoints/best.ckpt",
        "logs/metrics.csv",
    ):
        assert (out / name).is_file(), name
    state = torch.load(out / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert result.epochs == 3 and result.samples_per_second > 0
    assert 0 < result.best_valid_ndcg10 < 1


def test_items_without_a_training_positive_are_embedded_as_new_items(
    small_run: tuple[Path, RunResult], movielens_dir: Path
) -> None:
    from tailored.data.splits import TRAIN
    from tailored.train.runs import load_data

    out, _ = small_run
    data = load_data(small_config(movielens_dir))
    untrained = data.item_popularity((TRAIN,)) == 0
    assert 0 < untrained[1:].sum() < data.n_items  # some items appear only in valid/test
    ids = torch.load(out / "model.pt", weights_only=True)["item_tower.id_embedding.weight"]
    assert torch.all(ids[torch.from_numpy(untrained)] == 0)  # row 0, the new-item vector
    assert torch.all(ids[torch.from_numpy(~untrained)].abs().sum(dim=1) > 0)


def test_the_model_beats_popularity(small_run: tuple[Path, RunResult]) -> None:
    out, _ = small_run
    report = evaluate_run(out, split="valid")
    assert report["users"] == 943
    assert report["metrics"]["ndcg@10"] > report["popularity"]["ndcg@10"] * 1.3
    # the evaluation agrees with the validation metric Lightning monitored
    assert report["metrics"]["ndcg@10"] == pytest.approx(small_run[1].best_valid_ndcg10, abs=1e-4)
    text = format_report(report)
    assert "ndcg@10" in text and "by gender:" in text and "by activity:" in text


def test_evaluate_cli_json(
    small_run: tuple[Path, RunResult], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = small_run
    assert main(["evaluate", str(out), "--json", "--split", "test", "--history", "train"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in (
        "ndcg@10",
        "recall@10",
        "mrr@20",
        "hit@20",
        "itemcoverage@10",
        "averagepopularity@20",
    ):
        assert report["metrics"][key] >= 0 and key in report["popularity"]
    assert report["history"] == "train" and report["split"] == "test"


def test_a_missing_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a finished run (no config.json)" in capsys.readouterr().err


def test_a_bad_config_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nsequence_encoder = 'lstm'\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "[model] sequence_encoder: 'lstm' is not one of" in capsys.readouterr().err


def test_a_causal_sequence_run_keeps_the_averaged_weights_it_validated(
    movielens_dir: Path, tmp_path: Path
) -> None:
    # every-position training with an EMA of the weights: what is validated (the average) is
    # what the checkpoint and model.pt hold, so evaluating the kept model gives the same figure
    cfg = small_config(
        movielens_dir,
        model={"causal_history": True},
        train={"max_epochs": 2, "batch_size": 64, "ema_decay": 0.9, "sequence_targets": 10},
    )
    result = train(cfg, out=tmp_path)
    assert result.epochs == 2 and result.samples_per_second > 0
    ckpt = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=True)
    assert "current_model_state" in ckpt  # the raw weights, kept beside the average
    report = evaluate_run(tmp_path, split="valid")
    assert report["metrics"]["ndcg@10"] == pytest.approx(result.best_valid_ndcg10, abs=1e-4)
    assert report["metrics"]["ndcg@10"] > report["popularity"]["ndcg@10"]


def test_a_run_stopped_by_sigterm_exits_non_zero_and_says_so(
    movielens_dir: Path, tmp_path: Path
) -> None:
    """Lightning turns SIGTERM into a SystemExit of status 0; a run that wrote no model must
    not look like a success to the scheduler that stopped it."""
    import signal
    import subprocess
    import sys
    import time

    cfg = tmp_path / "long.toml"
    cfg.write_text(
        f'[data]\ndataset = "{movielens_dir}"\npositive_events = {{ rating = 1.0 }}\n'
        "[train]\nmax_epochs = 1000\nprogress_bar = false\n"
    )
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tailored.cli", "train", "--config", str(cfg), "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not (out / "logs").exists():  # the trainer has started
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    assert "stopped by SIGTERM at epoch" in err and "no model was written" in err
    assert not (out / "model").exists() and not list(out.glob("model*"))


def test_a_run_whose_output_is_no_terminal_logs_lines_without_bars_or_tips(
    movielens_dir: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "short.toml"
    cfg.write_text(
        f'[data]\ndataset = "{movielens_dir}"\npositive_events = {{ rating = 1.0 }}\n'
        "[model]\ndim = 16\n[train]\nmax_epochs = 1\nprogress_seconds = 0\n"
        "final_eval_users = 100\n"
    )
    out = tmp_path / "run"
    run = subprocess.run(
        [sys.executable, "-m", "tailored.cli", "train", "--config", str(cfg), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "epoch 0, batch 1/" in run.stderr and "examples/s" in run.stderr
    assert "\r" not in run.stderr  # no progress bar redrawn in a log
    assert "Tip:" not in run.stderr and "litlogger" not in run.stderr


def test_an_ensemble_puts_runs_of_its_own_side_by_side(
    small_run: tuple[Path, RunResult], movielens_dir: Path, tmp_path: Path
) -> None:
    from tailored.train.runs import load_run

    single_out, _ = small_run
    result = train(small_config(movielens_dir, model={"ensemble": 2}), out=tmp_path)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert [p["epochs"] for p in report["pairs"]] == [3, 3] and result.epochs == 6
    for folder, name in (("checkpoints", "best.ckpt"), ("logs", "metrics.csv")):
        assert (tmp_path / folder / name).is_file()
        assert (tmp_path / folder / "pair1" / name).is_file()
    # the first pair is the run without an ensemble (same seed); the second is another run
    single, both = load_run(single_out).model, load_run(tmp_path).model
    one = single.all_item_embeddings()
    items = both.all_item_embeddings()
    assert items.shape == (one.shape[0], 2 * one.shape[1])
    torch.testing.assert_close(items[1:, : one.shape[1]] * 2**0.5, one[1:], atol=1e-5, rtol=0)
    other = items[1:, one.shape[1] :] * 2**0.5
    assert (other * one[1:]).sum(1).abs().mean() < 0.5  # not the first pair again
    # the whole model's validation NDCG@10 is the one reported
    assert result.best_valid_ndcg10 == report["valid"]["metrics"]["ndcg@10"]
