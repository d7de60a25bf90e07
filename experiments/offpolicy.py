"""Off-policy evaluation of a page-ordering policy from logged pages: what a policy *would*
have got, estimated from pages another policy served, before it serves anyone.

The value is the expected number of clicked modules per page in the first ``slots`` places
(a module is clicked when any of its items is); divided by ``slots``, the module
click-through. A page's value is taken as the sum of its slots' (the additive, "pseudo-
inverse" assumption of slate evaluation, Swaminathan et al. 2017: a module's click depends on
the module, the slot and the request, not on the modules beside it), which keeps the
weights per slot, ``w = pi(module at slot) / mu(module at slot)``, rather than per whole
order (the inverse of a uniform order's 1/720 for six modules would swamp any estimate).
``pi`` and ``mu`` are the marginal probabilities of the target and logging policies
putting that module in that slot.

Estimators, each with a 95% normal interval from the per-page terms, clustered by user (a
user's pages are not independent):

* **IPS**: the mean over pages of ``sum_s w_s r_s``; unbiased where ``mu > 0`` wherever
  ``pi > 0`` (a uniformly random logging order guarantees it);
* **SNIPS**: per slot, ``sum w r / sum w``: a little biased, often much less variable;
* **DR** (doubly robust): a reward model's prediction for the target policy's choices plus
  the IPS-weighted error of the model on the logged choice; unbiased if either the
  propensities or the model are right. The model is the bandit's own ridge regression
  (:class:`tailored.experiments.bandit.LinearBandit`) fitted on the log, cross-fitted: each
  half of the pages is predicted by the model of the other half.

The logging marginal must be known: for a uniformly random order it is ``1 / n`` at every
slot; for any other policy only the first slot's (its logged propensity, given nothing
above), so such logs evaluate ``slots = 1`` only. A log from the fixed order supports no
other policy and is refused.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tailored.experiments.bandit import (
    ArmStats,
    BanditSettings,
    LinearBandit,
    Module,
    module_features,
)
from tailored.experiments.stats import clustered_se

__all__ = ["LoggedPage", "evaluate", "interval", "reward_model"]

Marginals = Callable[["LoggedPage"], np.ndarray]  # [n, n]: P[slot, candidate]


@dataclass(frozen=True)
class LoggedPage:
    """One logged page: ``modules`` its candidates, (id, type) in the request's order,
    ``context`` the features the policy saw, ``chosen[s]`` the candidate at slot ``s``,
    ``mu[s]`` the logging policy's marginal probability of that, ``rewards[s]`` 1 if that
    slot's module was clicked."""

    key: str
    modules: tuple[Module, ...]
    context: Mapping[str, float]
    chosen: tuple[int, ...]
    mu: tuple[float, ...]
    rewards: tuple[float, ...]
    group: str = ""  # the user: pages of one user are clustered in the intervals


def interval(terms: np.ndarray, groups: Sequence[str] | None = None) -> dict[str, float]:
    """Mean and 95% normal interval of per-page terms; with ``groups`` (each page's user),
    the cluster-robust one: a user's pages are not independent of each other, and treating
    them so makes the interval too narrow."""
    n = len(terms)
    if n < 2:
        mean = float(terms.mean()) if n else math.nan
        return {"value": mean, "low": math.nan, "high": math.nan}
    mean = float(terms.mean())
    if groups is None:
        se = float(terms.std(ddof=1)) / math.sqrt(n)
    else:
        se = clustered_se(terms - mean, groups)
    return {"value": mean, "low": mean - 1.96 * se, "high": mean + 1.96 * se}


def reward_model(pages: Sequence[LoggedPage], ridge: float = 1.0) -> LinearBandit:
    """The bandit's ridge regression of the click on the features at the logged slot."""
    stats = ArmStats.of(
        (module_features(p.modules[j], p.context, slot), r)
        for p in pages
        for slot, (j, r) in enumerate(zip(p.chosen, p.rewards, strict=True))
    )
    return LinearBandit(stats, BanditSettings(epsilon=0.0, ridge=ridge))


def _predictions(model: LinearBandit, p: LoggedPage, slots: int) -> np.ndarray:
    return np.array([[model.score(m, p.context, s) for m in p.modules] for s in range(slots)])


def evaluate(
    pages: Sequence[LoggedPage], target: Marginals, *, slots: int, ridge: float = 1.0
) -> dict[str, object]:
    """IPS, SNIPS and DR estimates of the target policy's clicked modules per page in the
    first ``slots`` places (module docstring); ``target(page)`` its marginals."""
    if not pages:
        raise ValueError("no logged pages to evaluate from")
    fold = np.array([zlib.crc32(p.key.encode()) % 2 for p in pages])
    models = [
        reward_model([p for p, f in zip(pages, fold, strict=True) if f != k], ridge) for k in (0, 1)
    ]
    ips = np.zeros(len(pages))
    dr = np.zeros(len(pages))
    w_all = np.zeros((len(pages), slots))
    r_all = np.zeros((len(pages), slots))
    for i, p in enumerate(pages):
        s_n = min(slots, len(p.chosen))
        pi = target(p)
        q = _predictions(models[fold[i]], p, s_n)
        for s in range(s_n):
            j = p.chosen[s]
            w = float(pi[s, j]) / p.mu[s]
            r = p.rewards[s]
            w_all[i, s], r_all[i, s] = w, r
            ips[i] += w * r
            dr[i] += float(pi[s] @ q[s]) + w * (r - q[s, j])
    # SNIPS per slot; its per-page terms by the delta method (the ratio's influence)
    snips_slots = (w_all * r_all).sum(0) / np.maximum(w_all.sum(0), 1e-12)
    mean_w = np.maximum(w_all.mean(0), 1e-12)
    influence = ((w_all * r_all - snips_slots * w_all) / mean_w).sum(1)
    groups = [p.group or p.key for p in pages]
    snips = interval(influence + snips_slots.sum(), groups)
    weights = w_all.sum(1)
    return {
        "pages": len(pages),
        "users": len(set(groups)),
        "slots": slots,
        "ips": interval(ips, groups),
        "snips": snips,
        "dr": interval(dr, groups),
        # Kish's effective sample size of the per-slot weights, averaged over slots
        "effective_pages": float(
            np.mean(
                [
                    w_all[:, s].sum() ** 2 / max((w_all[:, s] ** 2).sum(), 1e-12)
                    for s in range(slots)
                ]
            )
        ),
        "mean_weight": float(weights.mean() / slots),
    }
