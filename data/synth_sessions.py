"""How simulated users behave on the synthetic website: sessions, slates, clicks, dwell, carts.

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

Only items in the catalog at the session's time fill a slot (:class:`~tailored.data.
synth_truth.Windows`): a slot whose item is not launched yet, or has ended, is drawn again by
its policy, a few times, then from the items there all along; and an item's click, cart or
purchase at or after its end (it ended mid-visit) is not logged. So no event of an item falls
outside its window.

Every event records its session (``session``): the slate's impressions and what the user did
with them, as a site logs its visit id.

Because slots are filled independently, a position's click-through differs from another's
only through examination, ``P(click) = (1 + pos) ** -examine_decay * sigmoid(s + click_bias)``
(pos 0-based) — a clean propensity for position-debiasing. Every event records the slot of
the impression it comes from (``position``: the impression's own, its click's, cart's and
purchase's).

A click's ``value`` is its dwell (seconds; there is no separate view event). Some clicks are
bounces, ``P = sigmoid(bounce_bias - s)`` (more often for items of low affinity), of a few
seconds (``1 + Exp(bounce_mean_s)``, at most 10 s); the others dwell ``exp(log
dwell_median_s + dwell_slope * s + dwell_sigma * N(0, 1))`` seconds (1 s to an hour). The
funnel: a click that is no bounce is followed by an ``add_to_cart`` (no value) during its
dwell with ``P = cart_max * sigmoid(s + cart_bias)``, and a cart by a ``purchase`` (value =
price) a few seconds to minutes later with ``P = checkout_max * sigmoid(s + checkout_bias)``;
there is no purchase without its cart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tailored.data.synth_truth import NO_END, NO_START, Windows, World

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

EVENT_KINDS: tuple[str, ...] = ("impression", "click", "add_to_cart", "purchase")
SURFACES: tuple[str, ...] = ("home", "search", "category", "product")
DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
_SURFACE_P = (0.45, 0.2, 0.2, 0.15)
DEVICE_SHARES = (0.6, 0.32, 0.08)
_BLOCK = 1 << 17  # rows per gather-and-dot block: bounds the [rows, candidates, d] temporaries
_REDRAWS = 4  # times a slot whose item is unavailable is drawn again by its own policy
_BOUNCE_MAX_S = 10.0


@dataclass(frozen=True)
class Behaviour:
    """Knobs of the logging policy and the user model (the defaults give a click-through rate
    of about 10%, a bounce (dwell under 10 s) on about 20% of clicks, a cart after about 17%
    of clicks, a purchase after about 40% of carts (about 7% of clicks) and a median dwell
    near 50 s for the clicks that are no bounce)."""

    slate_size: int = 10
    policy_mix: tuple[float, float, float] = (0.25, 0.55, 0.20)  # popular, taste, random
    taste_sharpness: float = 1.5
    candidates: int = 8
    examine_decay: float = 0.8
    click_bias: float = -3.0
    bounce_bias: float = 1.5  # P(bounce) = sigmoid(bounce_bias - s)
    bounce_mean_s: float = 2.0  # a bounce dwells 1 + Exp(mean) seconds, at most 10
    cart_max: float = 0.37  # P(cart | click, no bounce) = cart_max * sigmoid(s + cart_bias)
    cart_bias: float = -3.0
    checkout_max: float = 0.6  # P(purchase | cart) = checkout_max * sigmoid(s + checkout_bias)
    checkout_bias: float = -3.0
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
    value: np.ndarray  # float64 [E]: slot (impression), dwell s (click), price (purchase)
    surface: np.ndarray  # int8 [E], index into SURFACES
    device: np.ndarray  # int8 [E], index into DEVICES
    position: np.ndarray  # int16 [E], the slot (0-based) of the impression it comes from
    session: np.ndarray  # int64 [E], the session's number within the chunk (0-based, in order)


class Sampler:
    """Precomputed inverse-CDF tables over items for the logging policy, and the items'
    windows in the catalog (``windows``: none, all there all along)."""

    def __init__(self, world: World, price: np.ndarray, windows: Windows | None = None) -> None:
        self.world, self.price = world, price
        self.windows = windows if windows is not None and windows.bounded else None
        self.always = np.arange(world.n_items)  # the items there all along
        if self.windows is not None:
            opens, closes = self.windows.opens, self.windows.closes
            self.always = np.flatnonzero((opens == NO_START) & (closes == NO_END))
            if not len(self.always):
                raise ValueError("some items must be in the catalog all along")
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
    items = _fill_slates(rng, sampler, taste, s_time, b)  # [S, L]
    n_s, n_slot = items.shape
    imp_sess = np.repeat(np.arange(n_s), n_slot)
    pos = np.tile(np.arange(n_slot, dtype=np.int16), n_s)
    items = items.ravel()
    s = _dot_rows(taste, imp_sess, sampler.world.item_factors, items)
    s += sampler.world.item_bias[items]
    p_click = (1.0 + pos) ** -b.examine_decay * _sigmoid(s + b.click_bias)
    c = np.flatnonzero(rng.random(len(items)) < p_click)  # impressions clicked
    s_c, n_c = s[c], len(c)
    bounce = rng.random(n_c) < _sigmoid(b.bounce_bias - s_c)
    stay = np.exp(
        np.log(b.dwell_median_s) + b.dwell_slope * s_c + b.dwell_sigma * rng.standard_normal(n_c)
    )
    brief = np.minimum(1.0 + rng.exponential(b.bounce_mean_s, n_c), _BOUNCE_MAX_S)
    dwell = np.round(np.where(bounce, brief, np.clip(stay, 1.0, 3600.0)), 1)
    t_click = s_time[imp_sess[c]] + 3 + rng.exponential(20.0, n_c).astype(np.int64)
    # the funnel: a cart during the click's dwell, a purchase a few seconds to minutes later
    k = np.flatnonzero(~bounce & (rng.random(n_c) < b.cart_max * _sigmoid(s_c + b.cart_bias)))
    t_cart = t_click[k] + 1 + (rng.random(len(k)) * dwell[k]).astype(np.int64)
    bought = rng.random(len(k)) < b.checkout_max * _sigmoid(s_c[k] + b.checkout_bias)
    q = k[bought]  # clicks that ended in a purchase
    t_buy = t_cart[bought] + 5 + rng.exponential(90.0, len(q)).astype(np.int64)
    imp = np.concatenate([np.arange(len(items)), c, c[k], c[q]])  # each event's impression
    ts = np.concatenate([s_time[imp_sess], t_click, t_cart, t_buy])
    kind = np.repeat(np.arange(4, dtype=np.int8), [len(items), n_c, len(k), len(q)])
    value = np.concatenate(
        [pos.astype(np.float64), dwell, np.full(len(k), np.nan), sampler.price[items[c[q]]]]
    )
    if sampler.windows is not None:  # an item that ended mid-visit: its later events are not
        kept = np.flatnonzero(ts < sampler.windows.closes[items[imp]])
        imp, ts, kind, value = imp[kept], ts[kept], kind[kept], value[kept]
    surface = np.asarray(rng.choice(len(SURFACES), size=n_s, p=_SURFACE_P), np.int8)
    dev = np.where(
        rng.random(n_s) < b.device_loyalty,
        device[s_user],
        rng.choice(len(DEVICES), size=n_s, p=DEVICE_SHARES),
    ).astype(np.int8)
    sess = imp_sess[imp]
    user = s_user[sess]
    # one stable sort on (user, time, kind): users' events in time order, a session's
    # impressions in slot order, a click before its cart before its purchase
    key = (user.astype(np.int64) << 40) | ((ts - t0) << 2) | kind
    o = np.argsort(key, kind="stable")
    return EventArrays(
        user[o],
        items[imp[o]],
        ts[o],
        kind[o],
        value[o],
        surface[sess[o]],
        dev[sess[o]],
        pos[imp[o]],
        sess[o].astype(np.int64),
    )


def _session_counts(rng: np.random.Generator, activity: np.ndarray, mean: float) -> np.ndarray:
    """Sessions per user, int64 [n], mean ``mean``: at least one each when ``mean >= 1``
    (a dataset of users who never came is of no use), the rest Poisson by activity."""
    if mean < 1.0:
        return rng.poisson(activity * mean)
    return 1 + rng.poisson(activity * (mean - 1.0))


def _fill_slates(
    rng: np.random.Generator,
    sampler: Sampler,
    taste: np.ndarray,
    s_time: np.ndarray,
    b: Behaviour,
) -> np.ndarray:
    """Item rows, int64 [S, slate_size], of items in the catalog at each session's time
    ``s_time``; duplicates within a slate are redrawn uniformly, then each slate is shuffled
    (a redrawn duplicate is the later of the two: unshuffled, the later slots would hold
    more random items, and a slot's click-through would be more than its examination)."""
    n_s, n_items = len(taste), sampler.world.n_items
    mix = np.cumsum(b.policy_mix) / sum(b.policy_mix)
    src = np.searchsorted(mix, rng.random(n_s * b.slate_size), side="right")
    rows = np.repeat(np.arange(n_s), b.slate_size)
    when = s_time[rows]
    items = _draw(rng, sampler, taste, rows, when, src, b)
    if sampler.windows is not None:
        _make_available(rng, sampler, taste, rows, src, when, items, np.arange(len(items)), b)
    key = rows * n_items + items
    o = np.argsort(key, kind="stable")
    dup = o[1:][key[o][1:] == key[o][:-1]]
    items[dup] = rng.integers(0, n_items, len(dup))
    if sampler.windows is not None and len(dup):
        src[dup] = 2
        _make_available(rng, sampler, taste, rows, src, when, items, dup, b)
    return rng.permuted(items.reshape(n_s, b.slate_size), axis=1)


def _make_available(
    rng: np.random.Generator,
    sampler: Sampler,
    taste: np.ndarray,
    rows: np.ndarray,
    src: np.ndarray,
    when: np.ndarray,
    items: np.ndarray,
    slots: np.ndarray,
    b: Behaviour,
) -> None:
    """Redraw, in place, the ``slots`` (ascending) of ``items`` whose item is not in the
    catalog at ``when``: by the slot's policy ``src`` a few times, then from the items there
    all along."""
    w = sampler.windows
    assert w is not None
    bad = slots[~w.available(items[slots], when[slots])]
    for _ in range(_REDRAWS):
        if not len(bad):
            return
        items[bad] = _draw(rng, sampler, taste, rows[bad], when[bad], src[bad], b)
        bad = bad[~w.available(items[bad], when[bad])]
    items[bad] = sampler.always[rng.integers(0, len(sampler.always), len(bad))]


def _draw(
    rng: np.random.Generator,
    sampler: Sampler,
    taste: np.ndarray,
    rows: np.ndarray,
    when: np.ndarray,
    src: np.ndarray,
    b: Behaviour,
) -> np.ndarray:
    """One item per entry of ``rows`` (session indices, ascending) by the policy ``src`` of
    each (0 popular, 1 taste, 2 or more random), int64; ``when``: each entry's time."""
    out = np.empty(len(rows), np.int64)
    pop, rand = src == 0, src >= 2
    out[pop] = sampler.popular(rng, int(pop.sum()))
    out[rand] = rng.integers(0, sampler.world.n_items, int(rand.sum()))
    by_taste = src == 1
    out[by_taste] = _taste_items(rng, sampler, taste, rows[by_taste], when[by_taste], b)
    return out


def _taste_items(
    rng: np.random.Generator,
    sampler: Sampler,
    taste: np.ndarray,
    rows: np.ndarray,
    when: np.ndarray,
    b: Behaviour,
) -> np.ndarray:
    """One item per entry of ``rows`` (session indices, ascending), chosen by that session's
    taste among the candidates in the catalog at ``when`` (an unavailable one where none is:
    the caller draws it again)."""
    if not len(rows):
        return np.empty(0, np.int64)
    world = sampler.world
    n_cat = len(world.category_centroids)
    first = np.ones(len(rows), bool)
    first[1:] = rows[1:] != rows[:-1]
    sess = rows[first]  # the sessions asked about, and each entry's among them
    at = np.cumsum(first) - 1
    logits = b.taste_sharpness * (taste[sess] @ world.category_centroids.T).astype(np.float64)
    logits[:, sampler.empty] = -np.inf
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    # shift row r's CDF into [r, r + 1] so one searchsorted samples every row at once
    cdf += np.arange(len(cdf))[:, None]
    j = np.searchsorted(cdf.ravel(), at + rng.random(len(rows)), side="right")
    cats = np.clip(j - at * n_cat, 0, n_cat - 1)
    chosen = np.empty(len(rows), np.int64)
    for lo in range(0, len(rows), _BLOCK // b.candidates):
        hi = min(lo + _BLOCK // b.candidates, len(rows))
        cand = sampler.in_category(rng, np.repeat(cats[lo:hi], b.candidates))
        cand = cand.reshape(-1, b.candidates)
        score = np.einsum("nmd,nd->nm", world.item_factors[cand], taste[rows[lo:hi]])
        score += rng.gumbel(size=score.shape).astype(np.float32)  # Gumbel-max = softmax draw
        if sampler.windows is not None:
            shut = ~sampler.windows.available(cand, when[lo:hi, None])
            score[shut] -= np.float32(1e4)  # below any available candidate's score
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
