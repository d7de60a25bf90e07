"""The linear contextual bandit's arithmetic: ridge estimates from the sufficient
statistics, the order and propensities of each exploration rule, and the per-slot marginals
that off-policy evaluation uses (checked against exact values where they have one)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tailored.experiments.bandit import ArmStats, BanditSettings, LinearBandit, module_features

MODULES = [("trending", "trending"), ("drama", "category"), ("horror", "category")]
TRUTH = {
    ("s1", "drama"): 0.6,
    ("s1", "horror"): 0.25,
    ("s1", "trending"): 0.4,
    ("s2", "drama"): 0.25,
    ("s2", "horror"): 0.6,
    ("s2", "trending"): 0.4,
}
POSITION = [0.0, -0.1, -0.2]  # what a position takes off, whatever the module (additive)


def _ctx(segment: str) -> dict[str, float]:
    return {"bias": 1.0, f"segment={segment}": 1.0}


def _learn(n: int, rng: np.random.Generator, *, order: str = "random") -> ArmStats:
    """Statistics of ``n`` pages: the modules in a random order (or, with ``order`` "fixed",
    mostly as listed: a policy that keeps horror low), for a user of a random segment, each
    clicked with probability TRUTH + POSITION."""
    observations = []
    for _ in range(n):
        seg = ("s1", "s2")[int(rng.integers(2))]
        perm = rng.permutation(3) if order == "random" or rng.random() < 0.1 else range(3)
        for pos, j in enumerate(perm):
            x = module_features(MODULES[j], _ctx(seg), pos)
            clicked = rng.random() < TRUTH[(seg, MODULES[j][0])] + POSITION[pos]
            observations.append((x, float(clicked)))
    return ArmStats.of(observations)


def test_the_greedy_order_follows_each_segments_tastes() -> None:
    stats = _learn(4000, np.random.default_rng(0))
    bandit = LinearBandit(stats, BanditSettings(epsilon=0.0))
    rng = np.random.default_rng(1)
    for seg, want in (
        ("s1", ["drama", "trending", "horror"]),
        ("s2", ["horror", "trending", "drama"]),
    ):
        order, prop = bandit.order(MODULES, _ctx(seg), rng)
        assert [MODULES[i][0] for i in order] == want and prop == [1.0, 1.0, 1.0]
        best = MODULES[[m for m, _ in MODULES].index(want[0])]
        assert bandit.score(best, _ctx(seg), 0) == pytest.approx(0.6, abs=0.04)
        assert bandit.score(best, _ctx(seg), 2) == pytest.approx(0.4, abs=0.04)
    assert stats.shown("drama") == 4000 and 0 < stats.clicks("drama") < 4000


def test_a_module_kept_low_is_still_known_at_the_top() -> None:
    """The position weights are shared: horror, shown last on 90% of the pages, is
    estimated at the top from the other modules' top and bottom, and rises for s2."""
    stats = _learn(4000, np.random.default_rng(2), order="fixed")
    bandit = LinearBandit(stats, BanditSettings(epsilon=0.0))
    assert bandit.score(MODULES[2], _ctx("s2"), 0) == pytest.approx(0.6, abs=0.06)
    order, _ = bandit.order(MODULES, _ctx("s2"), np.random.default_rng(3))
    assert MODULES[order[0]][0] == "horror"


def test_a_new_module_of_a_known_type_borrows_what_its_type_learned() -> None:
    stats = _learn(4000, np.random.default_rng(4))
    bandit = LinearBandit(stats, BanditSettings(epsilon=0.0))
    new_category = ("comedy", "category")
    # never shown: its own weights are the prior's 0; its type's carry the categories' mean
    assert bandit.score(new_category, _ctx("s1"), 0) > 0.2
    unknown = bandit.score(("comedy", "never-seen-type"), _ctx("s1"), 0)
    assert unknown == pytest.approx(bandit.score(("other", "other"), _ctx("s2"), 0))  # positions'
    assert bandit.score(new_category, _ctx("s1"), 0) > unknown


def test_an_untrained_bandit_orders_at_random_by_its_prior() -> None:
    bandit = LinearBandit(None, BanditSettings(exploration="thompson", thompson_samples=200))
    assert bandit.score(MODULES[0], {"bias": 1.0}, 0) == 0.0
    order, prop = bandit.order(MODULES, {"bias": 1.0}, np.random.default_rng(0))
    assert sorted(order) == [0, 1, 2] and all(0 < p <= 1 for p in prop)
    p = bandit.marginals(MODULES, {"bias": 1.0}, np.random.default_rng(1), samples=600)
    assert p == pytest.approx(np.full((3, 3), 1 / 3), abs=0.08)


@pytest.mark.parametrize("exploration", ["epsilon", "softmax", "thompson"])
def test_marginals_are_doubly_stochastic_and_match_the_propensities(exploration: str) -> None:
    stats = _learn(500, np.random.default_rng(2))
    s = BanditSettings(exploration=exploration, epsilon=0.3, temperature=0.1, thompson_samples=4000)
    bandit = LinearBandit(stats, s)
    ctx = _ctx("s1")
    rng = np.random.default_rng(3)
    p = bandit.marginals(MODULES, ctx, rng, samples=4000)
    assert p.sum(0) == pytest.approx(np.ones(3)) and p.sum(1) == pytest.approx(np.ones(3))
    first = bandit.probabilities(MODULES, ctx, 0, rng)
    assert p[0] == pytest.approx(first, abs=0.03)  # slot 0: marginal = the first choice's odds
    if exploration == "epsilon":  # exact: the best with 1 - eps + eps / 3
        best = int(np.argmax([bandit.score(m, ctx, 0) for m in MODULES]))
        assert first[best] == pytest.approx(0.7 + 0.1)


def test_softmax_marginals_against_every_permutation() -> None:
    stats = _learn(500, np.random.default_rng(4))
    bandit = LinearBandit(stats, BanditSettings(exploration="softmax", temperature=0.1))
    ctx = _ctx("s2")
    exact = np.zeros((3, 3))
    for perm in itertools.permutations(range(3)):
        prob, left = 1.0, list(range(3))
        for slot, j in enumerate(perm):
            p = bandit.probabilities([MODULES[i] for i in left], ctx, slot, np.random.default_rng())
            prob *= p[left.index(j)]
            left.remove(j)
        for slot, j in enumerate(perm):
            exact[slot, j] += prob
    got = bandit.marginals(MODULES, ctx, np.random.default_rng(5), samples=20_000)
    assert got == pytest.approx(exact, abs=0.015)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="exploration"):
        LinearBandit(None, BanditSettings(exploration="ucb"))
    with pytest.raises(ValueError, match="epsilon"):
        LinearBandit(None, BanditSettings(epsilon=1.5))
