"""choose_index's rule, measure_recall against a hand-computed answer, build_index, and
that the index code keeps torch out of a serving process."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tailored.errors import ConfigError
from tailored.retrieval import (
    ExactIndex,
    HNSWIndex,
    ItemIndex,
    IVFFlatIndex,
    IVFPQIndex,
    build_index,
    choose_index,
    load_index,
    measure_recall,
    search_seconds,
    tolerant_recall,
)
from tailored.retrieval.synthetic import clustered_catalog

pytestmark = pytest.mark.usefixtures("faiss_one_thread")


def test_small_catalogs_get_the_exact_index() -> None:
    choice = choose_index(99_999, 64)
    assert (choice.kind, choice.params) == ("exact", {})
    assert isinstance(choice.create(64), ExactIndex)


def test_large_catalogs_get_ivfflat_sized_by_the_rule() -> None:
    # 4 sqrt(1e6) = 4000 -> nlist 4096; nprobe max(8, 4096 / 512) = 8
    choice = choose_index(1_000_000, 64)
    assert choice.kind == "ivfflat"
    assert choice.params == {"nlist": 4096, "nprobe": 8}
    assert isinstance(choice.create(64), IVFFlatIndex)
    # 4 sqrt(1e8) = 40000 -> 32768; 4 sqrt(1e5) = 1265 -> 1024, nprobe 8; at 1e8, nprobe 64
    assert choose_index(100_000_000, 96).params["nlist"] == 32768
    assert choose_index(100_000, 64).params["nprobe"] == 8
    assert choose_index(100_000_000, 64).params["nprobe"] == 64


def test_ivfpq_is_one_override_away_sized_by_the_rule() -> None:
    # m = 64 / 4 = 16; d = 96 -> m = 24; d = 75: divisors <= 18 -> m = 15
    choice = choose_index(1_000_000, 64, {"kind": "ivfpq"})
    assert choice.params == {"nlist": 4096, "m": 16, "nbits": 8, "nprobe": 8, "k_factor": 4}
    assert isinstance(choice.create(64), IVFPQIndex)
    assert choose_index(100_000_000, 96, {"kind": "ivfpq"}).params["m"] == 24
    assert choose_index(200_000, 75, {"kind": "ivfpq"}).params["m"] == 15
    # auto: parameters only IVF-PQ has are ignored by the IVF-Flat it picks, not an error
    flat = choose_index(1_000_000, 64, {"k_factor": 16, "m": 8, "nprobe": 16})
    assert flat.params == {"nlist": 4096, "nprobe": 16}
    assert flat.reason == "1,000,000 items >= 100,000; k_factor, m ignored (not ivfflat parameters)"
    with pytest.raises(ConfigError, match="'k_factor' does not apply to kind 'ivfflat'"):
        choose_index(1_000_000, 64, {"kind": "ivfflat", "k_factor": 16})


def test_overrides_by_key() -> None:
    assert choose_index(1_000_000, 64, {"nprobe": 16}).params["nprobe"] == 16
    hnsw = choose_index(10, 8, {"kind": "hnsw", "efSearch": 300})
    assert hnsw.params == {"M": 32, "efConstruction": 80, "efSearch": 300}
    assert isinstance(hnsw.create(8), HNSWIndex)
    # auto: a small catalog is exact, and IVF parameters meant for a large one do not apply
    assert choose_index(1000, 64, {"nprobe": 16}).kind == "exact"
    with pytest.raises(ConfigError, match="'nprobe' does not apply to kind 'hnsw'"):
        choose_index(1000, 64, {"kind": "hnsw", "nprobe": 16})
    with pytest.raises(ConfigError, match="'probes' does not apply"):
        choose_index(1000, 64, {"probes": 16})
    with pytest.raises(ConfigError, match="kind 'annoy' is not one of"):
        choose_index(1000, 64, {"kind": "annoy"})


def test_measure_recall_by_hand() -> None:
    # catalog e1, e2, -e1, -e2; the "approximate" index only holds e1 and -e1.
    # query (1, .5): truth top 2 = e1, e2; approx gives e1, -e1 -> 1 of 2
    # query (.5, 1): truth top 2 = e2, e1; approx gives e1, -e1 -> 1 of 2; recall 0.5
    vectors = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.float32)
    exact, partial = ExactIndex(2), ExactIndex(2)
    exact.build(vectors, np.array([10, 20, 30, 40]))
    partial.build(vectors[[0, 2]], np.array([10, 30]))
    queries = np.array([[1, 0.5], [0.5, 1]], np.float32)
    assert measure_recall(partial, exact, queries, 2) == 0.5
    assert measure_recall(exact, exact, queries, 2) == 1.0


def test_tolerant_recall_counts_ties_at_the_cut_by_hand() -> None:
    # query (1, 0): scores 1.0 (id 10), 0.5 (20), 0.5 (30), 0.4995 (40), 0 (50).
    # exact top 2 = 10, 20 (ties by position). An index returning 10, 30 finds 1 of 2 ids,
    # but 30 scores as well as the 2nd best: tolerant recall 1. 10, 40 is within 1e-3 too;
    # 10, 50 is not (0 < 0.5 - 1e-3).
    vectors = np.array([[1, 0], [0.5, 1], [0.5, -1], [0.4995, 0], [0, 1]], np.float32)
    ids = np.array([10, 20, 30, 40, 50])
    exact = ExactIndex(2)
    exact.build(vectors, ids)
    q = np.array([[1, 0]], np.float32)
    truth_scores, truth = exact.search(q, 2)
    assert truth.tolist() == [[10, 20]]
    for found, strict, tolerant in (
        ([10, 30], 0.5, 1.0),
        ([10, 40], 0.5, 1.0),
        ([10, 50], 0.5, 0.5),
    ):
        got = np.array([found])
        assert tolerant_recall(got, truth_scores, vectors, ids, q) == tolerant
        hits = np.isin(truth[0], got[0]).sum() / 2
        assert hits == strict
    # padding: a k beyond the catalog counts only real items, and -1 is never a hit
    scores5, _ = exact.search(q, 7)
    assert (
        tolerant_recall(np.array([[10, 20, 30, 40, 50, -1, -1]]), scores5, vectors, ids, q) == 1.0
    )
    assert (
        tolerant_recall(np.array([[10, -1, -1, -1, -1, -1, -1]]), scores5, vectors, ids, q) == 0.2
    )


def test_build_index_measures_recall_of_approximate_indexes() -> None:
    data = clustered_catalog(2000, 16, 30, n_clusters=10, seed=3)
    exact = build_index(data.vectors, data.ids, sample_queries=data.queries, k=10)
    assert exact.choice.kind == "exact" and exact.recall is None
    params = {"nlist": 8, "m": 4, "nbits": 5, "nprobe": 2}
    approx = build_index(
        data.vectors, data.ids, kind="ivfpq", params=params, sample_queries=data.queries, k=10
    )
    assert approx.recall is not None and 0.5 < approx.recall <= 1.0
    assert approx.recall == measure_recall(approx.index, exact.index, data.queries, 10)
    # 50 looser clusters over 32 cells: nprobe 1 finds ~0.6 of the top 10, 16 finds all, so
    # the target doubles it 1 -> 2 -> 4 -> 8 (-> 16) until 0.95 is reached
    loose = clustered_catalog(2000, 16, 30, n_clusters=50, spread=1.0, seed=3)
    tuned = build_index(
        loose.vectors,
        loose.ids,
        kind="ivfpq",
        params={"nlist": 32, "m": 8, "nbits": 5, "nprobe": 1, "k_factor": 16},
        sample_queries=loose.queries,
        k=10,
        target_recall=0.95,
    )
    assert tuned.recall_tolerant is not None and tuned.recall_tolerant >= 0.95
    assert tuned.index.params["nprobe"] in (8, 16)
    truth = ExactIndex(16)
    truth.build(loose.vectors, loose.ids)
    assert tuned.recall == measure_recall(tuned.index, truth, loose.queries, 10)
    assert tuned.recall <= tuned.recall_tolerant  # ties only ever add hits
    # IVF-Flat scores whole cells exactly: nprobe alone is tuned, and every cell is exact
    flat = build_index(
        loose.vectors,
        loose.ids,
        kind="ivfflat",
        params={"nlist": 32, "nprobe": 1},
        sample_queries=loose.queries,
        k=10,
        target_recall=0.95,
    )
    assert flat.recall_tolerant is not None and flat.recall_tolerant >= 0.95
    assert flat.index.params["nprobe"] in (4, 8, 16)
    assert flat.describe()["effective"] == {"nlist": 32}
    assert isinstance(flat.index, IVFFlatIndex)
    flat.index.set_search_params(nprobe=32)
    assert measure_recall(flat.index, truth, loose.queries, 10) == 1.0
    info = approx.describe()
    assert (info["kind"], info["recall_k"], info["effective"]) == (
        "ivfpq",
        10,
        {"nlist": 8, "nbits": 5},
    )


def test_a_catalog_too_small_for_nlist_trains_fewer_cells_and_keeps_them(
    tmp_path: Path,
) -> None:
    data = clustered_catalog(2000, 16, 20, n_clusters=10, seed=4)
    index = IVFFlatIndex(16, nlist=4096, nprobe=64)
    index.build(data.vectors, data.ids)
    assert index.describe()["effective"] == {"nlist": 2000 // 39}  # 39 items a cell at least
    loaded = load_index(index.save(tmp_path / "ivf"))
    assert loaded.describe()["effective"] == {"nlist": 51} and loaded.params["nprobe"] == 64
    for a, b in zip(index.search(data.queries, 10), loaded.search(data.queries, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    exact = ExactIndex(16)
    exact.build(data.vectors, data.ids)
    assert measure_recall(loaded, exact, data.queries, 10) == 1.0  # 64 probes >= 51 cells


def test_ivf_tuning_stops_at_a_quarter_of_the_cells_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # unclustered vectors: no nprobe short of every cell finds the whole exact top 10
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(4000, 16)).astype(np.float32)
    queries = rng.normal(size=(30, 16)).astype(np.float32)
    for kind, params in (
        ("ivfflat", {"nlist": 64, "nprobe": 1}),
        ("ivfpq", {"nlist": 64, "m": 4, "nbits": 5, "nprobe": 1, "k_factor": 8}),
    ):
        caplog.clear()
        with caplog.at_level("WARNING", logger="tailored.retrieval.choose"):
            built = build_index(
                vectors,
                np.arange(4000),
                kind=kind,
                params=params,
                sample_queries=queries,
                k=10,
                target_recall=0.999,
            )
        assert built.index.params["nprobe"] == 16  # 64 cells / 4
        assert built.recall_tolerant is not None and built.recall_tolerant < 0.999
        assert f"{kind} index: recall@10" in caplog.text and "short of the target" in caplog.text


def _cost_per_probe(index: ItemIndex, queries: np.ndarray, k: int) -> float:
    """A stand-in clock for the budget tests: 0.1 ms per cell visited (a real IVF search's
    time grows the same way), so the budget's arithmetic is exact and the test not timing."""
    return 1e-4 * index.params["nprobe"]


def test_tuning_keeps_the_best_recall_the_search_budget_affords(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loose = clustered_catalog(2000, 16, 30, n_clusters=50, spread=1.0, seed=3)
    build = functools.partial(
        build_index, sample_queries=loose.queries, k=10, timer=_cost_per_probe
    )
    unbounded = build(
        loose.vectors,
        loose.ids,
        kind="ivfflat",
        params={"nlist": 32, "nprobe": 1},
        target_recall=0.95,
    )
    wide = unbounded.index.params["nprobe"]
    assert wide in (4, 8, 16) and unbounded.tuning is not None
    assert unbounded.tuning.stopped == "target reached"
    # a budget of 0.25 ms affords 2 cells: the target is not reached, and the log says why
    with caplog.at_level("WARNING", logger="tailored.retrieval.choose"):
        bounded = build(
            loose.vectors,
            loose.ids,
            kind="ivfflat",
            params={"nlist": 32, "nprobe": 1},
            target_recall=0.95,
            budget_ms=0.25,
        )
    assert bounded.index.params["nprobe"] == 2
    assert bounded.search_ms == pytest.approx(0.2)
    assert bounded.recall_tolerant is not None and unbounded.recall_tolerant is not None
    assert bounded.recall_tolerant < 0.95 <= unbounded.recall_tolerant
    assert "search budget of 0.25 ms" in caplog.text
    info = bounded.describe()
    assert info["search_ms"] == pytest.approx(0.2) and info["tuning"]["stopped"] == "budget"
    assert info["tuning"]["budget_ms"] == 0.25
    # every setting measured is on record, the one refused for its cost included
    tried = {step["params"]["nprobe"]: step for step in info["tuning"]["steps"]}
    assert set(tried) == {1, 2, 4} and tried[4]["search_ms"] == pytest.approx(0.4)
    assert tried[2]["recall_tolerant"] == pytest.approx(bounded.recall_tolerant, abs=1e-4)
    # a start the budget cannot afford is narrowed: 32 cells -> 2
    narrowed = build(
        loose.vectors,
        loose.ids,
        kind="ivfflat",
        params={"nlist": 32, "nprobe": 32},
        target_recall=0.95,
        budget_ms=0.25,
    )
    assert narrowed.index.params["nprobe"] == 2 and narrowed.search_ms == pytest.approx(0.2)
    # a budget wide enough changes nothing
    roomy = build(
        loose.vectors,
        loose.ids,
        kind="ivfflat",
        params={"nlist": 32, "nprobe": 1},
        target_recall=0.95,
        budget_ms=10.0,
    )
    assert roomy.index.params["nprobe"] == wide


def test_every_index_built_with_sample_queries_records_its_search_time() -> None:
    data = clustered_catalog(3000, 16, 40, n_clusters=10, seed=6)
    exact = build_index(data.vectors, data.ids, sample_queries=data.queries, k=10)
    assert exact.search_ms is not None and exact.search_ms > 0 and exact.tuning is None
    flat = build_index(
        data.vectors,
        data.ids,
        kind="ivfflat",
        params={"nlist": 16, "nprobe": 1},
        sample_queries=data.queries,
        k=10,
        budget_ms=1e3,
    )
    assert flat.search_ms is not None and flat.search_ms > 0
    assert flat.describe()["search_ms"] == pytest.approx(flat.search_ms, abs=1e-4)
    # timed on one thread, and the process's FAISS threads are given back afterwards
    import faiss

    faiss.omp_set_num_threads(2)
    try:
        assert search_seconds(flat.index, data.queries, 10) > 0
        assert faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(1)


def test_index_code_does_not_import_torch() -> None:
    code = (
        "import sys, numpy as np\n"
        "import tailored.retrieval.index\n"
        "from tailored.retrieval import ItemIndex, build_index\n"
        "b = build_index(np.eye(4, dtype=np.float32), np.arange(4))\n"
        "b.index.search(np.eye(4, dtype=np.float32), 2)\n"
        "ItemIndex.for_kind('torch')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _saved_torch_index(tmp_path: Path) -> Path:
    from tailored.retrieval import TorchTopKIndex

    index = TorchTopKIndex(4, device="cpu")
    index.add(np.eye(4, dtype=np.float32), np.arange(1, 5))
    return index.save(tmp_path / "torch-index")


def test_a_torch_index_imports_torch_only_when_one_is_loaded(tmp_path: Path) -> None:
    """Serving imports no torch unless the bundle's index is the torch one: loading that is
    the explicit request, and it answers searches."""
    path = _saved_torch_index(tmp_path)
    code = (
        "import sys, numpy as np\n"
        "from tailored.bundle.runtime import LoadedBundle\n"
        "from tailored.serve.server import Service\n"
        "from tailored.retrieval import load_index\n"
        "assert 'torch' not in sys.modules, 'torch imported before the index was loaded'\n"
        f"index = load_index({str(path)!r})\n"
        "assert 'torch' in sys.modules\n"
        "print(index.search(np.eye(4, dtype=np.float32)[:1], 1)[1].tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[[1]]"


def test_a_torch_index_without_torch_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = _saved_torch_index(tmp_path)
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # an install without torch: importing it fails\n"
        "from tailored.retrieval import IndexInputError, load_index\n"
        "try:\n"
        f"    load_index({str(path)!r})\n"
        "except IndexInputError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert str(path) in out.stdout
    assert "needs torch" in out.stdout and "pip install torch" in out.stdout
