"""How simulated users behave on the synthetic website: sessions, slates, clicks, dwell.

Per user, ``m = impressions_per_user / slate_size`` sessions on average (``1 +
Poisson(activity * (m - 1))`` when ``m >= 1``, so everyone came once) start at uniform times
over the span; ``activity`` is log-normal with mean 1 (a heavy tail of very active users).
Each session shows one slate whose slots a logging policy fills independently:

* popular: an item drawn by Zipf exposure weight;
* taste: a category by softmax(sharpness * u(t) · category centroid), then an item of that
  category by sampling-importance-resampling: ``candidates`` items drawn by exposure weight,
  one kept by softmax of u(t) · v_i — approximately softmax(s) within the category, at the
  cost of a few dot products instead of one per item of the category;
* random: uniform over items.

Because slots are filled independently, a position's click-through differs from another's
only through examination, ``P(click) = (1 + pos) ** -examine_decay * sigmoid(s + click_bias)``
(pos 0-based) — a clean propensity for position-debiasing. A click is followed by a view
whose dwell (seconds) grows with affinity, and sometimes by a purchase (value = price).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tailored.data.synth_truth import World

__all__ = [
    "DEVICES",
    "DEVICE_SHARES",
    "EVENT_KINDS",
    "SURFACES",
    "Behaviour",
    "EventArrays",
    "Sampler",
    "simulate_chunk",
]

EVENT_KINDS: tuple[str, ...] = ("impression", "click", "view", "purchase")
SURFACES: tuple[str, ...] = ("home", "search", "category", "product")
DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
_SURFACE_P = (0.45, 0.2, 0.2, 0.15)
DEVICE_SHARES = (0.6, 0.32, 0.08)
_BLOCK = 1 << 17  # rows per gather-and-dot block: bounds the [rows, candidates, d] temporaries


@dataclass(frozen=True)
class Behaviour:
    """Knobs of the logging policy and the user model (the defaults give a click-through rate
    of about 10%, a purchase after about 7% of clicks and a median dwell near 50 s)."""

    slate_size: int = 10
    policy_mix: tuple[float, float, float] = (0.25, 0.55, 0.20)  # popular, taste, random
    taste_sharpness: float = 1.5
    candidates: int = 8
    examine_decay: float = 0.8
    click_bias: float = -3.0
    purchase_max: float = 0.1
    purchase_bias: float = -2.0
    dwell_median_s: float = 20.0  # at affinity 0
    dwell_slope: float = 0.3  # d log(dwell) / d affinity
    dwell_sigma: float = 0.6
    activity_sigma: float = 1.0
    device_loyalty: float = 0.85  # share of a user's sessions on their usual device


@dataclass
class EventArrays:
    """A chunk's events, sorted by (user, timestamp). ``value`` is NaN where null."""

    user: np.ndarray  # int64 [E], row within the chunk
    item: np.ndarray  # int64 [E], item row
    timestamp: np.ndarray  # int64 [E], unix seconds
    kind: np.ndarray  # int8 [E], index into EVENT_KINDS
    value: np.ndarray  # float64 [E]: slot (impression), dwell s (view), price (purchase)
    surface: np.ndarray  # int8 [E], index into SURFACES
    device: np.ndarray  # int8 [E], index into DEVICES


class Sampler:
    """Precomputed inverse-CDF tables over items for the logging policy."""

    def __init__(self, world: World, price: np.ndarray) -> None:
        self.world, self.price = world, price
        n_cat = len(world.category_centroids)
        self.pop_cdf = np.cumsum(world.exposure)
        self.order = np.argsort(world.item_category, kind="stable")
        cat_sorted = world.item_category[self.order]
        self.start = np.searchsorted(cat_sorted, np.arange(n_cat), side="left")
        self.end = np.searchsorted(cat_sorted, np.arange(n_cat), side="right")
        self.empty = self.start == self.end
        # cumulative exposure within each category, normalised and shifted by the category
        # index: one searchsorted over all categories at once finds an item of category c
        # for c + U(0, 1)
        w = world.exposure[self.order]
        csum = np.cumsum(w)
        before = np.concatenate([[0.0], csum])[self.start]
        total = np.concatenate([[0.0], csum])[self.end] - before
        seg = cat_sorted.astype(np.int64)
        self.cat_cdf = seg + (csum - before[seg]) / np.where(total > 0, total, 1.0)[seg]
        self.cat_cdf[self.end[~self.empty] - 1] = np.flatnonzero(~self.empty) + 1.0

    def popular(self, rng: np.random.Generator, n: int) -> np.ndarray:
        idx = np.searchsorted(self.pop_cdf, rng.random(n) * self.pop_cdf[-1], side="right")
        return np.minimum(idx, len(self.pop_cdf) - 1)

    def in_category(self, rng: np.random.Generator, cats: np.ndarray) -> np.ndarray:
        j = np.searchsorted(self.cat_cdf, cats + rng.random(len(cats)), side="right")
        return self.order[np.clip(j, self.start[cats], self.end[cats] - 1)]


def simulate_chunk(
    rng: np.random.Generator,
    sampler: Sampler,
    *,
    u_start: np.ndarray,
    delta: np.ndarray,
    activity: np.ndarray,
    device: np.ndarray,
    impressions_per_user: float,
    t0: int,
    span: int,
    behaviour: Behaviour,
) -> EventArrays:
    """Simulate the sessions of one chunk of users (rows of ``u_start``, float32 [n, d])."""
    b = behaviour
    n_sess = _session_counts(rng, activity, impressions_per_user / b.slate_size)
    s_user = np.repeat(np.arange(len(activity)), n_sess)
    s_time = t0 + (rng.random(len(s_user)) * span).astype(np.int64)
    order = np.lexsort((s_time, s_user))
    s_user, s_time = s_user[order], s_time[order]
    frac = ((s_time - t0) / span).astype(np.float32)[:, None]
    taste = u_start[s_user] + frac * delta[s_user]  # u(t) per session, [S, d]
    items = _fill_slates(rng, sampler, taste, b)  # [S, L]
    n_s, n_slot = items.shape
    imp_sess = np.repeat(np.arange(n_s), n_slot)
    pos = np.tile(np.arange(n_slot), n_s)
    items = items.ravel()
    s = _dot_rows(taste, imp_sess, sampler.world.item_factors, items)
    s += sampler.world.item_bias[items]
    p_click = (1.0 + pos) ** -b.examine_decay * _sigmoid(s + b.click_bias)
    c = np.flatnonzero(rng.random(len(items)) < p_click)
    s_c = s[c]
    dwell = np.exp(
        np.log(b.dwell_median_s) + b.dwell_slope * s_c + b.dwell_sigma * rng.standard_normal(len(c))
    )
    dwell = np.round(np.clip(dwell, 1.0, 3600.0), 1)
    t_click = s_time[imp_sess[c]] + 3 + rng.exponential(20.0, len(c)).astype(np.int64)
    bought = rng.random(len(c)) < b.purchase_max * _sigmoid(s_c + b.purchase_bias)
    p = c[bought]
    t_buy = t_click[bought] + np.ceil(dwell[bought]).astype(np.int64)
    sess = np.concatenate([imp_sess, imp_sess[c], imp_sess[c], imp_sess[p]])
    ev_items = np.concatenate([items, items[c], items[c], items[p]])
    ts = np.concatenate([s_time[imp_sess], t_click, t_click, t_buy])
    kind = np.repeat(np.arange(4, dtype=np.int8), [len(items), len(c), len(c), len(p)])
    value = np.concatenate(
        [pos.astype(np.float64), np.full(len(c), np.nan), dwell, sampler.price[items[p]]]
    )
    surface = np.asarray(rng.choice(len(SURFACES), size=n_s, p=_SURFACE_P), np.int8)
    dev = np.where(
        rng.random(n_s) < b.device_loyalty,
        device[s_user],
        rng.choice(len(DEVICES), size=n_s, p=DEVICE_SHARES),
    ).astype(np.int8)
    user = s_user[sess]
    # one stable sort on (user, time, kind): users' events in time order, a session's
    # impressions in slot order, a click before its view before its purchase
    key = (user.astype(np.int64) << 40) | ((ts - t0) << 2) | kind
    o = np.argsort(key, kind="stable")
    return EventArrays(
        user[o], ev_items[o], ts[o], kind[o], value[o], surface[sess][o], dev[sess][o]
    )


def _session_counts(rng: np.random.Generator, activity: np.ndarray, mean: float) -> np.ndarray:
    """Sessions per user, int64 [n], mean ``mean``: at least one each when ``mean >= 1``
    (a dataset of users who never came is of no use), the rest Poisson by activity."""
    if mean < 1.0:
        return rng.poisson(activity * mean)
    return 1 + rng.poisson(activity * (mean - 1.0))


def _fill_slates(
    rng: np.random.Generator, sampler: Sampler, taste: np.ndarray, b: Behaviour
) -> np.ndarray:
    """Item rows, int64 [S, slate_size]; duplicates within a slate are redrawn uniformly."""
    n_s, n_items = len(taste), sampler.world.n_items
    mix = np.cumsum(b.policy_mix) / sum(b.policy_mix)
    src = np.searchsorted(mix, rng.random((n_s, b.slate_size)), side="right")
    items = np.empty((n_s, b.slate_size), np.int64)
    pop, rand = src == 0, src >= 2
    items[pop] = sampler.popular(rng, int(pop.sum()))
    items[rand] = rng.integers(0, n_items, int(rand.sum()))
    rows, _ = np.nonzero(src == 1)
    items[src == 1] = _taste_items(rng, sampler, taste, rows, b)
    flat = items.ravel()
    key = np.repeat(np.arange(n_s, dtype=np.int64), b.slate_size) * n_items + flat
    o = np.argsort(key, kind="stable")
    dup = o[1:][key[o][1:] == key[o][:-1]]
    flat[dup] = rng.integers(0, n_items, len(dup))
    return items


def _taste_items(
    rng: np.random.Generator, sampler: Sampler, taste: np.ndarray, rows: np.ndarray, b: Behaviour
) -> np.ndarray:
    """One item per entry of ``rows`` (session indices), chosen by that session's taste."""
    world = sampler.world
    n_cat = len(world.category_centroids)
    logits = b.taste_sharpness * (taste @ world.category_centroids.T).astype(np.float64)
    logits[:, sampler.empty] = -np.inf
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    # shift row r's CDF into [r, r + 1] so one searchsorted samples every row at once
    cdf += np.arange(len(cdf))[:, None]
    j = np.searchsorted(cdf.ravel(), rows + rng.random(len(rows)), side="right")
    cats = np.clip(j - rows * n_cat, 0, n_cat - 1)
    cands = sampler.in_category(rng, np.repeat(cats, b.candidates)).reshape(-1, b.candidates)
    chosen = np.empty(len(rows), np.int64)
    for lo in range(0, len(rows), _BLOCK // b.candidates):
        hi = min(lo + _BLOCK // b.candidates, len(rows))
        cand = cands[lo:hi]
        score = np.einsum("nmd,nd->nm", world.item_factors[cand], taste[rows[lo:hi]])
        score += rng.gumbel(size=score.shape).astype(np.float32)  # Gumbel-max = softmax draw
        chosen[lo:hi] = cand[np.arange(hi - lo), np.argmax(score, axis=1)]
    return chosen


def _dot_rows(a: np.ndarray, a_rows: np.ndarray, b: np.ndarray, b_rows: np.ndarray) -> np.ndarray:
    """``sum(a[a_rows] * b[b_rows], axis=1)`` as float64, in blocks to bound memory."""
    out = np.empty(len(a_rows), np.float64)
    for lo in range(0, len(a_rows), _BLOCK):
        hi = lo + _BLOCK
        out[lo:hi] = np.einsum("nd,nd->n", a[a_rows[lo:hi]], b[b_rows[lo:hi]])
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))
