from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tailored.config import LossConfig
from tailored.train.two_tower.data import SequenceBatch
from tailored.train.two_tower.loss import sampled_softmax_loss
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
        positive_mask=torch.tensor([[True, True, True, False], [False, False, False, True]]),
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
        positive_mask=rows.unsqueeze(1) == rows.unsqueeze(0),
    )
    assert torch.allclose(task.training_step(batch, 0), expected, atol=1e-6)
