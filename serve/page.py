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

Ordering policies: ``fixed`` (the order the site sent), ``random`` (uniform). Each module's
``propensity`` is the probability the policy gave it its place in the order of all the
candidate modules, given those above it: 1 for ``fixed``; 1 / (modules left) for
``random``. The modules are filled top down, so that one higher up keeps its items and a
lower one skips them; a module left with no items is not shown, and the positions close up
(``position`` counts the modules shown; the propensity stays that of the policy's order).

Not built yet: the contextual bandit that is to order modules by what users click, which
needs Track events that name the page and module; and the work each module repeats (the
user's history, their embedding, a ranker call) is not shared between a page's modules.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

import numpy as np

from tailored.serve.recommender import Recommendation, Recommender, Request

__all__ = ["MODULE_TYPES", "PAGE_POLICIES", "ModuleSpec", "Page", "PlacedModule", "build_page"]

MODULE_TYPES = ("recommended", "trending", "because_you_watched", "similar", "category")
NEEDS_PARAM = frozenset({"similar", "category"})
PAGE_POLICIES = ("fixed", "random")


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


def _order(policy: str, n: int, rng: np.random.Generator) -> tuple[list[int], list[float]]:
    """The modules' order and each one's propensity at its place."""
    if policy == "fixed":
        return list(range(n)), [1.0] * n
    if policy == "random":
        return rng.permutation(n).tolist(), [1.0 / (n - i) for i in range(n)]
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
) -> Page:
    """Order ``modules`` by ``policy`` and fill each with ``req.k`` items (see the module
    docstring); ``before_module(id)`` runs before each is filled (the server's deadline
    check, which may raise)."""
    order, propensity = _order(policy, len(modules), rng or np.random.default_rng())
    placed: list[PlacedModule] = []
    shown: set[str] = set()
    strategy = ""
    for slot, i in enumerate(order):
        spec = modules[i]
        before_module(spec.id)
        ask = replace(req, exclude=frozenset(req.exclude) | shown)
        items = _fill(rec, ask, spec, unavailable)
        if not items.item_ids:
            continue
        if spec.type == "recommended" or not strategy:
            strategy = items.strategy
        shown.update(items.item_ids)
        placed.append(PlacedModule(spec, items, len(placed), propensity[slot]))
    return Page(placed, policy, strategy or "popular")


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
