"""Off-policy evaluation of page orders (``tailored page evaluate``) against a known truth:
pages logged in a real SQLite state by a uniformly random order, each module clicked with
a planted probability that depends on the user's segment, the module and the slot; the
estimates of other policies' values must hold the exact value in their intervals."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tailored.errors import TailoredError
from tailored.experiments.bandit import BanditSettings
from tailored.serve.page_evaluate import PolicySpec, evaluate_log, read_policy
from tailored.serve.sqlite_state import SQLiteState
from tailored.serve.state import PageLog, ShownModule

MODULES = ["trending", "drama", "horror"]
BASE = {
    ("s1", "drama"): 0.5,
    ("s1", "horror"): 0.1,
    ("s1", "trending"): 0.3,
    ("s2", "drama"): 0.1,
    ("s2", "horror"): 0.5,
    ("s2", "trending"): 0.3,
}
SLOT = [1.0, 0.6, 0.35]  # what a slot is worth: examined less further down


def _p(segment: str, module: str, slot: int) -> float:
    return BASE[(segment, module)] * SLOT[slot]


def _log(state: SQLiteState, n: int, seed: int, policy: str = "random") -> None:
    rng = np.random.default_rng(seed)
    pages, clicks = [], []
    for i in range(n):
        seg = ("s1", "s2")[i % 2]
        order = rng.permutation(3) if policy == "random" else np.arange(3)
        slot_of = {int(j): s for s, j in enumerate(order)}
        rid = f"{policy}-{seed}-{i}"
        modules = tuple(
            ShownModule(m, slot_of[j], slot_of[j], 1 / (3 - slot_of[j]), (f"i{j}",))
            for j, m in enumerate(MODULES)
        )
        pages.append(
            PageLog(
                rid,
                f"u{i % 500}",
                i,
                "home",
                policy,
                True,
                {"bias": 1.0, f"segment={seg}": 1.0},
                modules,
            )
        )
        for j, m in enumerate(MODULES):
            if rng.random() < _p(seg, m, slot_of[j]):
                clicks.append((rid, m))
    state.log_pages(pages, {}, 86_400_000)
    from tailored.serve.state import Feedback

    state.page_feedback([Feedback(rid, m, "click") for rid, m in clicks])


def _true_value(order_of: dict[str, list[str]]) -> float:
    """Clicked modules per page of a deterministic order per segment (half the users each)."""
    return float(
        np.mean([sum(_p(seg, m, s) for s, m in enumerate(order_of[seg])) for seg in ("s1", "s2")])
    )


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> SQLiteState:
    s = SQLiteState(tmp_path_factory.mktemp("ope") / "state.db")
    _log(s, 6000, seed=0)
    return s


def test_the_fixed_order_estimated_from_random_logs_holds_its_true_value(
    state: SQLiteState,
) -> None:
    spec = PolicySpec("fixed", BanditSettings())
    out = evaluate_log(state, spec)
    truth = _true_value({"s1": MODULES, "s2": MODULES})
    for name in ("ips", "snips", "dr"):
        est = out["estimate"][name]
        assert est["low"] <= truth <= est["high"], (name, est, truth)
    assert out["estimate"]["pages"] == 6000 and out["observed"]["random"]["pages"] == 6000
    assert out["estimate"]["users"] == out["observed"]["random"]["users"] == 500  # clustered
    # the random order's own observed value: the mean over every order
    random_truth = np.mean(
        [
            _true_value({"s1": [MODULES[j] for j in p], "s2": [MODULES[j] for j in p]})
            for p in itertools.permutations(range(3))
        ]
    )
    obs = out["observed"]["random"]
    assert obs["low"] <= random_truth <= obs["high"]


def test_a_bandit_fitted_on_the_log_is_estimated_near_the_best_orders_value(
    state: SQLiteState,
) -> None:
    spec = PolicySpec("bandit", BanditSettings(epsilon=0.0), statistics="log", samples=1)
    out = evaluate_log(state, spec)
    best = _true_value(
        {"s1": ["drama", "trending", "horror"], "s2": ["horror", "trending", "drama"]}
    )
    fixed = _true_value({"s1": MODULES, "s2": MODULES})
    dr = out["estimate"]["dr"]
    assert dr["low"] <= best <= dr["high"]
    assert dr["low"] > fixed  # better than the site's order, and the interval says so
    assert out["module_click_through"]["dr"]["value"] == pytest.approx(dr["value"] / 3)


def test_bad_policies_and_logs_are_refused_by_name(state: SQLiteState, tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text('policy = "greedy"\n')
    with pytest.raises(TailoredError, match="policy: must be one of"):
        read_policy(bad)
    bad.write_text('policy = "bandit"\nepsilon = 2.0\n')
    with pytest.raises(TailoredError, match="epsilon"):
        read_policy(bad)
    bad.write_text('policy = "bandit"\nepsillon = 0.1\n')
    with pytest.raises(TailoredError, match="unknown field"):
        read_policy(bad)
    spec = PolicySpec("fixed", BanditSettings())
    with pytest.raises(TailoredError, match="explores nothing"):
        evaluate_log(state, spec, logged="fixed")
    with pytest.raises(TailoredError, match="no 'bandit' pages"):
        evaluate_log(state, spec, logged="bandit")
    with pytest.raises(TailoredError, match="--slots"):
        evaluate_log(state, spec, slots=9)


def test_the_command_prints_the_estimates(state: SQLiteState, tmp_path: Path) -> None:
    policy = tmp_path / "fixed.toml"
    policy.write_text('policy = "fixed"\n')
    cmd = [sys.executable, "-m", "tailored.cli", "page", "evaluate", str(state.path)]
    run = subprocess.run([*cmd, "--policy", str(policy), "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert set(out["estimate"]) >= {"ips", "snips", "dr"} and out["logged"] == "random"
    text = subprocess.run([*cmd, "--policy", str(policy)], capture_output=True, text=True)
    assert text.returncode == 0 and "dr:" in text.stdout and "observed" in text.stdout
    policy.write_text("policy = \n")
    bad = subprocess.run([*cmd, "--policy", str(policy)], capture_output=True, text=True)
    assert bad.returncode != 0 and str(policy) in bad.stderr


def test_the_clustered_interval_is_statsmodels_cluster_robust_one() -> None:
    import statsmodels.api as sm

    from tailored.experiments.offpolicy import interval

    rng = np.random.default_rng(0)
    users = rng.integers(0, 80, 1000)
    effect = rng.normal(0, 1, 80)  # each user's own level: their pages go together
    terms = effect[users] + rng.normal(0, 0.5, 1000)
    got = interval(terms, [f"u{u}" for u in users])
    fit = sm.OLS(terms, np.ones(len(terms))).fit(cov_type="cluster", cov_kwds={"groups": users})
    assert got["value"] == pytest.approx(float(fit.params[0]))
    assert (got["high"] - got["value"]) / 1.96 == pytest.approx(float(fit.bse[0]), rel=1e-9)
    naive = interval(terms)
    assert naive["high"] - naive["value"] < 0.5 * (got["high"] - got["value"])  # too narrow
