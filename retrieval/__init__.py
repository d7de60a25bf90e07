"""tailored.retrieval: item indexes (exact, HNSW, IVF-Flat, IVF-PQ, torch top-k), how to
choose one, and the embedding refresh's predict loop (:mod:`.embed`, which imports torch and
the two-tower model from ``tailored.train``).

Importing this package imports FAISS and numpy but not torch: :class:`TorchTopKIndex`
imports torch when one is constructed.
"""

from tailored.retrieval._checks import IndexInputError
from tailored.retrieval.choose import (
    EXACT_MAX_ITEMS,
    BuiltIndex,
    IndexChoice,
    build_index,
    choose_index,
    measure_recall,
    search_seconds,
    tolerant_recall,
)
from tailored.retrieval.faiss_indexes import (
    ExactIndex,
    HNSWIndex,
    faiss_gpu_count,
    set_num_threads,
)
from tailored.retrieval.index import Exclude, ItemIndex, load_index
from tailored.retrieval.ivfflat import IVFFlatIndex
from tailored.retrieval.ivfpq import IVFPQIndex
from tailored.retrieval.torch_index import TorchTopKIndex

__all__ = [
    "EXACT_MAX_ITEMS",
    "BuiltIndex",
    "ExactIndex",
    "Exclude",
    "HNSWIndex",
    "IVFFlatIndex",
    "IVFPQIndex",
    "IndexChoice",
    "IndexInputError",
    "ItemIndex",
    "TorchTopKIndex",
    "build_index",
    "choose_index",
    "faiss_gpu_count",
    "load_index",
    "measure_recall",
    "search_seconds",
    "set_num_threads",
    "tolerant_recall",
]
