"""A page of modules (the ``Page`` RPC): each module a row of items from one source, the
modules ordered by a policy, no item shown twice on one page.

Sources (:data:`MODULE_TYPES`), each through the request path of :mod:`.recommender`:

* ``recommended``: the personalized list (the popular one without consent);
* ``trending``: what is popular in the request's context, less what the user engaged with or
  passed over (the experiment's popularity control);
* ``because_you_watched``: the co-occurrence neighbours of the user's latest item;
* ``similar``: the neighbours of one item (``param``: its id);
* ``category``: the personalized list within one item attribute value (``param``: "Horror"),
  scored exactly over that value's items (its 20,000 most popular, for a bigger one) and
  re-ranked like the whole list.

Ordering policies: ``fixed`` (the order the site sent), ``random`` (uniform), ``bandit`` (a
linear contextual bandit over the request's features, :mod:`tailored.experiments.bandit`,
learning from the clicks Track reports on the page's modules: :mod:`.page_learning`). Each
module's ``propensity`` is the probability the policy gave it its place in the order of all
the candidate modules, given those above it: 1 for ``fixed``; 1 / (modules left) for
``random``; the exploration rule's for ``bandit``. The modules are filled top down, so
that one higher up keeps its items and a lower one skips them; a module left with no items
is not shown, and the positions close up (``position`` counts the modules shown; the
propensity stays that of the policy's order).

The features (:func:`page_features`) are named one-hot values: ``bias``, the user's segment
(``segment=BUNDLE_SEGMENTS:ID``; ``segment=none`` for a user the bundle does not know), and
the request's context and profile fields chosen in ``[serve] bandit_features``; a user
without personalization consent is seen through the request's context alone.

Not built yet: the work each module repeats (the user's history, their embedding, a ranker
call) is not shared between a page's modules.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from tailored.experiments.bandit import LinearBandit, Module
from tailored.serve.recommender import Recommendation, Recommender, Request
from tailored.serve.state import ShownModule

__all__ = [
    "MODULE_TYPES",
    "PAGE_POLICIES",
    "ModuleSpec",
    "Page",
    "PlacedModule",
    "build_page",
    "model_key",
    "page_features",
]

MODULE_TYPES = ("recommended", "trending", "because_you_watched", "similar", "category")
NEEDS_PARAM = frozenset({"similar", "category"})
PAGE_POLICIES = ("fixed", "random", "bandit")


def model_key(page_type: str) -> str:
    """Where the bandit of a page type keeps its statistics (one model per page type)."""
    return page_type


def page_features(rec: Recommender, req: Request, chosen: Sequence[str]) -> dict[str, float]:
    """What the bandit sees of a request, position aside (module docstring)."""
    x = {"bias": 1.0}
    for name in chosen:
        if name == "segment":
            if not req.personalized:
                continue
            segment = rec.segment(req)
            x[f"segment={rec.segments_id}:{segment}" if segment is not None else "segment=none"] = (
                1.0
            )
            continue
        kind, _, field = name.partition(".")
        values = req.context if kind == "context" else req.profile if req.personalized else None
        value = (values or {}).get(field)
        if value:
            x[f"{field}={value}"] = 1.0
    return x


@dataclass(frozen=True)
class ModuleSpec:
    id: str
    type: str
    param: str = ""
    title: str = ""


@dataclass(frozen=True)
class PlacedModule:
    spec: ModuleSpec
    items: Recommendation
    position: int
    propensity: float


@dataclass(frozen=True)
class Page:
    modules: list[PlacedModule]
    policy: str
    strategy: str  # the recommended list's strategy (or the first module's)
    # every candidate, in the request's order, with its slot in the policy's (the log)
    decisions: tuple[ShownModule, ...] = ()


def _order(
    policy: str,
    modules: Sequence[Module],
    rng: np.random.Generator,
    bandit: LinearBandit | None,
    features: Mapping[str, float],
) -> tuple[list[int], list[float]]:
    """The modules' order and each one's propensity at its place."""
    n = len(modules)
    if policy == "fixed":
        return list(range(n)), [1.0] * n
    if policy == "random":
        return rng.permutation(n).tolist(), [1.0 / (n - i) for i in range(n)]
    if policy == "bandit":
        if bandit is None:
            raise ValueError("the bandit policy needs the bandit's statistics")
        return bandit.order(modules, features, rng)
    raise ValueError(f"unknown page policy {policy!r}; known: {list(PAGE_POLICIES)}")


def build_page(
    rec: Recommender,
    req: Request,
    modules: Sequence[ModuleSpec],
    *,
    policy: str,
    unavailable: Collection[str] = (),
    rng: np.random.Generator | None = None,
    before_module: Callable[[str], None] = lambda module: None,
    bandit: LinearBandit | None = None,
    features: Mapping[str, float] | None = None,
) -> Page:
    """Order ``modules`` by ``policy`` (``bandit``: with ``bandit`` over ``features``) and
    fill each with ``req.k`` items (see the module docstring); ``before_module(id)`` runs
    before each is filled (the server's deadline check, which may raise)."""
    order, propensity = _order(
        policy,
        [(m.id, m.type) for m in modules],
        rng or np.random.default_rng(),
        bandit,
        features or {"bias": 1.0},
    )
    placed: list[PlacedModule] = []
    decisions: list[ShownModule] = []
    shown: set[str] = set()
    strategy = ""
    for slot, i in enumerate(order):
        spec = modules[i]
        before_module(spec.id)
        ask = replace(req, exclude=frozenset(req.exclude) | shown)
        items = _fill(rec, ask, spec, unavailable)
        if not items.item_ids:
            decisions.append(ShownModule(spec.id, slot, -1, propensity[slot], (), spec.type))
            continue
        if spec.type == "recommended" or not strategy:
            strategy = items.strategy
        shown.update(items.item_ids)
        position = len(placed)
        placed.append(PlacedModule(spec, items, position, propensity[slot]))
        decisions.append(
            ShownModule(spec.id, slot, position, propensity[slot], tuple(items.item_ids), spec.type)
        )
    decisions.sort(key=lambda m: order[m.slot])  # the log keeps the request's order
    return Page(placed, policy, strategy or "popular", tuple(decisions))


def _fill(
    rec: Recommender, req: Request, spec: ModuleSpec, unavailable: Collection[str]
) -> Recommendation:
    if spec.type == "recommended":
        return rec.recommend(req, unavailable)
    if spec.type == "trending":
        return rec.recommend(
            replace(req, variant={**(req.variant or {}), "popularity": True}), unavailable
        )
    if spec.type == "category":
        return rec.recommend(req, unavailable, only=rec.attribute_rows(spec.param))
    if spec.type == "similar":
        return rec.neighbours(req, rec.item_row.get(spec.param), unavailable, "similar to")
    if spec.type == "because_you_watched":
        return rec.neighbours(req, rec.latest_positive(req), unavailable, "because you watched")
    raise ValueError(f"unknown module type {spec.type!r}")
