"""A linear contextual bandit that orders a page's modules (``[serve] page_policy =
"bandit"``), in the form that lets every replica learn together: the sufficient statistics
of one ridge regression per page type, of a module's click (1 if any of its items was
clicked, else 0) on named features, ``A = sum x x^T`` and ``b = sum r x``, kept in the online
store, where additions are atomic (:class:`ArmStats`; ``tailored.serve.state``).

The features of module ``m`` (of type ``t``) shown at position ``p`` to a request whose
context features are ``c`` (:func:`module_features`):

* ``m|f`` for each ``f`` in ``c``: the module's own weights (``m|bias``, ``m|segment=...``);
* ``type=t|f`` for each ``f`` in ``c``: weights shared by the modules of one type, so that
  what is learned of one category row carries to another, and to a new one;
* ``position=p``: one weight per position, shared by every module.

The request's features ``c`` are ``bias``, the user's segment and the context and profile
fields chosen in ``[serve] bandit_features`` (:func:`tailored.serve.page.page_features`). The
position weights being shared is what lets the model learn from a module shown low on a page
what it would do at the top: with a weight per module and position (LinUCB's disjoint model)
a module the policy keeps low is never seen at the top often enough to rise. A name never
seen adds nothing.

Ordering (:meth:`LinearBandit.order`) fills the page top down: at slot ``s`` each remaining
module is scored ``theta . x(module, position=s)`` (``theta = (ridge I + A)^-1 b``, the
expected click-through there), and one is drawn by the exploration rule:

* ``epsilon``: the best with probability ``1 - epsilon``, else one uniformly;
* ``softmax``: in proportion to ``exp(score / temperature)``;
* ``thompson``: the best under weights drawn from the posterior ``N(theta, scale^2 (ridge I +
  A)^-1)``, a draw per slot; its propensity is estimated from ``thompson_samples`` draws.

The page is scored slot by slot, but learns from the position each module was shown at:
the two differ when a module above had nothing to show and the page closed up, so the
score of a lower slot is a little pessimistic there.

Each choice's propensity (its probability given the modules above) is returned for the
log; :meth:`LinearBandit.marginals` gives, by sampling whole orders, the probability of each
module at each slot, which off-policy evaluation (:mod:`.offpolicy`) needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "EXPLORATIONS",
    "ArmStats",
    "BanditSettings",
    "LinearBandit",
    "Module",
    "module_features",
    "position_feature",
]

EXPLORATIONS = ("epsilon", "softmax", "thompson")
_LAST_POSITION = 8  # positions from here on share one feature ("position=8+")
SEP = "\t"  # between the two names of an A entry's key (a name holds no control character)


def position_feature(position: int) -> str:
    return f"position={position}" if position < _LAST_POSITION else f"position={_LAST_POSITION}+"


Module = tuple[str, str]  # a module's id and type


def module_features(
    module: Module, context: Mapping[str, float], position: int
) -> dict[str, float]:
    """The features of ``module`` shown at ``position`` to a request with ``context`` (the
    module docstring)."""
    name, kind = module
    x = {f"{name}|{f}": v for f, v in context.items()}
    x.update({f"type={kind}|{f}": v for f, v in context.items()})
    x[position_feature(position)] = 1.0
    return x


@dataclass(frozen=True)
class ArmStats:
    """One model's sufficient statistics (a page type's): ``a[(f, g)]`` (f <= g: the upper
    triangle) and ``b[f]`` by feature name."""

    a: Mapping[tuple[str, str], float] = field(default_factory=dict)
    b: Mapping[str, float] = field(default_factory=dict)

    def shown(self, module: str) -> float:
        """How many times ``module`` was counted shown (the count of its bias feature)."""
        key = f"{module}|bias"
        return float(self.a.get((key, key), 0.0))

    def clicks(self, module: str) -> float:
        """How many times ``module`` was counted clicked."""
        return float(self.b.get(f"{module}|bias", 0.0))

    @staticmethod
    def of(observations: Iterable[tuple[Mapping[str, float], float]]) -> ArmStats:
        """The statistics of ``(x, reward)`` observations, each counted shown once."""
        a: dict[tuple[str, str], float] = {}
        b: dict[str, float] = {}
        for x, r in observations:
            for key, v in ArmStats.outer(x).items():
                a[key] = a.get(key, 0.0) + v
            if r:
                for f, v in x.items():
                    b[f] = b.get(f, 0.0) + r * v
        return ArmStats(a, b)

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
    # the features solved for at most: the most observed (a name seen rarely weighs nothing)
    max_features: int = 512

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
        if self.max_features < 1:
            raise ValueError(f"max_features: must be >= 1, got {self.max_features}")


@dataclass(frozen=True)
class _Fit:
    index: dict[str, int]  # feature name -> column
    theta: np.ndarray  # [d]
    chol: np.ndarray  # [d, d]: the Cholesky factor of (ridge I + A)^-1


def _fit(stats: ArmStats, ridge: float, max_features: int) -> _Fit:
    names = sorted({f for f, _ in stats.a} | {g for _, g in stats.a} | set(stats.b))
    if len(names) > max_features:  # the most observed; the solve is cubic in their number
        seen = {f: stats.a.get((f, f), 0.0) for f in names}
        names = sorted(sorted(names, key=lambda f: -seen[f])[:max_features])
    index = {f: i for i, f in enumerate(names)}
    d = len(names)
    a = np.eye(d) * ridge
    for (f, g), v in stats.a.items():
        if f not in index or g not in index:
            continue
        i, j = index[f], index[g]
        a[i, j] += v
        if i != j:
            a[j, i] += v
    b = np.zeros(d)
    for f, v in stats.b.items():
        if f in index:
            b[index[f]] = v
    if d == 0:
        return _Fit(index, np.zeros(0), np.zeros((0, 0)))
    cov = np.linalg.inv(a)
    cov = (cov + cov.T) / 2
    return _Fit(index, cov @ b, np.linalg.cholesky(cov))


class LinearBandit:
    """Ordering by the linear model of one page type's :class:`ArmStats` (module
    docstring). The statistics are solved once, at construction; build a new one to follow
    the store. ``modules`` are (id, type) pairs throughout."""

    def __init__(self, stats: ArmStats | None, settings: BanditSettings) -> None:
        settings.check()
        self.settings = settings
        self.stats = stats or ArmStats()
        self._fit = _fit(self.stats, settings.ridge, settings.max_features)

    def _design(self, x: Mapping[str, float]) -> np.ndarray:
        v = np.zeros(len(self._fit.index))
        for f, value in x.items():
            i = self._fit.index.get(f)
            if i is not None:
                v[i] = value
        return v

    def score(self, module: Module, context: Mapping[str, float], position: int) -> float:
        """The expected click-through of ``module`` at ``position`` (0 for what was never
        seen: what the ridge prior says)."""
        return float(self._fit.theta @ self._design(module_features(module, context, position)))

    def _designs(
        self, modules: Sequence[Module], context: Mapping[str, float], position: int
    ) -> np.ndarray:
        return np.stack(
            [self._design(module_features(m, context, position)) for m in modules]
        ).reshape(len(modules), len(self._fit.index))

    def _draws(
        self,
        modules: Sequence[Module],
        context: Mapping[str, float],
        position: int,
        n: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Scores under ``n`` draws of the weights from the posterior: [n, len(modules)]."""
        x = self._designs(modules, context, position)
        d = len(self._fit.index)
        # features never seen have the prior N(0, 1 / ridge): what they add is drawn apart
        unseen = np.array(
            [
                sum(
                    v * v
                    for f, v in module_features(m, context, position).items()
                    if f not in self._fit.index
                )
                for m in modules
            ]
        )
        mean = x @ self._fit.theta if d else np.zeros(len(modules))
        z = rng.standard_normal((n, d))
        spread = self._fit.chol.T @ x.T if d else np.zeros((0, len(modules)))  # [d, modules]
        draws = mean[None, :] + self.settings.scale * (z @ spread if d else 0.0)
        prior = self.settings.scale * np.sqrt(unseen / self.settings.ridge)
        return draws + rng.standard_normal((n, len(modules))) * prior[None, :]

    def probabilities(
        self,
        modules: Sequence[Module],
        context: Mapping[str, float],
        position: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """The probability of each of ``modules`` being chosen at ``position`` (float64,
        summing to 1)."""
        n = len(modules)
        s = self.settings
        if s.exploration == "thompson":
            draws = self._draws(modules, context, position, s.thompson_samples, rng)
            wins = np.bincount(draws.argmax(1), minlength=n).astype(np.float64)
            return wins / wins.sum()
        scores = self._designs(modules, context, position) @ self._fit.theta
        if s.exploration == "softmax":
            z = np.exp((scores - scores.max()) / s.temperature)
            return z / z.sum()
        p = np.full(n, s.epsilon / n)
        p[int(scores.argmax())] += 1.0 - s.epsilon  # ties: the first in the request's order
        return p

    def order(
        self, modules: Sequence[Module], context: Mapping[str, float], rng: np.random.Generator
    ) -> tuple[list[int], list[float]]:
        """An order of ``modules`` (indices) and each choice's propensity given those
        above."""
        left = list(range(len(modules)))
        order: list[int] = []
        propensity: list[float] = []
        for slot in range(len(modules)):
            here = [modules[i] for i in left]
            if self.settings.exploration == "thompson":  # a draw decides; its odds estimated
                pick = int(self._draws(here, context, slot, 1, rng)[0].argmax())
                p = self.probabilities(here, context, slot, rng)
                prob = max(float(p[pick]), 1.0 / self.settings.thompson_samples)
            else:
                p = self.probabilities(here, context, slot, rng)
                pick = int(rng.choice(len(left), p=p))
                prob = float(p[pick])
            order.append(left.pop(pick))
            propensity.append(prob)
        return order, propensity

    def marginals(
        self,
        modules: Sequence[Module],
        context: Mapping[str, float],
        rng: np.random.Generator,
        samples: int = 200,
    ) -> np.ndarray:
        """``P[s, j]``: the probability that the policy puts module ``j`` at slot ``s``, by
        ``samples`` orders drawn (one for a policy that does not explore)."""
        n = len(modules)
        if self.settings.exploration == "epsilon" and self.settings.epsilon == 0.0:
            samples = 1
        counts = np.zeros((n, n))
        rows = np.arange(samples)
        if self.settings.exploration == "thompson":  # a draw per slot, as order() does
            taken = np.zeros((samples, n), bool)
            for s in range(n):
                draws = self._draws(modules, context, s, samples, rng)
                pick = np.where(taken, -np.inf, draws).argmax(1)
                counts[s] += np.bincount(pick, minlength=n)
                taken[rows, pick] = True
            return counts / samples
        scores = np.stack([self._designs(modules, context, s) @ self._fit.theta for s in range(n)])
        taken = np.zeros((samples, n), bool)
        for s in range(n):
            if self.settings.exploration == "softmax":  # centred on the best still free
                free = np.where(taken, -np.inf, scores[s][None, :])
                w = np.exp((free - free.max(1, keepdims=True)) / self.settings.temperature)
            else:
                best = np.where(taken, -np.inf, scores[s][None, :]).argmax(1)
                left = (~taken).sum(1, keepdims=True)
                w = np.where(taken, 0.0, self.settings.epsilon / left)
                w[rows, best] += 1.0 - self.settings.epsilon
            w = w / w.sum(1, keepdims=True)
            pick = (w.cumsum(1) < rng.random((samples, 1))).sum(1).clip(0, n - 1)
            # a rounding that lands on a taken module: the first free one
            pick = np.where(taken[rows, pick], np.where(~taken, np.arange(n), n).min(1), pick)
            counts[s] += np.bincount(pick, minlength=n)
            taken[rows, pick] = True
        return counts / samples
