"""A linear contextual bandit that orders a page's modules (``[serve] page_policy =
"bandit"``), in the form that lets every replica learn together: per module (an *arm*), the
sufficient statistics of a ridge regression of the module's click (1 if any of its items was
clicked, else 0) on named features, ``A = sum x x^T`` and ``b = sum r x``, kept in the online
store, where additions are atomic (:class:`ArmStats`; ``tailored.serve.state``).

Features are names with values (``{"bias": 1, "segment=3f2a:5": 1, "device=mobile": 1,
"position=0": 1}``): the user's segment, the request's context and profile fields chosen in
``[serve] bandit_features``, and the position the module is shown at. A name that was never
seen adds nothing. Each arm has its own weights (a disjoint model, LinUCB's), so what a
module *is* (its type, its category) is carried by its arm rather than by shared features.

Ordering (:meth:`LinearBandit.order`) fills the page top down: at slot ``s`` each remaining
module is scored ``theta . x(context, position=s)`` (``theta = (ridge I + A)^-1 b``, the
expected click-through there), and one is drawn by the exploration rule:

* ``epsilon``: the best with probability ``1 - epsilon``, else one uniformly;
* ``softmax``: in proportion to ``exp(score / temperature)``;
* ``thompson``: the best under weights drawn from the posterior ``N(theta, scale^2 (ridge I +
  A)^-1)``, a draw per slot; its propensity is estimated from ``thompson_samples`` draws.

Each choice's propensity (its probability given the modules above) is returned for the
log; :meth:`LinearBandit.marginals` gives, by sampling whole orders, the probability of each
module at each slot, which off-policy evaluation (:mod:`.offpolicy`) needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "EXPLORATIONS",
    "ArmStats",
    "BanditSettings",
    "LinearBandit",
    "position_feature",
    "with_position",
]

EXPLORATIONS = ("epsilon", "softmax", "thompson")
_LAST_POSITION = 8  # positions from here on share one feature ("position=8+")
SEP = "\t"  # between the two names of an A entry's key (a name holds no control character)


def position_feature(position: int) -> str:
    return f"position={position}" if position < _LAST_POSITION else f"position={_LAST_POSITION}+"


def with_position(context: Mapping[str, float], position: int) -> dict[str, float]:
    """The features of a module shown at ``position`` to a request with ``context``."""
    return {**context, position_feature(position): 1.0}


@dataclass(frozen=True)
class ArmStats:
    """One arm's sufficient statistics: ``a[(f, g)]`` (f <= g: the upper triangle) and
    ``b[f]`` by feature name; ``shown`` and ``clicks`` how many updates each had (the
    count of ``bias``)."""

    a: Mapping[tuple[str, str], float] = field(default_factory=dict)
    b: Mapping[str, float] = field(default_factory=dict)

    @property
    def shown(self) -> float:
        return float(self.a.get(("bias", "bias"), 0.0))

    @property
    def clicks(self) -> float:
        return float(self.b.get("bias", 0.0))

    @staticmethod
    def outer(x: Mapping[str, float], weight: float = 1.0) -> dict[tuple[str, str], float]:
        """``weight * x x^T`` as upper-triangle entries: what one observation adds to ``a``."""
        names = sorted(x)
        return {(f, g): weight * x[f] * x[g] for i, f in enumerate(names) for g in names[i:]}


@dataclass(frozen=True)
class BanditSettings:
    exploration: str = "epsilon"
    epsilon: float = 0.1
    temperature: float = 0.05  # softmax, in units of click-through
    scale: float = 1.0  # thompson: the posterior's spread
    ridge: float = 1.0  # the prior's precision (lambda I added to A)
    thompson_samples: int = 100  # draws that estimate a Thompson choice's propensity

    def check(self) -> None:
        if self.exploration not in EXPLORATIONS:
            raise ValueError(
                f"exploration: must be one of {list(EXPLORATIONS)}, got {self.exploration!r}"
            )
        if not 0.0 <= self.epsilon <= 1.0:
            raise ValueError(f"epsilon: must be in [0, 1], got {self.epsilon}")
        if not self.temperature > 0 or not self.scale > 0 or not self.ridge > 0:
            raise ValueError("temperature, scale and ridge must be > 0")
        if self.thompson_samples < 1:
            raise ValueError(f"thompson_samples: must be >= 1, got {self.thompson_samples}")


@dataclass(frozen=True)
class _Fit:
    index: dict[str, int]  # feature name -> column
    theta: np.ndarray  # [d]
    chol: np.ndarray  # [d, d]: the Cholesky factor of (ridge I + A)^-1


def _fit(stats: ArmStats, ridge: float) -> _Fit:
    names = sorted({f for f, _ in stats.a} | {g for _, g in stats.a} | set(stats.b))
    index = {f: i for i, f in enumerate(names)}
    d = len(names)
    a = np.eye(d) * ridge
    for (f, g), v in stats.a.items():
        i, j = index[f], index[g]
        a[i, j] += v
        if i != j:
            a[j, i] += v
    b = np.zeros(d)
    for f, v in stats.b.items():
        b[index[f]] = v
    if d == 0:
        return _Fit(index, np.zeros(0), np.zeros((0, 0)))
    cov = np.linalg.inv(a)
    cov = (cov + cov.T) / 2
    return _Fit(index, cov @ b, np.linalg.cholesky(cov))


class LinearBandit:
    """Ordering by a linear model per arm from :class:`ArmStats` (module docstring). The
    statistics are solved once, at construction; build a new one to follow the store."""

    def __init__(self, stats: Mapping[str, ArmStats], settings: BanditSettings) -> None:
        settings.check()
        self.settings = settings
        self.stats = dict(stats)
        self._fits = {arm: _fit(s, settings.ridge) for arm, s in self.stats.items()}

    def _design(self, arm: str, x: Mapping[str, float]) -> tuple[_Fit | None, np.ndarray]:
        fit = self._fits.get(arm)
        if fit is None:
            return None, np.zeros(0)
        v = np.zeros(len(fit.index))
        for f, value in x.items():
            i = fit.index.get(f)
            if i is not None:
                v[i] = value
        return fit, v

    def score(self, arm: str, x: Mapping[str, float]) -> float:
        """The expected click-through of ``arm`` with features ``x`` (0 for an arm never
        seen: what the ridge prior says)."""
        fit, v = self._design(arm, x)
        return float(fit.theta @ v) if fit is not None else 0.0

    def _draws(
        self, arms: Sequence[str], x: Mapping[str, float], n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Scores under ``n`` posterior draws: [n, len(arms)]."""
        out = np.zeros((n, len(arms)))
        for j, arm in enumerate(arms):
            fit, v = self._design(arm, x)
            if fit is None:  # the prior: N(0, scale^2 / ridge) whatever the features
                sd = self.settings.scale * float(np.sqrt(sum(f * f for f in x.values())))
                out[:, j] = rng.standard_normal(n) * sd / np.sqrt(self.settings.ridge)
                continue
            spread = fit.chol.T @ v  # the score's posterior sd is |chol^T v|
            out[:, j] = fit.theta @ v + self.settings.scale * float(
                np.linalg.norm(spread)
            ) * rng.standard_normal(n)
        return out

    def probabilities(
        self, arms: Sequence[str], x_at: Mapping[str, float], rng: np.random.Generator
    ) -> np.ndarray:
        """The probability of each of ``arms`` being chosen at one slot, where each has the
        features ``x_at`` (float64 [len(arms)], summing to 1)."""
        n = len(arms)
        s = self.settings
        if s.exploration == "thompson":
            draws = self._draws(arms, x_at, s.thompson_samples, rng)
            wins = np.bincount(draws.argmax(1), minlength=n).astype(np.float64)
            return wins / wins.sum()
        scores = np.array([self.score(a, x_at) for a in arms])
        if s.exploration == "softmax":
            z = np.exp((scores - scores.max()) / s.temperature)
            return z / z.sum()
        p = np.full(n, s.epsilon / n)
        p[int(scores.argmax())] += 1.0 - s.epsilon  # ties: the first in the request's order
        return p

    def order(
        self, arms: Sequence[str], context: Mapping[str, float], rng: np.random.Generator
    ) -> tuple[list[int], list[float]]:
        """An order of ``arms`` (indices) and each choice's propensity given those above."""
        left = list(range(len(arms)))
        order: list[int] = []
        propensity: list[float] = []
        for slot in range(len(arms)):
            x = with_position(context, slot)
            if self.settings.exploration == "thompson":  # a draw decides; its odds estimated
                draw = self._draws([arms[i] for i in left], x, 1, rng)[0]
                pick = int(draw.argmax())
                p = self.probabilities([arms[i] for i in left], x, rng)
                prob = max(float(p[pick]), 1.0 / self.settings.thompson_samples)
            else:
                p = self.probabilities([arms[i] for i in left], x, rng)
                pick = int(rng.choice(len(left), p=p))
                prob = float(p[pick])
            order.append(left.pop(pick))
            propensity.append(prob)
        return order, propensity

    def marginals(
        self,
        arms: Sequence[str],
        context: Mapping[str, float],
        rng: np.random.Generator,
        samples: int = 200,
    ) -> np.ndarray:
        """``P[s, j]``: the probability that the policy puts arm ``j`` at slot ``s``, by
        ``samples`` orders drawn (exact for a policy that does not explore)."""
        n = len(arms)
        if self.settings.exploration == "epsilon" and self.settings.epsilon == 0.0:
            samples = 1
        counts = np.zeros((n, n))
        # per slot, the scores of every arm there: the draws share them (not for thompson)
        if self.settings.exploration == "thompson":
            for _ in range(samples):
                order, _ = self.order(arms, context, rng)
                counts[np.arange(n), order] += 1
            return counts / samples
        scores = np.array(
            [[self.score(a, with_position(context, s)) for a in arms] for s in range(n)]
        )
        taken = np.zeros((samples, n), bool)
        rows = np.arange(samples)
        for s in range(n):
            if self.settings.exploration == "softmax":
                z = (scores[s] - scores[s].max()) / self.settings.temperature
                w = np.where(taken, 0.0, np.exp(z)[None, :])
            else:
                best = np.where(taken, -np.inf, scores[s][None, :]).argmax(1)
                left = (~taken).sum(1, keepdims=True)
                w = np.where(taken, 0.0, self.settings.epsilon / left)
                w[rows, best] += 1.0 - self.settings.epsilon
            w = w / w.sum(1, keepdims=True)
            pick = (w.cumsum(1) < rng.random((samples, 1))).sum(1).clip(0, n - 1)
            # a rounding that lands on a taken arm: the next free one
            pick = np.where(taken[rows, pick], np.where(~taken, np.arange(n), n).min(1), pick)
            counts[s] += np.bincount(pick, minlength=n)
            taken[rows, pick] = True
        return counts / samples
