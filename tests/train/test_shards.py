"""Each DDP rank reads its own users' events: the shards of a read partition the whole read,
and after the ranks agree (a real gloo process group of two processes on the loopback) what
they hold is exactly the whole read's, cut by user: item counts, context codes, slot
propensities and the weights debiased by them. An empty shard is no error; a read that fails
on one rank fails on all."""

from __future__ import annotations

import dataclasses
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from tailored.config import load_config
from tailored.data.interactions import Interactions, PositiveRule, UserShard, load_interactions
from tailored.data.schema import SchemaError
from tailored.data.splits import TEST, TRAIN, VALID
from tailored.data.synth import generate_synthetic
from tailored.train.distributed import Ranks, agree, read_shard
from tests.helpers import ROOT, TEST_KEY

WORLD = 2


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("shards") / "site"
    generate_synthetic(
        d, n_users=900, n_items=300, n_categories=8, events_per_user=60, seed=11, key=TEST_KEY
    )
    return d


def _rule() -> PositiveRule:
    cfg = load_config(ROOT / "configs" / "synthetic.toml")
    return dataclasses.replace(PositiveRule.from_config(cfg.data), position_debias=True)


@pytest.fixture(scope="module")
def whole(site: Path) -> Interactions:
    return load_interactions(site, _rule())


def _cut(data: Interactions, users: np.ndarray) -> np.ndarray:
    """bool [E]: the events of ``users`` (the arrays are grouped by user, in time order)."""
    return np.isin(data.user, users)


def test_shards_partition_the_read_by_user(site: Path, whole: Interactions) -> None:
    shards = [load_interactions(site, _rule(), shard=UserShard(r, 3)) for r in range(3)]
    assert sum(len(s.user) for s in shards) == len(whole.user)
    for r, s in enumerate(shards):
        assert len(s.user) and (s.user % 3 == r).all()
        assert s.n_users == whole.n_users and s.n_items == whole.n_items  # whole tables
        mine = _cut(whole, np.unique(s.user))
        for name in ("user", "item", "timestamp", "split", "position"):
            np.testing.assert_array_equal(getattr(s, name), getattr(whole, name)[mine], name)
        # exposures are cut the same way
        assert s.exposures is not None and whole.exposures is not None
        assert (s.exposures.user % 3 == r).all()
    shown = [len(s.exposures.user) for s in shards if s.exposures is not None]
    assert whole.exposures is not None and sum(shown) == len(whole.exposures.user)
    with pytest.raises(ValueError, match=r"rank 3 is not in 0\.\.2"):
        UserShard(3, 3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, port: int, site: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        ranks = Ranks(rank, WORLD)
        own = load_interactions(Path(site), _rule(), shard=ranks.shard)
        data = agree(own, ranks)
        np.savez(
            Path(out) / f"rank{rank}.npz",
            user=data.user,
            weight=data.weight,
            context=data.context,
            popularity=np.stack([data.item_popularity((s,)) for s in (TRAIN, VALID, TEST)]),
            exposure=np.stack([data.item_exposure((s,)) for s in (TRAIN, VALID, TEST)]),
            own_exposure=own.exposure_counts(),
            examination=data.propensity.examination,
            own_examination=own.propensity.examination,
            least=ranks.min(len(data.user)),
            most=ranks.max(len(data.user)),
        )
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(data.context_vocabs))
    finally:
        dist.destroy_process_group()


def test_ranks_agree_on_what_the_whole_read_knows(
    site: Path, whole: Interactions, tmp_path: Path
) -> None:
    mp.spawn(_rank, args=(_free_port(), str(site), str(tmp_path)), nprocs=WORLD, join=True)
    got = [np.load(tmp_path / f"rank{r}.npz") for r in range(WORLD)]
    sizes = [len(g["user"]) for g in got]
    assert sum(sizes) == len(whole.user) and min(sizes) > 0
    assert all(int(g["least"]) == min(sizes) and int(g["most"]) == max(sizes) for g in got)
    popularity = np.stack([whole.item_popularity((s,)) for s in (TRAIN, VALID, TEST)])
    exposure = whole.exposure_counts()
    assert exposure[TRAIN].sum() > 0
    assert all(not np.array_equal(g["own_exposure"], exposure) for g in got)
    assert whole.context_vocabs and whole.propensity.examination.size > 1  # worth checking
    # a shard's own estimate is not the whole's: the agreement is what makes them equal
    assert any(not np.array_equal(g["own_examination"], whole.propensity.examination) for g in got)
    for r, g in enumerate(got):
        np.testing.assert_array_equal(g["popularity"], popularity)  # every shard's counts
        np.testing.assert_array_equal(g["exposure"], exposure)  # and exposures
        np.testing.assert_array_equal(g["examination"], whole.propensity.examination)
        assert json.loads((tmp_path / f"rank{r}.json").read_text()) == whole.context_vocabs
        mine = _cut(whole, np.unique(g["user"]))
        # the shard's own context codes, mapped onto the agreed vocabularies
        np.testing.assert_array_equal(g["context"], whole.context[mine])
        # weighed by the agreed propensities, not the shard's own
        np.testing.assert_allclose(g["weight"], whole.weight[mine], rtol=1e-6)


def test_agreed_vocabularies_remap_a_shards_codes(site: Path) -> None:
    own = load_interactions(site, _rule(), shard=UserShard(1, 2))
    # values another shard saw, sorting before and among this shard's own
    wider = {n: sorted({*v, "0-first", f"{v[0]}-between"}) for n, v in own.context_vocabs.items()}
    agreed = own.agreed(own.item_counts(), wider, own.propensity)
    assert agreed.context_vocabs == wider
    for j, name in enumerate(own.context_vocabs):
        before = np.array(["", *own.context_vocabs[name]], dtype=object)[own.context[:, j]]
        after = np.array(["", *wider[name]], dtype=object)[agreed.context[:, j]]
        np.testing.assert_array_equal(before, after)  # the same values, under new codes
        assert not np.array_equal(own.context[:, j], agreed.context[:, j])
    np.testing.assert_array_equal(agreed.weight, own.weight)  # the same propensities
    np.testing.assert_array_equal(agreed.item_popularity(), own.item_popularity())


def test_a_shard_without_events_reads_empty(site: Path, whole: Interactions) -> None:
    # more ranks than users: most shards hold none, which is no error (the ranks agree on
    # the total); the whole read of a dataset without positives still is one
    empty = load_interactions(site, _rule(), shard=UserShard(whole.n_users + 5, whole.n_users + 9))
    assert len(empty.user) == 0 and empty.n_users == whole.n_users
    assert empty.context.shape == (0, len(whole.context_vocabs))
    assert empty.context_vocabs == {name: [] for name in whole.context_vocabs}
    assert not empty.item_counts().any()
    nothing = PositiveRule.weighted({"no_such_type": 1.0})
    with pytest.raises(SchemaError, match="no positive events"):
        load_interactions(site, nothing)


def _failing_rank(rank: int, port: int, site: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )

    def read(shard: UserShard) -> Interactions:
        if shard.rank == 1:  # a bad row that only this rank's users have
            raise SchemaError("events.parquet: item_id 'x' refers to no row of the items table")
        return load_interactions(Path(site), _rule(), shard=shard)

    try:
        read_shard(read, Ranks(rank, WORLD))
        message = "no error"
    except Exception as e:
        message = f"{type(e).__name__}: {e}"
    finally:
        dist.destroy_process_group()
    (Path(out) / f"rank{rank}.txt").write_text(message)


def test_a_read_that_fails_on_one_rank_fails_on_every_rank(site: Path, tmp_path: Path) -> None:
    # not a rank left waiting for the others in the agreement
    mp.spawn(_failing_rank, args=(_free_port(), str(site), str(tmp_path)), nprocs=WORLD)
    own = (tmp_path / "rank1.txt").read_text()
    other = (tmp_path / "rank0.txt").read_text()
    assert own.startswith("SchemaError: events.parquet: item_id 'x'")
    assert other.startswith("TailoredError: rank 0: another rank could not read its shard")
