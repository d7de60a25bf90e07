"""The planted ground truth of a synthetic website, and the questions tests ask of it.

``tailored data synth`` keeps, under ``DATASET/truth/``, the model its events were drawn from
(``.npy`` files, no pickles)::

    user_taste_start.npy    float32 [n_users, dim]      u_start, rows in users.parquet order
    user_taste_delta.npy    float32 [n_users, dim]      delta, the drift over the whole span
    user_segment.npy        int32   [n_users]           demographic segment of each user
    segment_centroids.npy   float32 [n_segments, dim]
    item_factors.npy        float32 [n_items, dim]      v_i, rows in items.parquet order
    item_bias.npy           float32 [n_items]           b_i, the popularity term of the score
    item_category.npy       int32   [n_items]
    category_centroids.npy  float32 [n_categories, dim]
    item_available_from.npy   int64 [n_items]  launch (unix s); INT64_MIN: there all along
    item_available_until.npy  int64 [n_items]  end, exclusive; INT64_MAX: never ends
    truth.json              the score's definition, t0, span, seed, dims, generator settings

The true affinity of user ``u`` for item ``i`` at unix time ``t`` (seconds) is::

    s(u, i, t) = u(t) · v_i + b_i,    u(t) = u_start + clip((t - t0) / span, 0, 1) * delta

Tastes are ``u_start = segment centroid + personal noise`` (segment = gender x age band x
region, so demographics predict tastes without deciding them); ``v_i = category centroid +
item noise``; ``b_i = popularity_strength * (log w_i - mean log w)`` with Zipf exposure weights
``w_i ∝ rank_i ** -zipf``.

Some items exist only part of the span (:func:`draw_windows`): a share launches during it,
a smaller share ends before it ends; no event of an item falls outside its window
``[available_from, available_until)``. Their tastes and factors are drawn like every other
item's, so the planted top-k at a time ranks exactly the items available then
(:func:`true_topk`): at the end of the span that includes the items launched late (the new
items a model must find from few events) and excludes the ended ones. Datasets written before
windows existed have no ``item_available_*.npy``: every item is available all along.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tailored.errors import TailoredError

__all__ = [
    "AGE_BANDS",
    "GENDERS",
    "REGIONS",
    "SynthTruth",
    "TruthWriter",
    "Windows",
    "World",
    "draw_tastes",
    "draw_windows",
    "load_truth",
    "make_world",
    "segment_of",
    "true_topk",
]

TRUTH_VERSION = 1
GENDERS: tuple[str, ...] = ("female", "male", "other")
AGE_BANDS: tuple[tuple[int, int], ...] = (
    (13, 17),
    (18, 24),
    (25, 34),
    (35, 44),
    (45, 54),
    (55, 64),
    (65, 90),
)
REGIONS: tuple[str, ...] = (
    "europe-west",
    "europe-east",
    "north-america",
    "south-america",
    "asia-east",
    "asia-south",
    "africa",
    "oceania",
)
N_SEGMENTS = len(GENDERS) * len(AGE_BANDS) * len(REGIONS)

# Scales of the planted vectors. Each is drawn N(0, I) * scale / dim**0.25, so the dot product
# of two independent ones has standard deviation scale_a * scale_b whatever the dimension.
# Segment effects (additive gender, age, region parts plus a little interaction) carry about
# 55% of the taste variance and personal noise the rest: demographics predict, not decide.
_GENDER, _AGE, _REGION, _INTERACTION, _PERSONAL = 0.45, 0.55, 0.40, 0.30, 0.80
_CATEGORY, _ITEM = 1.0, 0.6
# share of the drift that is a site-wide trend (all users move the same way) vs personal
_TREND_SHARE = 0.3
# an item window's open ends: available_from / available_until with no bound
NO_START, NO_END = np.iinfo(np.int64).min, np.iinfo(np.int64).max


def segment_of(gender: np.ndarray, age_band: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Segment index (int32) from codes into GENDERS, AGE_BANDS and REGIONS."""
    g, a, r = (np.asarray(x, np.int64) for x in (gender, age_band, region))
    return ((g * len(AGE_BANDS) + a) * len(REGIONS) + r).astype(np.int32)


def _gauss(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    dim = shape[-1]
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale / dim**0.25)


@dataclass(frozen=True)
class World:
    """Everything planted except the users' own tastes (which are drawn chunk by chunk)."""

    category_centroids: np.ndarray  # float32 [K, d]
    segment_centroids: np.ndarray  # float32 [N_SEGMENTS, d]
    trend: np.ndarray  # float32 [d], the site-wide part of every user's drift
    item_category: np.ndarray  # int32 [N]
    item_factors: np.ndarray  # float32 [N, d]
    item_bias: np.ndarray  # float32 [N]
    exposure: np.ndarray  # float64 [N], Zipf popularity weights summing to 1

    @property
    def n_items(self) -> int:
        return len(self.item_category)


def make_world(
    rng: np.random.Generator,
    *,
    n_items: int,
    n_categories: int,
    dim: int,
    zipf: float,
    popularity_strength: float,
) -> World:
    """Draw categories, segments and items. Category sizes vary (Gamma(2) shares); every
    category gets an item when ``n_items >= n_categories``."""
    cats = _gauss(rng, (n_categories, dim), _CATEGORY)
    parts = (
        _gauss(rng, (len(GENDERS), dim), _GENDER),
        _gauss(rng, (len(AGE_BANDS), dim), _AGE),
        _gauss(rng, (len(REGIONS), dim), _REGION),
    )
    g, a, r = np.meshgrid(*(np.arange(len(p)) for p in parts), indexing="ij")
    seg = parts[0][g.ravel()] + parts[1][a.ravel()] + parts[2][r.ravel()]
    seg += _gauss(rng, (N_SEGMENTS, dim), _INTERACTION)  # order matches segment_of
    trend = _gauss(rng, (1, dim), 1.0)[0]
    share = rng.gamma(2.0, size=n_categories)
    first = np.arange(min(n_items, n_categories))
    rest = rng.choice(n_categories, size=n_items - len(first), p=share / share.sum())
    item_cat = rng.permutation(np.concatenate([first, rest])).astype(np.int32)
    factors = cats[item_cat] + _gauss(rng, (n_items, dim), _ITEM)
    rank = rng.permutation(n_items)  # popularity does not follow item ids
    log_w = -zipf * np.log1p(rank.astype(np.float64))
    exposure = np.exp(log_w - log_w.max())
    exposure /= exposure.sum()
    bias = (popularity_strength * (log_w - log_w.mean())).astype(np.float32)
    return World(cats, seg.astype(np.float32), trend, item_cat, factors, bias, exposure)


@dataclass(frozen=True)
class Windows:
    """When each item is in the catalog: ``opens[i] <= t < closes[i]`` (unix seconds)."""

    opens: np.ndarray  # int64 [N], NO_START where there all along
    closes: np.ndarray  # int64 [N], NO_END where it never ends

    @classmethod
    def always(cls, n_items: int) -> Windows:
        return cls(np.full(n_items, NO_START, np.int64), np.full(n_items, NO_END, np.int64))

    @property
    def bounded(self) -> bool:
        """Whether any item has a launch or an end."""
        return bool((self.opens != NO_START).any() or (self.closes != NO_END).any())

    def available(self, items: np.ndarray, at: int | np.ndarray) -> np.ndarray:
        """Whether each of ``items`` (rows) is in the catalog at ``at`` (scalar or aligned)."""
        return (self.opens[items] <= at) & (at < self.closes[items])


def draw_windows(
    rng: np.random.Generator, n_items: int, *, t0: int, span: int, launched: float, ended: float
) -> Windows:
    """Launch and end times: ``floor(launched * n_items)`` items launch during the span (at
    ``t0 + span * sqrt(U)``: more of them late, as a catalog grows), ``floor(ended * n_items)``
    others end during it (uniformly); the rest are there all along (at least one when
    ``launched + ended < 1``). Items are chosen at random, whatever their popularity."""
    w = Windows.always(n_items)
    n_new = int(np.floor(launched * n_items + 1e-9))
    n_end = int(np.floor(ended * n_items + 1e-9))
    order = rng.permutation(n_items)
    new, gone = order[:n_new], order[n_new : n_new + n_end]
    w.opens[new] = t0 + 1 + np.floor(np.sqrt(rng.random(n_new)) * (span - 1)).astype(np.int64)
    w.closes[gone] = t0 + 1 + np.floor(rng.random(n_end) * (span - 1)).astype(np.int64)
    return w


def draw_tastes(
    rng: np.random.Generator, segment: np.ndarray, world: World, drift: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(u_start, delta)``, float32 [len(segment), d] each, for users of the given segments."""
    n, dim = len(segment), world.trend.shape[0]
    start = world.segment_centroids[segment] + _gauss(rng, (n, dim), _PERSONAL)
    own = _gauss(rng, (n, dim), 1.0)
    delta = np.float32(drift) * (
        np.float32(_TREND_SHARE**0.5) * world.trend + np.float32((1 - _TREND_SHARE) ** 0.5) * own
    )
    return start, delta.astype(np.float32)


@dataclass(frozen=True)
class SynthTruth:
    """The planted model of one synthetic dataset (arrays may be read-only memory maps)."""

    user_taste_start: np.ndarray  # float32 [n_users, d]
    user_taste_delta: np.ndarray  # float32 [n_users, d]
    user_segment: np.ndarray  # int32 [n_users]
    segment_centroids: np.ndarray  # float32 [n_segments, d]
    item_factors: np.ndarray  # float32 [n_items, d]
    item_bias: np.ndarray  # float32 [n_items]
    item_category: np.ndarray  # int32 [n_items]
    category_centroids: np.ndarray  # float32 [n_categories, d]
    item_available_from: np.ndarray  # int64 [n_items], NO_START where there all along
    item_available_until: np.ndarray  # int64 [n_items], NO_END where it never ends
    t0: int  # unix seconds where u(t) = u_start
    span: int  # seconds from t0 to where u(t) = u_start + delta
    info: dict[str, Any]  # truth.json as written

    @property
    def t_end(self) -> int:
        return self.t0 + self.span

    def available(self, at_time: int | None = None) -> np.ndarray:
        """Which items are in the catalog at ``at_time`` (default: the end of the span),
        bool [n_items]."""
        t = self.t_end if at_time is None else at_time
        return (np.asarray(self.item_available_from) <= t) & (
            t < np.asarray(self.item_available_until)
        )

    def taste(self, user_rows: np.ndarray, at_time: int | np.ndarray | None = None) -> np.ndarray:
        """u(t), float32 [len(user_rows), d]; ``at_time`` (unix s, scalar or one per row)
        defaults to the end of the span."""
        rows = np.asarray(user_rows, np.int64)
        t = self.t_end if at_time is None else at_time
        frac = np.clip((np.asarray(t, np.float64) - self.t0) / self.span, 0.0, 1.0)
        w = np.broadcast_to(frac, rows.shape).astype(np.float32)[:, None]
        return self.user_taste_start[rows] + w * self.user_taste_delta[rows]

    def affinity(
        self, user_rows: np.ndarray, item_rows: np.ndarray, at_time: int | np.ndarray | None = None
    ) -> np.ndarray:
        """s(u, i, t) for aligned pairs, float32 [len(user_rows)]."""
        items = np.asarray(item_rows, np.int64)
        u = self.taste(user_rows, at_time)
        return np.einsum("nd,nd->n", u, self.item_factors[items]) + self.item_bias[items]


def true_topk(
    truth: SynthTruth,
    user_rows: np.ndarray,
    k: int,
    at_time: int | None = None,
    exclude: Sequence[np.ndarray] | None = None,
    *,
    available_only: bool = True,
    block: int = 256,
) -> np.ndarray:
    """The ``k`` items of highest true affinity for each user, best first.

    Returns int64 [len(user_rows), k] item rows (items.parquet order). ``at_time`` defaults
    to the end of the span; ``exclude[j]`` (optional) lists item rows user ``j`` must not get.
    With ``available_only``, items not in the catalog at ``at_time`` (not launched yet, or
    ended) are never among them (they rank last when fewer than ``k`` items remain).
    Scores are computed ``block`` users at a time (block x n_items float32 in memory).
    """
    rows = np.asarray(user_rows, np.int64)
    n_items = len(truth.item_bias)
    if not 0 < k <= n_items:
        raise ValueError(f"k={k} must be in 1..{n_items}")
    if exclude is not None and len(exclude) != len(rows):
        raise ValueError(f"exclude has {len(exclude)} entries for {len(rows)} users")
    out = np.empty((len(rows), k), np.int64)
    v_t = np.ascontiguousarray(truth.item_factors.T)
    bias = np.asarray(truth.item_bias, np.float32)
    if available_only:
        bias = np.where(truth.available(at_time), bias, np.float32(-np.inf))
    for lo in range(0, len(rows), block):
        scores = truth.taste(rows[lo : lo + block], at_time) @ v_t + bias
        if exclude is not None:
            for j, items in enumerate(exclude[lo : lo + block]):
                scores[j, np.asarray(items, np.int64)] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[lo : lo + block] = np.take_along_axis(top, order, axis=1)
    return out


class _NpyAppender:
    """Writes one ``.npy`` file row block by row block, so the whole array is never in memory."""

    def __init__(self, path: Path, dtype: type, shape: tuple[int, int]) -> None:
        self._path, self._dtype, self._shape, self._rows = path, np.dtype(dtype), shape, 0
        self._f: BinaryIO = path.open("wb")
        header = {
            "descr": np.lib.format.dtype_to_descr(self._dtype),
            "fortran_order": False,
            "shape": shape,
        }
        np.lib.format.write_array_header_2_0(self._f, header)

    def append(self, block: np.ndarray) -> None:
        if block.shape[1:] != self._shape[1:]:
            raise ValueError(f"{self._path.name}: block {block.shape}, rows of {self._shape[1:]}")
        self._f.write(np.ascontiguousarray(block, self._dtype).tobytes())
        self._rows += len(block)

    def close(self) -> None:
        self._f.close()
        if self._rows != self._shape[0]:
            raise RuntimeError(f"{self._path.name}: wrote {self._rows} rows of {self._shape[0]}")


class TruthWriter:
    """Writes ``truth/``: the world and segments at once, users' tastes chunk by chunk."""

    def __init__(
        self,
        directory: Path,
        world: World,
        user_segment: np.ndarray,
        info: dict[str, Any],
        windows: Windows | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        windows = windows or Windows.always(world.n_items)
        arrays = {
            "user_segment": user_segment,
            "segment_centroids": world.segment_centroids,
            "item_factors": world.item_factors,
            "item_bias": world.item_bias,
            "item_category": world.item_category,
            "category_centroids": world.category_centroids,
            "item_available_from": windows.opens,
            "item_available_until": windows.closes,
        }
        for name, arr in arrays.items():
            np.save(directory / f"{name}.npy", arr, allow_pickle=False)
        shape = (len(user_segment), world.trend.shape[0])
        self._start = _NpyAppender(directory / "user_taste_start.npy", np.float32, shape)
        self._delta = _NpyAppender(directory / "user_taste_delta.npy", np.float32, shape)
        doc = {
            "format_version": TRUTH_VERSION,
            "score": "s(u, i, t) = u(t) . item_factors[i] + item_bias[i]",
            "taste": "u(t) = user_taste_start[u] + clip((t - t0) / span, 0, 1) "
            "* user_taste_delta[u]",
            "segment": "(gender * len(age_bands) + age_band) * len(regions) + region",
            "availability": "item i is in the catalog at t when item_available_from[i] <= t "
            "< item_available_until[i]; no event of it falls outside",
            "genders": list(GENDERS),
            "age_bands": [list(b) for b in AGE_BANDS],
            "regions": list(REGIONS),
            **info,
        }
        (directory / "truth.json").write_text(json.dumps(doc, indent=2) + "\n")

    def append(self, u_start: np.ndarray, delta: np.ndarray) -> None:
        self._start.append(u_start)
        self._delta.append(delta)

    def close(self) -> None:
        self._start.close()
        self._delta.close()


def load_truth(dataset_dir: Path, *, mmap: bool = True) -> SynthTruth:
    """Read ``DATASET/truth/``; with ``mmap`` the user arrays stay on disk until touched."""
    d = Path(dataset_dir) / "truth"
    if not (d / "truth.json").is_file():
        raise TailoredError(
            f"{dataset_dir}: no truth/truth.json; only datasets written by "
            "`tailored data synth` have a ground truth"
        )
    info = json.loads((d / "truth.json").read_text())
    if info.get("format_version") != TRUTH_VERSION:
        raise TailoredError(
            f"{d / 'truth.json'}: format_version {info.get('format_version')!r}"
            f", this tailored reads {TRUTH_VERSION}"
        )

    def arr(name: str) -> np.ndarray:
        return np.load(d / f"{name}.npy", mmap_mode="r" if mmap else None, allow_pickle=False)

    bias = arr("item_bias")
    if (d / "item_available_from.npy").is_file():
        windows = Windows(arr("item_available_from"), arr("item_available_until"))
    else:  # written before items had windows: all there all along
        windows = Windows.always(len(bias))

    return SynthTruth(
        user_taste_start=arr("user_taste_start"),
        user_taste_delta=arr("user_taste_delta"),
        user_segment=arr("user_segment"),
        segment_centroids=arr("segment_centroids"),
        item_factors=arr("item_factors"),
        item_bias=bias,
        item_category=arr("item_category"),
        category_centroids=arr("category_centroids"),
        item_available_from=windows.opens,
        item_available_until=windows.closes,
        t0=int(info["t0"]),
        span=int(info["span"]),
        info=info,
    )
