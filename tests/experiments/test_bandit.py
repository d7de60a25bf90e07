"""The linear contextual bandit's arithmetic: ridge estimates from the sufficient
statistics, the order and propensities of each exploration rule, and the per-slot marginals
that off-policy evaluation uses (checked against exact values where they have one)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tailored.experiments.bandit import ArmStats, BanditSettings, LinearBandit, with_position


def _learn(
    truth: dict[tuple[str, str], float], n: int, rng: np.random.Generator
) -> dict[str, ArmStats]:
    """Statistics of ``n`` random pages: arm j at a random position for a user of a random
    segment, clicked with probability truth[(segment, arm)] - 0.1 * position (a linear truth:
    the model's own form)."""
    a: dict[str, dict[tuple[str, str], float]] = {}
    b: dict[str, dict[str, float]] = {}
    arms = sorted({arm for _, arm in truth})
    segments = sorted({seg for seg, _ in truth})
    for _ in range(n):
        seg = segments[rng.integers(len(segments))]
        for pos, j in enumerate(rng.permutation(len(arms))):
            x = with_position({"bias": 1.0, f"segment={seg}": 1.0}, pos)
            arm = arms[j]
            for key, v in ArmStats.outer(x).items():
                a.setdefault(arm, {})[key] = a.setdefault(arm, {}).get(key, 0.0) + v
            if rng.random() < truth[(seg, arm)] - 0.1 * pos:
                for f, v in x.items():
                    b.setdefault(arm, {})[f] = b.setdefault(arm, {}).get(f, 0.0) + v
    return {arm: ArmStats(a[arm], b.get(arm, {})) for arm in arms}


TRUTH = {
    ("s1", "drama"): 0.6,
    ("s1", "horror"): 0.25,
    ("s1", "trending"): 0.4,
    ("s2", "drama"): 0.25,
    ("s2", "horror"): 0.6,
    ("s2", "trending"): 0.4,
}
ARMS = ["trending", "drama", "horror"]


def test_the_greedy_order_follows_each_segments_tastes() -> None:
    stats = _learn(TRUTH, 3000, np.random.default_rng(0))
    bandit = LinearBandit(stats, BanditSettings(epsilon=0.0))
    rng = np.random.default_rng(1)
    for seg, want in (
        ("s1", ["drama", "trending", "horror"]),
        ("s2", ["horror", "trending", "drama"]),
    ):
        order, prop = bandit.order(ARMS, {"bias": 1.0, f"segment={seg}": 1.0}, rng)
        assert [ARMS[i] for i in order] == want and prop == [1.0, 1.0, 1.0]
        top = bandit.score(want[0], with_position({"bias": 1.0, f"segment={seg}": 1.0}, 0))
        assert top == pytest.approx(0.6, abs=0.05)  # the click-through at the top, estimated
    assert stats["drama"].shown == 3000


def test_an_arm_never_seen_scores_the_prior() -> None:
    bandit = LinearBandit({}, BanditSettings())
    assert bandit.score("new", {"bias": 1.0}) == 0.0
    order, prop = bandit.order(["a", "b"], {"bias": 1.0}, np.random.default_rng(0))
    assert sorted(order) == [0, 1] and all(0 < p <= 1 for p in prop)


@pytest.mark.parametrize("exploration", ["epsilon", "softmax", "thompson"])
def test_marginals_are_doubly_stochastic_and_match_the_propensities(exploration: str) -> None:
    stats = _learn(TRUTH, 500, np.random.default_rng(2))
    s = BanditSettings(exploration=exploration, epsilon=0.3, temperature=0.1, thompson_samples=4000)
    bandit = LinearBandit(stats, s)
    ctx = {"bias": 1.0, "segment=s1": 1.0}
    rng = np.random.default_rng(3)
    p = bandit.marginals(ARMS, ctx, rng, samples=4000)
    assert p.sum(0) == pytest.approx(np.ones(3)) and p.sum(1) == pytest.approx(np.ones(3))
    first = bandit.probabilities(ARMS, with_position(ctx, 0), rng)
    assert p[0] == pytest.approx(first, abs=0.03)  # slot 0: marginal = the first choice's odds
    if exploration == "epsilon":  # exact: the best with 1 - eps + eps / 3
        best = int(np.argmax([bandit.score(a, with_position(ctx, 0)) for a in ARMS]))
        assert first[best] == pytest.approx(0.7 + 0.1)


def test_softmax_marginals_against_every_permutation() -> None:
    stats = _learn(TRUTH, 500, np.random.default_rng(4))
    bandit = LinearBandit(stats, BanditSettings(exploration="softmax", temperature=0.1))
    ctx = {"bias": 1.0, "segment=s2": 1.0}
    exact = np.zeros((3, 3))
    for perm in itertools.permutations(range(3)):
        prob, left = 1.0, list(range(3))
        for slot, j in enumerate(perm):
            p = bandit.probabilities(
                [ARMS[i] for i in left], with_position(ctx, slot), np.random.default_rng()
            )
            prob *= p[left.index(j)]
            left.remove(j)
        for slot, j in enumerate(perm):
            exact[slot, j] += prob
    got = bandit.marginals(ARMS, ctx, np.random.default_rng(5), samples=20_000)
    assert got == pytest.approx(exact, abs=0.015)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="exploration"):
        LinearBandit({}, BanditSettings(exploration="ucb"))
    with pytest.raises(ValueError, match="epsilon"):
        LinearBandit({}, BanditSettings(epsilon=1.5))
