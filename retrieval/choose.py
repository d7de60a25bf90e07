"""Which index for a catalog, building it, and how good an approximate one is.

The rule (:func:`choose_index`), for ``N`` items of dimension ``d``:

* ``N < 100,000``: ``exact``. A flat scan of 100k x 64 floats is ~2 ms per query on one core,
  and exact needs no training and no recall check.
* otherwise ``ivfflat`` (IVF over the float vectors): ``nlist`` = the power of two nearest
  ``4 sqrt(N)`` (4,096 at 1M), ``nprobe = nlist / 512`` (at least 8). Its scores are exact and
  its recall is limited only by the cells visited. It replaced IVF-PQ with exact re-scoring
  as the default, which keeps the same float vectors plus its codes: at 1M x 64 IVF-Flat was
  1.6-2.1x as fast at equal nprobe and found more (``benchmarks/serving/index_bench.py``,
  clustered data), and 2.5x as fast at serving depth, for more recall, on trained embeddings
  (``benchmarks/serving/serve_index_sweep.py``, nprobe 128). ``ivfpq`` (``m = d / 4`` sub-vectors of
  8 bits, ``k_factor = 4``) and HNSW are one override away. nprobe is the knob least sure to
  carry over to real embeddings, which cluster less: ``build_index(...,
  target_recall=0.95)`` doubles it until the recall measured on sample queries reaches the
  target, up to a quarter of the cells (:data:`IVF_MAX_PROBED`; a warning if it falls short).

A latency budget bounds that tuning: with ``budget_ms``, a setting is taken only if one search
(batch 1, one thread, ``k`` deep: the median over the sample queries) stays within it, and a
starting setting over the budget is narrowed first. So the index serves the best recall the
budget affords rather than the target at any price (at 1M x 64 the target alone chose nprobe
1,024 of 4,096 cells: 4 ms a search, a quarter of the served rate). The build records the
setting, its recall and its time, and every step tried (:meth:`BuiltIndex.describe`).

Overrides (a config table) replace any default by key; ``kind`` picks the kind. With ``kind``
left at "auto", parameters of the kind not chosen are ignored (a small catalog simply gets
the exact index); a key no kind knows is an error.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tailored.errors import ConfigError
from tailored.retrieval._checks import IndexInputError
from tailored.retrieval.index import ItemIndex

__all__ = [
    "EXACT_MAX_ITEMS",
    "BuiltIndex",
    "IndexChoice",
    "build_index",
    "choose_index",
    "measure_recall",
    "search_seconds",
    "tolerant_recall",
]

EXACT_MAX_ITEMS = 100_000
_MAX_EF_SEARCH = 4096
_MAX_K_FACTOR = 64  # IVF-PQ refine shortlist: k * k_factor re-scored exactly
_MIN_GAIN = 0.005  # a knob doubled for less recall than this is not worth its cost
# the share of an IVF index's cells tuning may visit: at 1M x 64 on the serving benchmark's
# embeddings (benchmarks/serving/serve_index_sweep.py), IVF-Flat searched 512 of 4,096 cells
# in 2.0 ms and 2,048 in 7.7 ms, against 8.3 ms for the exact index
IVF_MAX_PROBED = 0.25
_KINDS = ("exact", "hnsw", "ivfflat", "ivfpq", "torch")
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexChoice:
    """An index kind and its constructor parameters, with the reason it was chosen."""

    kind: str
    params: dict[str, Any]
    reason: str

    def create(self, dim: int) -> ItemIndex:
        """An empty index of this kind for vectors of dimension ``dim``."""
        return ItemIndex.for_kind(self.kind)(dim, **self.params)


def _defaults(kind: str, n_items: int, dim: int) -> dict[str, Any]:
    if kind == "hnsw":
        return {"M": 32, "efConstruction": 80, "efSearch": 128}
    nlist = 2 ** round(math.log2(max(16.0, 4 * math.sqrt(max(n_items, 1)))))
    if kind == "ivfflat":
        return {"nlist": nlist, "nprobe": max(8, nlist // 512)}
    if kind == "ivfpq":
        m = max(i for i in range(1, max(1, dim // 4) + 1) if dim % i == 0)
        return {"nlist": nlist, "m": m, "nbits": 8, "nprobe": max(8, nlist // 512), "k_factor": 4}
    return {}


def choose_index(n_items: int, dim: int, overrides: Mapping[str, Any] | None = None) -> IndexChoice:
    """The index kind and parameters for ``n_items`` vectors of dimension ``dim`` (see the
    module docstring for the rule); ``overrides`` replace defaults by key."""
    rest = dict(overrides or {})
    kind = str(rest.pop("kind", "auto"))
    if kind not in (*_KINDS, "auto"):
        raise ConfigError(f"index kind {kind!r} is not one of {['auto', *_KINDS]}")
    auto = kind == "auto"
    if auto:
        kind = "exact" if n_items < EXACT_MAX_ITEMS else "ivfflat"
        reason = f"{n_items:,} items {'<' if kind == 'exact' else '>='} {EXACT_MAX_ITEMS:,}"
    else:
        reason = "set by configuration"
    params = _defaults(kind, n_items, dim)
    known = {key for other in _KINDS for key in _defaults(other, n_items, dim)}
    ignored = []
    for key, value in rest.items():
        if key in params:
            params[key] = value
        elif key not in known or not auto:
            raise ConfigError(
                f"index parameter {key!r} does not apply to kind {kind!r}; "
                f"its parameters: {sorted(params) or 'none'}"
            )
        else:  # another kind's, for when auto picks it: said where the choice is recorded
            ignored.append(key)
    if ignored:
        reason += f"; {', '.join(sorted(ignored))} ignored (not {kind} parameters)"
    return IndexChoice(kind, params, reason)


def measure_recall(index: ItemIndex, exact: ItemIndex, queries: np.ndarray, k: int) -> float:
    """Mean over queries of |index's top k ∩ exact top k| / |exact top k| (queries float
    ``[B, d]``); 1.0 for an empty catalog."""
    return _recall(index.search(queries, k)[1], exact.search(queries, k)[1])


RECALL_EPSILON = 1e-3  # ann-benchmarks' default tolerance


def tolerant_recall(
    found: np.ndarray,
    truth_scores: np.ndarray,
    vectors: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    epsilon: float = RECALL_EPSILON,
) -> float:
    """Recall@k that does not count ties against an index, as ann-benchmarks defines it: a
    returned item is a hit when its exact score is at least the exact k-th best score minus
    ``epsilon``. Where many items score (nearly) the same at the cut (items embedded from the
    same metadata), which of them the exact top k holds is arbitrary, and the strict recall
    (:func:`measure_recall`) then measures that arbitrariness, not the index.

    ``found``: int64 ``[B, k]`` ids from the index (-1 padded); ``truth_scores``: float
    ``[B, k]`` exact top-k scores (-inf padded); ``vectors``/``ids``: the catalog."""
    return _tolerant(found, truth_scores, vectors, _IdRows(ids), queries, epsilon)


class _IdRows:
    """Catalog ids -> rows, sorted once (tuning measures recall many times)."""

    def __init__(self, ids: np.ndarray) -> None:
        self.order = np.argsort(ids, kind="stable")
        self.sorted = ids[self.order]

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(self.sorted, ids), 0, len(self.sorted) - 1)
        return self.order[pos[self.sorted[pos] == ids]]


def _tolerant(
    found: np.ndarray,
    truth_scores: np.ndarray,
    vectors: np.ndarray,
    rows_of: _IdRows,
    queries: np.ndarray,
    epsilon: float = RECALL_EPSILON,
) -> float:
    hits, total = 0, 0
    for q, got, want in zip(queries, found, truth_scores, strict=True):
        want = want[np.isfinite(want)]
        if not want.size:
            continue
        scores = vectors[rows_of(got[got >= 0])] @ q
        hits += min(int((scores >= want[-1] - epsilon).sum()), want.size)
        total += want.size
    return hits / total if total else 1.0


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """found, truth: int64 ``[B, k]`` ids, ``-1`` padded."""
    hits, total = 0, 0
    for got, want in zip(found, truth, strict=True):
        want = want[want >= 0]
        hits += int(np.isin(want, got).sum())
        total += want.size
    return hits / total if total else 1.0


_TIMED_QUERIES = 200  # single-query searches timed per setting (their median is kept)

SearchTimer = Callable[[ItemIndex, np.ndarray, int], float]


def search_seconds(index: ItemIndex, queries: np.ndarray, k: int) -> float:
    """The median time of one search (batch 1, ``k`` deep) over up to :data:`_TIMED_QUERIES`
    of ``queries``, on one FAISS thread (as a loaded server with ``[serve] index_threads =
    1`` runs it; concurrent requests share the cores), after one untimed search."""
    import faiss

    sample = np.ascontiguousarray(queries[:_TIMED_QUERIES], dtype=np.float32)
    if not len(sample):
        return 0.0
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.search(sample[:1], k)
        times = []
        for row in range(len(sample)):
            start = time.perf_counter()
            index.search(sample[row : row + 1], k)
            times.append(time.perf_counter() - start)
    finally:
        faiss.omp_set_num_threads(threads)
    return float(np.median(times))


@dataclass
class Tuning:
    """How the search-time parameters were chosen: each setting measured (its parameters,
    tolerant recall@k and ms per search), the budget, and why tuning stopped."""

    budget_ms: float | None
    stopped: str = ""  # "target reached", "budget", "no gain", "cap" or "not tuned"
    steps: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"budget_ms": self.budget_ms, "stopped": self.stopped, "steps": self.steps}


def _knob_limits(index: Any) -> dict[str, int]:
    limits: dict[str, int] = {"efSearch": _MAX_EF_SEARCH} if index.kind == "hnsw" else {}
    if index.kind in ("ivfflat", "ivfpq"):
        cells = int(index.describe()["effective"]["nlist"])  # one serialization of the index
        limits["nprobe"] = max(1, int(cells * IVF_MAX_PROBED))
        if index.kind == "ivfpq":
            limits["k_factor"] = _MAX_K_FACTOR
    return limits


def _tune(
    index: Any,
    queries: np.ndarray,
    measure: Callable[[np.ndarray], float],
    k: int,
    target: float | None,
    budget_ms: float | None,
    timer: SearchTimer,
) -> tuple[float, float, Tuning]:
    """Move the search-time knobs (IVF: nprobe, and IVF-PQ's refine shortlist k_factor; HNSW:
    efSearch) to the best ``measure`` (a recall@k of the found ids) within ``budget_ms`` per
    search, stopping once it reaches ``target``.

    A start over the budget is narrowed first: each step halves the knob that loses least.
    Then each step doubles the knob that gains most among those whose doubled setting stays
    within the budget, and tuning stops where none gains at least ``_MIN_GAIN`` (a PQ-limited
    index does not scan every cell for nothing). An IVF index visits at most a quarter of its
    cells (:data:`IVF_MAX_PROBED`): past that a search costs about as much as the exact scan.
    An index left short of the target says why in a warning (``[serve] index_search``, a
    larger budget or an exact index are the choices then). Returns (recall, seconds per
    search, the tuning record)."""
    limits = _knob_limits(index)
    budget = budget_ms / 1e3 if budget_ms else None
    tuning = Tuning(budget_ms)

    def trial(params: dict[str, int]) -> tuple[float, float]:
        before = {knob: int(index.params[knob]) for knob in params}
        index.set_search_params(**params)
        got = (measure(index.search(queries, k)[1]), timer(index, queries, k))
        tuning.steps.append(
            {
                "params": {knob: int(index.params[knob]) for knob in limits},
                "recall_tolerant": round(got[0], 4),
                "search_ms": round(got[1] * 1e3, 4),
            }
        )
        index.set_search_params(**before)
        return got

    recall, seconds = trial({})
    while budget is not None and seconds > budget:  # narrow a start the budget cannot afford
        options = []
        for knob in limits:
            before = int(index.params[knob])
            if before > 1:
                options.append((*trial({knob: before // 2}), knob, before // 2))
        if not options:
            break
        recall, seconds, knob, value = max(options, key=lambda o: (o[0], -o[1]))
        index.set_search_params(**{knob: value})
    stopped = "target reached"
    while target is not None and recall < target:
        best: tuple[float, float, str, int] | None = None
        over_budget = capped = False
        for knob, limit in limits.items():
            before = int(index.params[knob])
            if before >= limit:
                capped = True
                continue
            gained, cost = trial({knob: min(limit, 2 * before)})
            if budget is not None and cost > budget:
                over_budget = True
                continue
            if best is None or gained > best[0]:
                best = (gained, cost, knob, min(limit, 2 * before))
        if best is None or best[0] - recall < _MIN_GAIN:
            stopped = "budget" if over_budget else "cap" if capped and best is None else "no gain"
            break
        recall, seconds, knob, value = best
        index.set_search_params(**{knob: value})
    if budget is not None and seconds > budget:
        stopped = "budget"
    tuning.stopped = stopped
    settings = {knob: int(index.params[knob]) for knob in limits}
    if target is not None and recall < target:
        why = {
            "budget": f"the search budget of {budget_ms} ms allows no wider search",
            "cap": f"an IVF search visits at most {IVF_MAX_PROBED:.0%} of its cells",
            "no gain": "widening the search gains nothing more",
        }[stopped]
        _log.warning(
            "%s index: recall@%d %.3f at %s (%.3f ms a search), short of the target %.3f: %s",
            index.kind,
            k,
            recall,
            settings,
            seconds * 1e3,
            target,
            why,
        )
    elif budget is not None and seconds > budget:
        _log.warning(
            "%s index: %.3f ms a search at %s, over the budget of %s ms at its narrowest",
            index.kind,
            seconds * 1e3,
            settings,
            budget_ms,
        )
    return recall, seconds, tuning


@dataclass
class BuiltIndex:
    """An index, how it was chosen, its build time in seconds and, when approximate and
    measured, its recall@k against exact search (stored beside it in a bundle)."""

    index: ItemIndex
    choice: IndexChoice
    build_seconds: float
    recall: float | None = None  # strict: the exact top k's ids found
    recall_k: int | None = None
    recall_tolerant: float | None = None  # ties within RECALL_EPSILON count (tuned on)
    search_ms: float | None = None  # one search at the kept setting (see search_seconds)
    tuning: Tuning | None = None

    def describe(self) -> dict[str, Any]:
        return {
            **self.index.describe(),
            "reason": self.choice.reason,
            "build_seconds": round(self.build_seconds, 3),
            "recall": self.recall,
            "recall_k": self.recall_k,
            "recall_tolerant": self.recall_tolerant,
            "recall_epsilon": RECALL_EPSILON if self.recall_tolerant is not None else None,
            "search_ms": None if self.search_ms is None else round(self.search_ms, 4),
            "tuning": None if self.tuning is None else self.tuning.describe(),
        }


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    *,
    kind: str = "auto",
    params: Mapping[str, Any] | None = None,
    sample_queries: np.ndarray | None = None,
    k: int = 100,
    target_recall: float | None = None,
    budget_ms: float | None = None,
    timer: SearchTimer = search_seconds,
) -> BuiltIndex:
    """Choose (:func:`choose_index`), build over ``vectors`` (float ``[N, d]``) and ``ids``
    (int64 ``[N]``) and, when ``sample_queries`` (float ``[B, d]``) are given, time one
    search (``timer``, :func:`search_seconds` by default) and, for an approximate index,
    measure recall@k against an exact index built for the purpose. With ``target_recall``
    and/or ``budget_ms``, the search-time knobs are tuned first (see module doc); the
    index's ``params`` then hold the values used."""
    shape = np.shape(vectors)
    if len(shape) != 2:
        raise IndexInputError(f"vectors: expected shape [n, d], got {shape}")
    choice = choose_index(shape[0], shape[1], {**(params or {}), "kind": kind})
    start = time.perf_counter()
    index = choice.create(shape[1])
    index.build(vectors, ids)
    built = BuiltIndex(index, choice, time.perf_counter() - start)
    if not index.exact and sample_queries is not None:
        exact = ItemIndex.for_kind("exact")(shape[1])
        exact.build(vectors, ids)
        truth_scores, truth = exact.search(sample_queries, k)
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        rows_of = _IdRows(np.asarray(ids, dtype=np.int64))

        def tolerant(found: np.ndarray) -> float:
            return _tolerant(found, truth_scores, vecs, rows_of, sample_queries)

        if target_recall is not None or budget_ms is not None:
            _, seconds, built.tuning = _tune(
                index, sample_queries, tolerant, k, target_recall, budget_ms, timer
            )
            built.search_ms = seconds * 1e3
        found = index.search(sample_queries, k)[1]
        built.recall = _recall(found, truth)
        built.recall_tolerant = tolerant(found)
        built.recall_k = k
    if sample_queries is not None and built.search_ms is None:
        built.search_ms = timer(index, sample_queries, k) * 1e3
    return built
