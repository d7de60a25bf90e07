"""One contract for every ItemIndex backend (exact, HNSW, IVF-Flat, IVF-PQ, torch top-k).

Ground truth is brute force in float64 over seeded clustered vectors
(:mod:`tailored.retrieval.synthetic`). Exact backends must return an exact top k (up to ties
within float32 rounding); approximate ones must reach a recall floor, and every backend's
scores must be the true inner products of the ids it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tailored.retrieval import (
    ExactIndex,
    HNSWIndex,
    IndexInputError,
    ItemIndex,
    IVFFlatIndex,
    IVFPQIndex,
    TorchTopKIndex,
    faiss_gpu_count,
    load_index,
)
from tailored.retrieval.synthetic import clustered_catalog, exact_top_k

DIM = 32
K = 10
TOL = 1e-5  # float32 inner products of unit vectors in 32 dims agree to ~1e-7

# Small parameters so a 2,000-item catalog exercises the approximate paths in milliseconds.
FACTORIES: dict[str, Callable[[], ItemIndex]] = {
    "exact": lambda: ExactIndex(DIM),
    "hnsw": lambda: HNSWIndex(DIM, M=16, efConstruction=64, efSearch=48),
    "ivfflat": lambda: IVFFlatIndex(DIM, nlist=16, nprobe=6),
    "ivfpq": lambda: IVFPQIndex(DIM, nlist=16, m=16, nbits=5, nprobe=6, k_factor=8),
    "torch": lambda: TorchTopKIndex(DIM),
}
pytestmark = pytest.mark.usefixtures("faiss_one_thread")

RECALL_FLOOR = {"exact": 1.0, "torch": 1.0, "hnsw": 0.95, "ivfflat": 0.9, "ivfpq": 0.9}
CATALOG = clustered_catalog(2000, DIM, 40, n_clusters=20, seed=7)


@pytest.fixture(params=sorted(FACTORIES))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def built(kind: str) -> ItemIndex:
    index = FACTORIES[kind]()
    index.build(CATALOG.vectors, CATALOG.ids)
    return index


def _true_scores(queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """float64 inner products of each query with the vectors of the ids returned for it."""
    row_of = {int(i): r for r, i in enumerate(CATALOG.ids)}
    rows = np.vectorize(lambda i: row_of.get(int(i), 0))(ids)
    vecs = CATALOG.vectors.astype(np.float64)[rows]
    return np.einsum("bd,bkd->bk", queries.astype(np.float64), vecs)


def _check_results(index: ItemIndex, queries: np.ndarray, scores: np.ndarray, ids: np.ndarray):
    valid = ids >= 0
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert np.isin(ids[valid], CATALOG.ids).all()  # caller ids, never row numbers
    assert np.all(np.isneginf(scores[~valid]))
    np.testing.assert_allclose(scores[valid], _true_scores(queries, ids)[valid], atol=TOL)
    for row in range(scores.shape[0]):  # best first, valid results before the padding
        n_valid = int(valid[row].sum())
        assert valid[row, :n_valid].all()
        assert np.all(np.diff(scores[row, :n_valid]) <= TOL)


def test_top_k_against_brute_force(built: ItemIndex, kind: str) -> None:
    scores, ids = built.search(CATALOG.queries, K)
    assert scores.shape == ids.shape == (len(CATALOG.queries), K)
    _check_results(built, CATALOG.queries, scores, ids)
    truth_scores, truth_ids = exact_top_k(CATALOG.queries, CATALOG.vectors, CATALOG.ids, K)
    recall = np.mean([np.isin(t, f).mean() for t, f in zip(truth_ids, ids, strict=True)])
    assert recall >= RECALL_FLOOR[kind]
    if built.exact:  # the k-th best score is exact, so the set is a top k up to ties
        np.testing.assert_allclose(scores, truth_scores, atol=TOL)


def test_a_catalog_vector_finds_itself_first(built: ItemIndex) -> None:
    """Unit vectors: x . x = 1 > x . y for every other y, so item i is its own top 1."""
    rows = np.arange(0, 2000, 97)
    scores, ids = built.search(CATALOG.vectors[rows], 1)
    assert ids[:, 0].tolist() == CATALOG.ids[rows].tolist()
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=TOL)


def test_add_in_batches_keeps_ids(kind: str) -> None:
    index = FACTORIES[kind]()
    index.add(CATALOG.vectors[:1500], CATALOG.ids[:1500])
    index.add(CATALOG.vectors[1500:], CATALOG.ids[1500:])
    assert len(index) == 2000
    _, ids = index.search(CATALOG.vectors[1990:], 1)
    assert ids[:, 0].tolist() == CATALOG.ids[1990:].tolist()
    with pytest.raises(IndexInputError, match=f"id {CATALOG.ids[3]} is already in the index"):
        index.add(CATALOG.vectors[:1], CATALOG.ids[3:4])


def test_exclusion_filters_even_the_whole_top(built: ItemIndex) -> None:
    queries = CATALOG.queries[:6]
    _, truth = exact_top_k(queries, CATALOG.vectors, CATALOG.ids, 60)
    # query 0: nothing; 1: its top 8; 2: its top 60; 3: a set; 4: every item but 5; 5: all
    others = np.setdiff1d(CATALOG.ids, truth[4, :5])
    exclude = [None, truth[1, :8], truth[2], set(truth[3, :30].tolist()), others, CATALOG.ids]
    scores, ids = built.search(queries, K, exclude=exclude)
    _check_results(built, queries, scores, ids)
    for row, excl in enumerate(exclude):
        assert not np.isin(ids[row], np.asarray(list(excl) if excl is not None else [])).any()
    assert (ids[4] >= 0).sum() <= 5 and (ids[5] == -1).all()
    if built.exact:
        for row, excl in enumerate(exclude[:4]):
            kept = ~np.isin(CATALOG.ids, np.asarray(list(excl) if excl is not None else []))
            want, _ = exact_top_k(queries[row : row + 1], CATALOG.vectors[kept], CATALOG.ids, K)
            np.testing.assert_allclose(scores[row], want[0], atol=TOL)
        assert sorted(ids[4, :5].tolist()) == sorted(truth[4, :5].tolist())


def test_k_beyond_the_catalog_pads(kind: str) -> None:
    index = FACTORIES[kind]()
    index.build(CATALOG.vectors[:20], CATALOG.ids[:20])
    scores, ids = index.search(CATALOG.queries[:3], 50)
    assert scores.shape == ids.shape == (3, 50)
    for row in range(3):
        assert sorted(ids[row, :20].tolist()) == sorted(CATALOG.ids[:20].tolist())
    assert (ids[:, 20:] == -1).all() and np.isneginf(scores[:, 20:]).all()


def test_empty_catalog(kind: str, tmp_path: Path) -> None:
    index = FACTORIES[kind]()
    index.build(np.empty((0, DIM), np.float32), np.empty(0, np.int64))
    assert len(index) == 0
    for idx in (index, load_index(index.save(tmp_path / "empty"))):
        scores, ids = idx.search(CATALOG.queries[:2], 3)
        assert (ids == -1).all() and np.isneginf(scores).all()


def test_save_load_round_trip(built: ItemIndex, tmp_path: Path) -> None:
    path = built.save(tmp_path / "idx")
    assert sorted(p.name for p in path.iterdir()) == ["ids.npy", "index.faiss", "index.json"]
    loaded = ItemIndex.load(path)
    assert type(loaded) is type(built) and len(loaded) == len(built)
    assert loaded.describe() == built.describe()
    exclude = [CATALOG.ids[:50]] * len(CATALOG.queries)
    for a, b in zip(
        built.search(CATALOG.queries, K, exclude),
        loaded.search(CATALOG.queries, K, exclude),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_search_params_change_without_rebuild(built: ItemIndex, tmp_path: Path) -> None:
    if not isinstance(built, HNSWIndex | IVFFlatIndex | IVFPQIndex):
        pytest.skip("no search-time parameters")
    name = built.search_params[0]
    built.set_search_params(**{name: 3})
    assert built.params[name] == 3 and load_index(built.save(tmp_path / "i")).params[name] == 3
    with pytest.raises(IndexInputError, match="'M' is not one of"):
        built.set_search_params(M=3)


BAD = {
    "wrong dim": (
        lambda i: i.build(np.ones((3, DIM + 1), np.float32), np.arange(3)),
        "dimension 33",
    ),
    "nan vector": (lambda i: i.build(np.full((3, DIM), np.nan), np.arange(3)), "row 0 holds NaN"),
    "ids length": (
        lambda i: i.build(np.ones((3, DIM)), np.arange(2)),
        r"ids: expected shape \[3\]",
    ),
    "duplicate ids": (lambda i: i.build(np.ones((3, DIM)), np.array([5, 6, 5])), "id 5 appears"),
    "negative ids": (lambda i: i.build(np.ones((2, DIM)), np.array([1, -1])), "must be >= 0"),
    "float ids": (lambda i: i.build(np.ones((2, DIM)), np.array([1.0, 2.0])), "integers"),
    "query dim": (lambda i: i.search(np.ones((1, 4)), 1), "dimension 4"),
    "1-D query": (lambda i: i.search(np.ones(DIM), 1), "reshape"),
    "inf query": (lambda i: i.search(np.array([[np.inf] * DIM]), 1), "NaN or inf"),
    "k zero": (lambda i: i.search(np.ones((1, DIM)), 0), "k must be a positive"),
    "exclude length": (lambda i: i.search(np.ones((2, DIM)), 1, [None]), "1 entries for 2"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_a_clear_value_error(kind: str, case: str) -> None:
    call, message = BAD[case]
    with pytest.raises(ValueError, match=message) as err:
        call(FACTORIES[kind]())
    assert isinstance(err.value, IndexInputError)


def test_a_bad_rebuild_keeps_the_old_contents(built: ItemIndex) -> None:
    with pytest.raises(IndexInputError):
        built.build(np.ones((2, DIM)), np.array([1, 1]))
    assert len(built) == 2000 and built.search(CATALOG.vectors[:1], 1)[1][0, 0] == CATALOG.ids[0]


@pytest.mark.skipif(faiss_gpu_count() == 0, reason="FAISS sees no GPU")
def test_gpu_search_matches_cpu() -> None:
    gpu, cpu = ExactIndex(DIM, gpu=True), ExactIndex(DIM, gpu=False)
    for index in (gpu, cpu):
        index.build(CATALOG.vectors, CATALOG.ids)
    np.testing.assert_allclose(
        gpu.search(CATALOG.queries, K)[0], cpu.search(CATALOG.queries, K)[0], atol=TOL
    )
    assert gpu.describe()["device"] == "gpu"
