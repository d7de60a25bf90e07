from __future__ import annotations

from typing import Any

import pytest
import torch

from tailored.train.two_tower.model import ItemTowers, TowerSpec, TwoTower, UserTowers

SPEC = TowerSpec(
    n_items=20,
    item_categorical=(4,),
    item_multi=(6,),
    item_numeric=1,
    user_categorical=(3, 5),
    user_numeric=1,
    context=(3,),
)


def _model(encoder: str = "transformer", buckets: int = 8, **extra: Any) -> TwoTower:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cat = torch.randint(0, 4, (21, 1), generator=g)
    multi = torch.randint(0, 6, (21, 1, 8), generator=g)
    num = torch.randn(21, 1, generator=g)
    cat[0], multi[0], num[0] = 0, 0, 0
    return TwoTower(
        SPEC,
        cat,
        multi,
        num,
        dim=16,
        id_dim=16,
        feature_dim=4,
        hidden=32,
        encoder=encoder,
        history_length=5,
        user_id_buckets=buckets,
        **extra,
    ).eval()


def _users(history: torch.Tensor) -> dict[str, torch.Tensor]:
    b = history.shape[0]
    return {
        "user_hash": torch.arange(1, b + 1),
        "user_cat": torch.ones(b, 2, dtype=torch.long),
        "user_num": torch.zeros(b, 1),
        "context": torch.zeros(b, 1, dtype=torch.long),
        "history": history,
    }


@pytest.mark.parametrize("encoder", ["transformer", "gru", "mean"])
def test_towers_give_unit_vectors_of_the_configured_size(encoder: str) -> None:
    model = _model(encoder)
    items = model.item_embeddings(torch.arange(1, 21))
    hist = torch.tensor([[0, 0, 3, 4, 5], [0, 0, 0, 0, 0]])  # the second user has no history
    users = model.user_embeddings(**_users(hist))
    assert items.shape == (20, 16) and users.shape == (2, 16)
    assert torch.allclose(items.norm(dim=-1), torch.ones(20), atol=1e-5)
    assert torch.allclose(users.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.isfinite(users).all()


@pytest.mark.parametrize("encoder", ["transformer", "gru"])
def test_order_of_the_history_matters_for_sequence_encoders(encoder: str) -> None:
    model = _model(encoder)
    a = model.user_embeddings(**_users(torch.tensor([[1, 2, 3, 4, 5]])))
    b = model.user_embeddings(**_users(torch.tensor([[5, 4, 3, 2, 1]])))
    assert not torch.allclose(a, b, atol=1e-4)


def test_a_new_item_is_embedded_from_its_metadata() -> None:
    model = _model()
    tower = model.item_tower
    cat, multi, num = model.item_cat[3:5], model.item_multi[3:5], model.item_num[3:5]
    unknown = tower(torch.zeros(2, dtype=torch.long), cat, multi, num)  # id 0: never seen
    assert torch.isfinite(unknown).all()
    # different metadata, different embeddings, even without an id
    if not torch.equal(cat[0], cat[1]) or not torch.equal(multi[0], multi[1]):
        assert not torch.allclose(unknown[0], unknown[1])


@pytest.mark.parametrize("encoder", ["transformer", "gru", "mean"])
def test_a_causal_history_encodes_every_prefix_in_one_pass(encoder: str) -> None:
    torch.manual_seed(0)
    base = _model(encoder)
    model = TwoTower(
        SPEC,
        base.item_cat,
        base.item_multi,
        base.item_num,
        dim=16,
        id_dim=16,
        feature_dim=4,
        hidden=32,
        encoder=encoder,
        history_length=5,
        user_id_buckets=8,
        causal_history=True,
    ).eval()
    sequence = torch.tensor([[3, 7, 2, 9, 0], [4, 5, 0, 0, 0]])  # oldest first, right-padded
    users = _users(sequence)
    users["context"] = torch.zeros(2, 5, 1, dtype=torch.long)
    every = model.sequence_user_embeddings(
        **{k: users[k] for k in users if k != "history"}, sequence=sequence
    )
    assert every.shape == (2, 5, 16)
    for row, n in ((0, 4), (1, 2)):
        for t in range(n):
            # the same prefix as a serving history: most recent last, padding on the left
            prefix = sequence[row, : t + 1]
            history = torch.cat([torch.zeros(5 - t - 1, dtype=torch.long), prefix])
            one = _users(history.unsqueeze(0))
            one["user_hash"] = users["user_hash"][row : row + 1]
            assert torch.allclose(model.user_embeddings(**one)[0], every[row, t], atol=1e-5)
    # no history at all is still a finite unit vector
    empty = model.user_embeddings(**_users(torch.zeros(1, 5, dtype=torch.long)))
    assert torch.isfinite(empty).all() and torch.allclose(empty.norm(), torch.tensor(1.0))


def test_an_ensemble_embeds_as_its_pairs_side_by_side() -> None:
    model = _model("gru", ensemble=3)
    assert model.blocks == [16, 16, 16]
    items = model.item_embeddings(torch.arange(1, 21))
    hist = torch.tensor([[0, 0, 3, 4, 5], [0, 0, 0, 0, 9]])
    users = model.user_embeddings(**_users(hist))
    assert items.shape == (20, 48) and users.shape == (2, 48)
    # each pair's unit vector divided by sqrt(3): the whole a unit vector again
    for block in (*items.split(16, -1), *users.split(16, -1)):
        assert torch.allclose(block.norm(dim=-1), torch.full((len(block),), 3**-0.5), atol=1e-5)
    assert torch.allclose(users.norm(dim=-1), torch.ones(2), atol=1e-5)
    # block k is pair k's own embedding, so one inner product averages the pairs' scores
    inputs = _users(hist)
    member_scores = []
    assert isinstance(model.item_tower, ItemTowers) and isinstance(model.user_tower, UserTowers)
    pairs = list(zip(model.item_tower.towers(), model.user_tower.towers(), strict=True))
    for k, (it, ut) in enumerate(pairs):
        ids = torch.arange(1, 21)
        own = it(ids, model.item_cat[ids], model.item_multi[ids], model.item_num[ids])
        assert torch.allclose(items[:, 16 * k : 16 * (k + 1)], own * 3**-0.5, atol=1e-6)
        h = it.inputs(hist, model.item_cat[hist], model.item_multi[hist], model.item_num[hist])
        u = ut(*(inputs[n] for n in ("user_hash", "user_cat", "user_num", "context")), h, hist > 0)
        assert torch.allclose(users[:, 16 * k : 16 * (k + 1)], u * 3**-0.5, atol=1e-6)
        member_scores.append(u @ own.T)
    assert torch.allclose(users @ items.T, sum(member_scores) / 3, atol=1e-5)
    # the pairs start from their own weights
    a, b = (it.id_embedding.weight for it, _ in pairs[:2])
    assert not torch.allclose(a, b)
    # one pair keeps the weights' names of a model without ensembles (older runs load)
    single = set(_model("gru").state_dict())
    assert {"item_tower.id_embedding.weight", "user_tower.skip.weight"} <= single
    assert not any(".members." in k for k in single)
    assert {k.replace(".members.2.", ".") for k in model.state_dict() if ".members.2." in k} == {
        k for k in single if k.startswith(("item_tower.", "user_tower."))
    }
