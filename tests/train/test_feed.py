"""The device-resident input pipeline: an epoch visits every training row once, DDP ranks
share it without overlap, batches gathered on the device equal those gathered on the host, and
the packed GRU of training equals the padded GRU of serving."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch

from tailored.data.interactions import Interactions, PositiveRule, load_interactions
from tailored.train.two_tower.data import Batch, TwoTowerDataModule
from tailored.train.two_tower.feed import FeedLoader, not_negative_pairs
from tailored.train.two_tower.model import _SequenceEncoder
from tests.helpers import cuda_available


@pytest.fixture(scope="module")
def data(movielens_dir: Path) -> Interactions:
    return load_interactions(movielens_dir, PositiveRule.weighted({"rating": 1.0}))


def _rows(loader: FeedLoader) -> list[np.ndarray]:
    # the loader's batches here are the row numbers themselves
    return [cast(torch.Tensor, b).numpy() for b in loader]


def _index_loader(rows: int, batch: int, **kw: int) -> FeedLoader:
    return FeedLoader(
        rows, batch, lambda j, g: j, device=torch.device("cpu"), **kw  # type: ignore[arg-type,return-value]
    )  # fmt: skip


def test_an_epoch_visits_every_row_once_and_the_next_in_another_order() -> None:
    loader = _index_loader(1000, 64, seed=3)
    first, second = _rows(loader), _rows(loader)
    assert len(first) == len(loader) == 1000 // 64  # the short last batch is dropped
    seen = np.concatenate(first)
    assert len(np.unique(seen)) == len(seen) == 15 * 64
    assert not np.array_equal(seen, np.concatenate(second))
    # the same seed draws the same epochs
    assert np.array_equal(seen, np.concatenate(_rows(_index_loader(1000, 64, seed=3))))
    # fewer rows than a batch: one short batch, nothing dropped
    assert sorted(np.concatenate(_rows(_index_loader(10, 64, seed=0))).tolist()) == list(range(10))


def test_an_agreed_batch_count_caps_the_epoch() -> None:
    # under DDP each rank walks its own users' rows and the ranks agree on the least count
    # of batches (DDP deadlocks on unequal steps): a rank with more rows stops there
    full = _index_loader(1000, 50, seed=1)
    capped = _index_loader(1000, 50, seed=1, batches=7)
    assert len(full) == 20 and len(capped) == 7
    got = _rows(capped)
    assert len(got) == 7 and all(len(b) == 50 for b in got)
    assert len(np.unique(np.concatenate(got))) == 350  # no row twice
    assert len(_index_loader(1000, 50, seed=1, batches=99)) == 20  # a cap is never a floor
    assert FeedLoader.batches_of(1000, 50) == 20 and FeedLoader.batches_of(10, 64) == 1


def test_no_negative_cells_equal_the_dense_lookup_with_a_heavy_user() -> None:
    # user 0 holds half the rows and has many (repeated) positives; the rest are light
    g = torch.Generator().manual_seed(5)
    lists = [torch.randint(1, 30, (400,), generator=g)] + [
        torch.randint(1, 30, (int(n),), generator=g)
        for n in torch.randint(0, 6, (20,), generator=g)
    ]
    offsets = torch.tensor([0, *torch.cumsum(torch.tensor([len(x) for x in lists]), 0).tolist()])
    items = torch.cat(lists)
    row_users = torch.cat(
        [torch.zeros(32, dtype=torch.long), torch.randint(1, 21, (32,), generator=g)]
    )
    col_items = torch.randint(1, 30, (64,), generator=g)
    cells = not_negative_pairs(row_users, col_items, offsets, items)
    expected = {
        (r, c)
        for r in range(64)
        for c in range(64)
        if r != c and int(col_items[c]) in set(lists[int(row_users[r])].tolist())
    }
    found = list(map(tuple, cells.T.tolist()))
    assert len(found) == len(set(found))  # each cell once
    assert set(found) == expected


def test_the_loader_of_a_module_without_a_trainer_gathers_on_the_cpu(data: Interactions) -> None:
    dm = TwoTowerDataModule(data, history_length=5, batch_size=128, mask_user_positives=True)
    loader = dm.train_dataloader()
    assert isinstance(loader, FeedLoader)
    batch = next(iter(loader))
    assert isinstance(batch, Batch)
    assert batch.item.device.type == "cpu" and batch.history.shape == (128, 5)
    assert len(loader) == dm.feed.rows // 128


@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
def test_batches_gathered_on_the_gpu_equal_the_host_ones(data: Interactions) -> None:
    dm = TwoTowerDataModule(data, history_length=5, batch_size=256, mask_user_positives=True)
    gpu = dm.feed.to("cuda")
    j = torch.randperm(dm.feed.rows)[:256]
    host, dev = dm.feed.batch(j), gpu.batch(j.cuda())
    for name, value in vars(host).items():
        other = getattr(dev, name)
        if name == "not_negatives":  # the same cells, maybe in another order
            assert sorted(map(tuple, value.T.tolist())) == sorted(map(tuple, other.T.tolist()))
        else:
            assert torch.equal(value, other.cpu()), name
    pinned = dm.feed.to("cpu", pin=True)
    assert pinned.item.is_pinned()


def test_the_packed_gru_of_training_is_the_padded_gru_of_serving() -> None:
    torch.manual_seed(0)
    enc = _SequenceEncoder("gru", 8, 6, 1, 1, 0.0)
    n = torch.tensor([0, 1, 6, 3, 2, 6, 0, 5] * 4)
    mask = torch.arange(6).unsqueeze(0) >= (6 - n).unsqueeze(1)  # right-aligned histories
    h = (torch.randn(len(n), 6, 8) * mask.unsqueeze(-1)).requires_grad_()
    packed = enc.train()(h, mask)
    padded = enc.eval()(h, mask)
    assert torch.allclose(packed, padded, atol=1e-6)
    assert not packed[n == 0].any()
    weights = torch.randn_like(padded)
    for a, b in zip(
        torch.autograd.grad((packed * weights).sum(), [h, *enc.parameters()]),
        torch.autograd.grad((padded * weights).sum(), [h, *enc.parameters()]),
        strict=True,
    ):
        assert torch.allclose(a, b, atol=1e-5)
