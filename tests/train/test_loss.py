from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tailored.config import LossConfig
from tailored.train.two_tower.data import SequenceBatch
from tailored.train.two_tower.loss import same_item_pairs, sampled_softmax_loss
from tailored.train.two_tower.model import TowerSpec, TwoTower
from tailored.train.two_tower.task import TwoTowerTask


def test_plain_in_batch_softmax_is_cross_entropy_over_the_batch() -> None:
    g = torch.Generator().manual_seed(0)
    u = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    v = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    loss = sampled_softmax_loss(
        u, v, torch.arange(1, 5), temperature=0.5, mask_accidental_hits=False
    )
    expected = F.cross_entropy(u @ v.T / 0.5, torch.arange(4))
    assert torch.allclose(loss, expected)


def test_logq_lowers_popular_negatives_by_their_log_probability() -> None:
    # two rows, identical embeddings: logits all 1/T. With q = (0.9, 0.1) for items 1, 2 and
    # B = 2, the corrected logits are 1/T - log(2 q_j): row 0's positive (item 1) competes
    # with item 2, whose correction is smaller, so item 2 wins more of the softmax.
    u = torch.ones(2, 1)
    v = torch.ones(2, 1)
    log_q = torch.log(torch.tensor([1.0, 0.9, 0.1]))
    loss = sampled_softmax_loss(
        u, v, torch.tensor([1, 2]), temperature=1.0, log_q=log_q, mask_accidental_hits=False
    )
    a, b = -math.log(2 * 0.9), -math.log(2 * 0.1)
    row0 = -(a - math.log(math.exp(a) + math.exp(b)))
    row1 = -(b - math.log(math.exp(a) + math.exp(b)))
    assert math.isclose(loss.item(), (row0 + row1) / 2, rel_tol=1e-6)


def test_accidental_hits_are_not_negatives() -> None:
    # rows 0 and 1 share item 7: each must not count the other as a negative, so with only
    # the duplicate in the batch the loss is zero
    u = torch.ones(2, 1)
    v = torch.ones(2, 1)
    loss = sampled_softmax_loss(u, v, torch.tensor([7, 7]), temperature=1.0)
    assert loss.item() < 1e-6


def test_masked_cells_match_a_dense_mask_and_duplicates_are_found_by_sorting() -> None:
    # a batch of 64 rows over 9 items (many repeats) with a random set of cells that are no
    # negative: the sparse masking equals the dense computation it replaces
    g = torch.Generator().manual_seed(3)
    u = F.normalize(torch.randn(64, 8, generator=g), dim=-1)
    v = F.normalize(torch.randn(64, 8, generator=g), dim=-1)
    ids = torch.randint(1, 10, (64,), generator=g)
    extra = torch.rand(64, 64, generator=g) < 0.1
    log_q = torch.log(torch.rand(10, generator=g) + 0.1)
    pairs = same_item_pairs(ids)
    dense_same = (ids.unsqueeze(0) == ids.unsqueeze(1)).fill_diagonal_(False)
    assert sorted(map(tuple, pairs.T.tolist())) == sorted(
        map(tuple, torch.nonzero(dense_same).tolist())
    )
    loss = sampled_softmax_loss(
        u, v, ids, temperature=0.1, log_q=log_q, not_negatives=torch.nonzero(extra).T
    )
    logits = u @ v.T / 0.1 - (log_q[ids] + math.log(64)).unsqueeze(0)
    masked = (dense_same | extra).fill_diagonal_(False)
    logits = logits.masked_fill(masked, torch.finfo(logits.dtype).min)
    assert torch.allclose(loss, F.cross_entropy(logits, torch.arange(64)), atol=1e-5)


def test_the_chunked_loss_has_the_dense_loss_and_gradients() -> None:
    # rows in chunks of 5 (of 23), uniform negatives with accidental hits, masked cells and
    # weights: value and both gradients equal plain autograd through the dense logits
    g = torch.Generator().manual_seed(4)
    b, m, d = 23, 6, 8
    u = F.normalize(torch.randn(b, d, generator=g), dim=-1).requires_grad_()
    v = F.normalize(torch.randn(b, d, generator=g), dim=-1).requires_grad_()
    x = F.normalize(torch.randn(m, d, generator=g), dim=-1).requires_grad_()
    ids = torch.randint(1, 8, (b,), generator=g)
    extra_ids = torch.randint(1, 8, (m,), generator=g)
    log_q = torch.log(torch.rand(8, generator=g) + 0.1)
    w = torch.rand(b, generator=g)
    cells = torch.nonzero(torch.rand(b, b, generator=g) < 0.1).T
    loss = sampled_softmax_loss(
        u, v, ids, temperature=0.2, log_q=log_q, weight=w, extra=x, extra_ids=extra_ids,
        n_items=7, not_negatives=cells, chunk_cells=5 * (b + m),
    )  # fmt: skip
    grads = torch.autograd.grad(loss, (u, v, x))

    logits = torch.cat([u @ v.T / 0.2 - (log_q[ids] + math.log(b)).unsqueeze(0),
                        u @ x.T / 0.2 - math.log(m / 7)], dim=1)  # fmt: skip
    masked = torch.zeros(b, b + m, dtype=torch.bool)
    masked[:, :b] = ids.unsqueeze(0) == ids.unsqueeze(1)
    masked[cells[0], cells[1]] = True
    masked[:, :b].fill_diagonal_(False)
    masked[:, b:] = extra_ids.unsqueeze(0) == ids.unsqueeze(1)
    per_row = F.cross_entropy(logits.masked_fill(masked, torch.finfo(logits.dtype).min),
                              torch.arange(b), reduction="none")  # fmt: skip
    expected = (per_row * w).sum() / w.sum()
    assert torch.allclose(loss, expected, atol=1e-5)
    for got, want in zip(grads, torch.autograd.grad(expected, (u, v, x)), strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_uniform_negatives_add_columns_and_weights_weigh_rows() -> None:
    g = torch.Generator().manual_seed(1)
    u = F.normalize(torch.randn(3, 4, generator=g), dim=-1)
    v = F.normalize(torch.randn(3, 4, generator=g), dim=-1)
    extra = F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    ids = torch.tensor([1, 2, 3])
    base = sampled_softmax_loss(u, v, ids, temperature=0.1)
    mixed = sampled_softmax_loss(
        u,
        v,
        ids,
        temperature=0.1,
        extra=extra,
        extra_ids=torch.tensor([9, 10, 11, 12, 13]),
        n_items=20,
    )
    assert mixed > base  # more negatives, never less loss
    w = torch.tensor([1.0, 0.0, 0.0])
    only_first = sampled_softmax_loss(u, v, ids, temperature=0.1, weight=w)
    logits = u @ v.T / 0.1
    assert torch.allclose(only_first, F.cross_entropy(logits[:1], torch.tensor([0])))


def test_every_position_of_a_sequence_is_one_softmax_row() -> None:
    # two chunks, [3, 7, 2] -> [7, 2, 9] and [4] -> [5]: four (prefix, next item) rows whose
    # loss is the in-batch softmax of the four prefixes' user embeddings against 7, 2, 9, 5
    # (each row's other targets are its user's positives: masked when asked)
    spec = TowerSpec(n_items=10, user_categorical=(2,), user_numeric=1)
    zeros = torch.zeros(11, 0, dtype=torch.long)
    model = TwoTower(
        spec, zeros, torch.zeros(11, 0, 1, dtype=torch.long), torch.zeros(11, 0),
        dim=8, id_dim=8, hidden=16, encoder="gru", history_length=4, causal_history=True,
    )  # fmt: skip
    task = TwoTowerTask(
        model,
        LossConfig(temperature=0.5),
        item_popularity=torch.arange(11.0),
        lr=1e-3,
        weight_decay=0.0,
    ).eval()
    task.log = lambda *args, **kwargs: None  # type: ignore[method-assign]
    users = {"user_hash": torch.zeros(2, dtype=torch.long), "user_cat": torch.ones(2, 1,
             dtype=torch.long), "user_num": torch.zeros(2, 1)}  # fmt: skip
    targets = torch.tensor([[7, 2, 9, 0], [5, 0, 0, 0]])
    batch = SequenceBatch(
        **users,
        context=torch.zeros(2, 4, 0, dtype=torch.long),
        items=torch.tensor([[3, 7, 2, 0], [4, 0, 0, 0]]),
        targets=targets,
        weight=(targets > 0).float(),
        # the first chunk's three targets are each other's user's positives
        not_negatives=torch.tensor([[0, 0, 1, 1, 2, 2], [1, 2, 0, 2, 0, 1]]),
    )
    prefixes = torch.tensor([[0, 0, 0, 3], [0, 0, 3, 7], [0, 3, 7, 2], [0, 0, 0, 4]])
    rows = torch.tensor([0, 0, 0, 1])
    user = model.user_embeddings(
        users["user_hash"][rows], users["user_cat"][rows], users["user_num"][rows],
        torch.zeros(4, 0, dtype=torch.long), prefixes,
    )  # fmt: skip
    ids = torch.tensor([7, 2, 9, 5])
    expected = sampled_softmax_loss(
        user,
        model.item_embeddings(ids),
        ids,
        temperature=0.5,
        log_q=task.log_q,
        not_negatives=torch.nonzero(
            (rows.unsqueeze(1) == rows.unsqueeze(0)).fill_diagonal_(False)
        ).T,
    )
    assert torch.allclose(task.training_step(batch, 0), expected, atol=1e-6)
