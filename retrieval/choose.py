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

Overrides (a config table) replace any default by key; ``kind`` picks the kind. With ``kind``
left at "auto", parameters of the kind not chosen are ignored (a small catalog simply gets
the exact index); a key no kind knows is an error.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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


def _tune(
    index: Any, queries: np.ndarray, measure: Callable[[np.ndarray], float], k: int, target: float
) -> float:
    """Raise the search-time knobs until ``measure`` (a recall@k of the found ids) reaches
    ``target``: each step doubles the knob that gains most (IVF: nprobe, and IVF-PQ's refine
    shortlist k_factor; HNSW: efSearch), and tuning stops where no knob gains at least
    ``_MIN_GAIN``: a PQ-limited index does not scan every cell for nothing. An IVF index
    visits at most a quarter of its cells (:data:`IVF_MAX_PROBED`): past that a search costs
    about as much as the exact scan, so an index that misses the target there is left at
    the cap with a warning (embeddings that cluster poorly; ``[serve] index_search`` or an
    exact index are the choices then). Returns the recall reached."""
    recall = measure(index.search(queries, k)[1])
    limits: dict[str, int] = {"efSearch": _MAX_EF_SEARCH} if index.kind == "hnsw" else {}
    if index.kind in ("ivfflat", "ivfpq"):
        cells = int(index.describe()["effective"]["nlist"])  # one serialization of the index
        limits["nprobe"] = max(1, int(cells * IVF_MAX_PROBED))
        if index.kind == "ivfpq":
            limits["k_factor"] = _MAX_K_FACTOR
    while recall < target:
        best: tuple[float, str, int] | None = None
        for knob, limit in limits.items():
            before = int(index.params[knob])
            if before >= limit:
                continue
            index.set_search_params(**{knob: min(limit, 2 * before)})
            gained = measure(index.search(queries, k)[1])
            index.set_search_params(**{knob: before})
            if best is None or gained > best[0]:
                best = (gained, knob, min(limit, 2 * before))
        if best is None or best[0] - recall < _MIN_GAIN:
            break
        recall, knob, value = best
        index.set_search_params(**{knob: value})
    if recall < target:
        _log.warning(
            "%s index: recall@%d %.3f after tuning %s, short of the target %.3f",
            index.kind,
            k,
            recall,
            {knob: index.params[knob] for knob in limits},
            target,
        )
    return recall


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

    def describe(self) -> dict[str, Any]:
        return {
            **self.index.describe(),
            "reason": self.choice.reason,
            "build_seconds": round(self.build_seconds, 3),
            "recall": self.recall,
            "recall_k": self.recall_k,
            "recall_tolerant": self.recall_tolerant,
            "recall_epsilon": RECALL_EPSILON if self.recall_tolerant is not None else None,
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
) -> BuiltIndex:
    """Choose (:func:`choose_index`), build over ``vectors`` (float ``[N, d]``) and ``ids``
    (int64 ``[N]``) and, when the index is approximate and ``sample_queries`` (float
    ``[B, d]``) are given, measure recall@k against an exact index built for the purpose.
    With ``target_recall``, a search-time knob below it is raised first (see module doc);
    the index's ``params`` then hold the value used."""
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

        if target_recall is not None:
            _tune(index, sample_queries, tolerant, k, target_recall)
        found = index.search(sample_queries, k)[1]
        built.recall = _recall(found, truth)
        built.recall_tolerant = tolerant(found)
        built.recall_k = k
    return built
