"""User segments: k-means over the user embeddings (FAISS), each segment described in words.

:func:`fit_segments` clusters the users' two-tower embeddings with FAISS's k-means (trained
on a sample of at most ``sample`` users, then every user assigned to the nearest centroid;
embeddings are compared by cosine, as retrieval compares them). :func:`k_quality` reports,
for a range of k, the mean silhouette of a sample of users (from -1 to 1: how much nearer
each user is to their own segment than to the next one) and the k-means objective, so that
k can be chosen.

:func:`describe_segments` says what sets each segment apart, from what its members did and
who they are: its size; the item attribute values (genres, categories...) and the items its
members engaged with more than the whole population does, with their lift (the segment's
share over the population's: 2.0x = twice as often); the profile values (age band, gender,
country...) that over-index; and how active its members are. ``summary`` puts the strongest
of these into one sentence a product manager can read; ``label`` names the segment in a few
words (what serving's "popular with people like you" says).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Segments", "describe_segments", "fit_segments", "k_quality"]

_MIN_SUPPORT = 5  # events (or users) of a segment behind a value it is said to over-index on
_MIN_LIFT = 1.2  # below this, a value does not set a segment apart


@dataclass(frozen=True)
class Segments:
    """``centroids``: float32 [k, d], unit length; ``labels``: int32 [U], each user's
    segment; ``objective``: the k-means objective (the sum of squared distances)."""

    centroids: np.ndarray
    labels: np.ndarray
    objective: float

    @property
    def k(self) -> int:
        return len(self.centroids)

    def assign(self, embeddings: np.ndarray) -> np.ndarray:
        """The segment of each row of ``embeddings`` [n, d] (nearest centroid by cosine)."""
        return np.argmax(_unit(embeddings) @ self.centroids.T, axis=1).astype(np.int32)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def fit_segments(
    embeddings: np.ndarray, k: int, *, seed: int = 0, niter: int = 25, sample: int = 200_000
) -> Segments:
    """k-means over the unit-length ``embeddings`` [U, d] (see the module docstring)."""
    import faiss

    x = _unit(embeddings)
    if not 2 <= k <= len(x):
        raise ValueError(f"segments: k must be in [2, {len(x)}] (the users), got {k}")
    rng = np.random.default_rng(seed)
    train = x if len(x) <= sample else x[rng.choice(len(x), sample, replace=False)]
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        verbose=False,
        max_points_per_centroid=max(256, len(train) // k + 1),
    )
    km.train(train)
    assert km.centroids is not None  # set by train
    centroids = _unit(km.centroids)
    labels = np.empty(len(x), np.int32)
    objective = 0.0
    for lo in range(0, len(x), 65_536):  # bounded [block, k] scores and [block, d] residuals
        block = x[lo : lo + 65_536]
        labels[lo : lo + 65_536] = own = np.argmax(block @ centroids.T, axis=1)
        diff = block - centroids[own]
        objective += float(np.einsum("ij,ij->", diff, diff))
    return Segments(centroids, labels, objective)


def k_quality(
    embeddings: np.ndarray, ks: Sequence[int], *, seed: int = 0, sample: int = 3000
) -> list[dict[str, float]]:
    """For each k: the mean silhouette over a sample of users (cosine distance) and the
    k-means objective per user."""
    x = _unit(embeddings)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(x), min(sample, len(x)), replace=False)
    xs = x[pick]
    dist = np.clip(1.0 - xs @ xs.T, 0.0, 2.0)
    out = []
    for k in ks:
        seg = fit_segments(x, k, seed=seed)
        out.append(
            {
                "k": int(k),
                "silhouette": round(_silhouette(dist, seg.labels[pick], k), 4),
                "objective_per_user": round(seg.objective / len(x), 5),
            }
        )
    return out


def _silhouette(dist: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean of (b - a) / max(a, b): a, the mean distance to one's own segment; b, to the
    nearest other segment (users alone in their segment count 0)."""
    sums = np.stack([dist[:, labels == c].sum(axis=1) for c in range(k)], axis=1)
    sizes = np.bincount(labels, minlength=k).astype(np.float64)
    own = sizes[labels] - 1
    a = np.where(own > 0, sums[np.arange(len(labels)), labels] / np.maximum(own, 1), 0.0)
    others = np.where(np.arange(k)[None, :] == labels[:, None], np.inf, sums / np.maximum(sizes, 1))
    others[:, sizes == 0] = np.inf
    b = others.min(axis=1)
    s = np.where(own > 0, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def describe_segments(
    labels: np.ndarray,
    *,
    user_items: tuple[np.ndarray, np.ndarray],
    item_values: Mapping[str, Sequence[Sequence[str]]],
    item_names: Sequence[str],
    user_values: Mapping[str, tuple[np.ndarray, Sequence[str]]],
    top: int = 3,
    k: int | None = None,
) -> list[dict[str, Any]]:
    """Each segment in words (see the module docstring).

    ``labels``: int [U]; ``user_items``: (offsets int [U + 1], item rows int [E], 0-based)
    of what each user engaged with; ``item_values``: per item attribute, each item's values
    (a genre list; one category); ``item_names``: each item's title or id; ``user_values``:
    per profile field, each user's code (int [U]; 0 unknown) and the vocabulary it indexes
    (code c is ``vocab[c - 1]``), counted as codes: at 10M users, strings per user were
    gigabytes; ``k``: the segments (default:
    the highest label + 1; give it, so that a segment left with no members is described
    too)."""
    offsets, items = user_items
    if k is None:
        k = int(labels.max()) + 1 if len(labels) else 0
    per_user = np.diff(offsets)
    # the population's counts, once
    every_item = {name: _value_counts(items, values) for name, values in item_values.items()}
    every_user = {name: (np.asarray(c), list(v)) for name, (c, v) in user_values.items()}
    every_user_counts = {name: _code_counts(*cv) for name, cv in every_user.items()}
    event_seg = np.repeat(labels, per_user)
    n_items = len(item_names)
    out = []
    for s in range(k):
        members = labels == s
        mine = items[event_seg == s]
        seg: dict[str, Any] = {
            "segment": s,
            "users": int(members.sum()),
            "share": float(members.mean()) if len(labels) else 0.0,
            "activity": {
                "median_items_per_user": float(np.median(per_user[members]))
                if members.any()
                else 0.0,
                "median_items_per_user_all": float(np.median(per_user)) if len(per_user) else 0.0,
            },
            "over_indexing": {},
            "items": _top_items(mine, items, n_items, item_names, top),
            "profile": {},
        }
        for name, values in item_values.items():
            seg["over_indexing"][name] = _lifts(
                _value_counts(mine, values), every_item[name], len(mine), len(items), top
            )
        for name, (codes, vocab) in every_user.items():
            seg["profile"][name] = _lifts(
                _code_counts(codes[members], vocab),
                every_user_counts[name],
                int(members.sum()),
                len(codes),
                top,
            )
        seg["label"] = _label(seg)
        seg["summary"] = _summary(seg)
        out.append(seg)
    return out


def _code_counts(codes: np.ndarray, vocab: Sequence[str]) -> dict[str, int]:
    """How many users hold each known value (code 0, unknown, left out), by value."""
    counts = np.bincount(codes, minlength=len(vocab) + 1).tolist()
    return dict(sorted((vocab[c - 1], n) for c, n in enumerate(counts) if c and n))


def _value_counts(rows: np.ndarray, values: Sequence[Sequence[str]]) -> dict[str, int]:
    """How many of the events on ``rows`` carry each value (an event counts once per value
    of its item)."""
    per_item = np.bincount(rows, minlength=len(values))
    out: dict[str, int] = {}
    for row in np.flatnonzero(per_item).tolist():
        for v in values[row]:
            if v:
                out[v] = out.get(v, 0) + int(per_item[row])
    return out


def _lifts(
    seg: Mapping[str, int], everyone: Mapping[str, int], seg_n: int, all_n: int, top: int
) -> list[dict[str, Any]]:
    """The values whose share in the segment is at least ``_MIN_LIFT`` times their share
    overall (with ``_MIN_SUPPORT`` behind them), strongest first."""
    if not seg_n or not all_n:
        return []
    found: list[tuple[float, float, str]] = []
    for v, n in seg.items():
        share, base = n / seg_n, everyone.get(v, 0) / all_n
        if n >= _MIN_SUPPORT and base > 0 and share / base >= _MIN_LIFT:
            found.append((share / base, share, v))
    found.sort(key=lambda r: (-r[0], -r[1]))
    return [
        {"value": v, "share": round(sh, 4), "lift": round(lift, 2)} for lift, sh, v in found[:top]
    ]


def _top_items(
    mine: np.ndarray, every: np.ndarray, n_items: int, names: Sequence[str], top: int
) -> list[dict[str, Any]]:
    seg = np.bincount(mine, minlength=n_items)
    base = np.bincount(every, minlength=n_items)
    ok = seg >= _MIN_SUPPORT
    if not ok.any() or not len(mine):
        return []
    lift = np.where(ok, (seg / len(mine)) / np.maximum(base / len(every), 1e-12), 0.0)
    order = np.argsort(-lift)[:top]
    return [
        {
            "item": str(names[r]),
            "share": round(float(seg[r] / len(mine)), 4),
            "lift": round(float(lift[r]), 2),
        }
        for r in order.tolist()
        if lift[r] >= _MIN_LIFT
    ]


def _label(seg: Mapping[str, Any]) -> str:
    """A few words naming the segment: its two strongest attribute values ("Horror and
    Western"), else its strongest profile value, else its number."""
    likes = sorted(
        (r for rows in seg["over_indexing"].values() for r in rows), key=lambda r: -r["lift"]
    )
    if likes:
        return " and ".join(r["value"] for r in likes[:2])
    who = sorted(
        ((name, r) for name, rows in seg["profile"].items() for r in rows),
        key=lambda nr: -nr[1]["lift"],
    )
    if who:
        return f"{who[0][0]} {who[0][1]['value']}"
    return f"segment {seg['segment']}"


def _summary(seg: Mapping[str, Any]) -> str:
    """One sentence: size, the strongest item attributes, the profile, the activity."""
    parts = [f"Segment {seg['segment']} ({seg['share']:.0%} of users, {seg['users']:,})"]
    likes = [
        f"{r['value']} ({r['lift']:.1f}x)" for rows in seg["over_indexing"].values() for r in rows
    ][:3]
    parts.append(f"engages more than average with {', '.join(likes)}" if likes else "")
    who = [
        f"{name} {r['value']} ({r['lift']:.1f}x)"
        for name, rows in seg["profile"].items()
        for r in rows[:1]
    ][:3]
    if who:
        parts.append(f"more often {', '.join(who)}")
    act, overall = (
        seg["activity"]["median_items_per_user"],
        seg["activity"]["median_items_per_user_all"],
    )
    if overall:
        word = "more" if act > 1.2 * overall else "less" if act < overall / 1.2 else "as"
        parts.append(
            f"{word} active than the median user ({act:g} items against {overall:g})"
            if word != "as"
            else f"as active as the median user ({act:g} items)"
        )
    head, rest = parts[0], [p for p in parts[1:] if p]
    return f"{head}: " + "; ".join(rest) + "." if rest else f"{head}."
