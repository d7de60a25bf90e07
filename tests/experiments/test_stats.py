"""The statistics engine of A/B tests: against scipy and statsmodels where they compute the
same thing, against a bootstrap over users where the delta method approximates, and by
simulation where the claim is about error rates (A/A calibration, peeking, SRM)."""

from __future__ import annotations

import json
import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy import optimize, stats

from tailored.experiments.stats import (
    DEFAULT_PLANNED_N,
    MeanStats,
    RatioStats,
    compare_mean_stats,
    compare_means,
    compare_ratios,
    cuped,
    power_at,
    sequential_multiplier,
    sequential_p_value,
    sequential_rho,
    srm_test,
    users_needed,
)

FloatArray = npt.NDArray[np.float64]


# --- data -----------------------------------------------------------------------------------


def clicks(rng: np.random.Generator, size: tuple[int, ...] | int) -> FloatArray:
    """A skewed, zero-inflated count per user: 60% never click, the rest a gamma-Poisson
    (negative binomial) number of clicks with mean 3."""
    active = rng.random(size) < 0.4
    rate = rng.gamma(shape=0.8, scale=3.0 / 0.8, size=size)
    return np.where(active, rng.poisson(rate), 0).astype(np.float64)


def impressions_and_clicks(rng: np.random.Generator, n: int) -> tuple[FloatArray, FloatArray]:
    """Per-user impressions (heavy-tailed, some users with none) and clicks on them, with a
    per-user click-through rate around 5%."""
    impressions = rng.negative_binomial(2, 0.1, size=n).astype(np.float64)
    ctr = rng.beta(1.0, 19.0, size=n)
    return rng.binomial(impressions.astype(np.int64), ctr).astype(np.float64), impressions


def look_stats(values: FloatArray, ends: list[int]) -> list[list[MeanStats]]:
    """For each simulation (row of ``values``), the arm's statistics at each look, the look
    at index ``k`` seeing the first ``ends[k]`` users."""
    s1 = np.cumsum(values, axis=1)[:, [e - 1 for e in ends]]
    s2 = np.cumsum(values * values, axis=1)[:, [e - 1 for e in ends]]
    n = np.asarray(ends, dtype=np.float64)
    mean = s1 / n
    var = np.maximum(s2 - n * mean * mean, 0.0) / (n - 1)
    return [
        [
            MeanStats(n=ends[k], mean=float(mean[i, k]), variance=float(var[i, k]))
            for k in range(len(ends))
        ]
        for i in range(values.shape[0])
    ]


# --- Welch ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_c", "n_t", "sd_c", "sd_t", "lift", "alpha"),
    [
        (500, 700, 2.0, 3.0, 0.3, 0.05),
        (40, 15, 1.0, 5.0, 1.0, 0.05),
        (3000, 3000, 1.0, 1.0, 0.0, 0.1),
    ],
)
def test_welch_matches_scipy(
    n_c: int, n_t: int, sd_c: float, sd_t: float, lift: float, alpha: float
) -> None:
    rng = np.random.default_rng(n_c + n_t)
    c = rng.normal(10.0, sd_c, n_c)
    t = rng.normal(10.0 + lift, sd_t, n_t)
    got = compare_means(c, t, alpha=alpha)
    ref = stats.ttest_ind(t, c, equal_var=False)
    ci = ref.confidence_interval(1 - alpha)
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert got.df == pytest.approx(ref.df, rel=1e-9)
    assert got.abs_ci == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert got.abs_lift / got.abs_se == pytest.approx(ref.statistic, rel=1e-9)
    assert got.significant == (ref.pvalue < alpha)
    assert got.rel_lift == pytest.approx(t.mean() / c.mean() - 1, rel=1e-12)
    assert (got.n_control, got.n_treatment) == (n_c, n_t)
    json.dumps(got.to_dict(), allow_nan=False)


def test_summary_statistics_give_the_same_answer() -> None:
    rng = np.random.default_rng(1)
    c, t = rng.normal(0, 1, 300), rng.normal(0.2, 1, 400)
    assert compare_mean_stats(MeanStats.of(c), MeanStats.of(t)) == compare_means(c, t)


def test_constant_arms() -> None:
    same = compare_means(np.ones(10), np.ones(12))
    assert same.p_value == 1.0 and not same.significant and same.abs_ci == (0.0, 0.0)
    differ = compare_means(np.ones(10), np.full(12, 2.0))
    assert differ.p_value == 0.0 and differ.significant and differ.rel_lift == 1.0


def test_zero_control_mean_leaves_the_relative_lift_undefined() -> None:
    got = compare_means(np.array([-1.0, 1.0, 0.0]), np.array([1.0, 2.0, 3.0]))
    assert math.isnan(got.rel_lift) and math.isfinite(got.abs_lift)
    d = got.to_dict()
    assert d["rel_lift"] is None and d["rel_ci"] == [None, None]
    json.dumps(d, allow_nan=False)


# --- delta method against the bootstrap -----------------------------------------------------


def test_ratio_variance_matches_bootstrap() -> None:
    rng = np.random.default_rng(2)
    num, den = impressions_and_clicks(rng, 3000)
    arm = RatioStats.of(num, den)
    assert arm.ratio == pytest.approx(num.sum() / den.sum(), rel=1e-12)
    idx = rng.integers(0, num.size, size=(4000, num.size))
    boot = num[idx].sum(axis=1) / den[idx].sum(axis=1)
    assert math.sqrt(arm.ratio_variance) == pytest.approx(boot.std(ddof=1), rel=0.04)
    # treating impressions as independent would understate the variance badly
    binomial = arm.ratio * (1 - arm.ratio) / den.sum()
    assert arm.ratio_variance > 2 * binomial


def _bootstrap_relative(
    rng: np.random.Generator, c: FloatArray, t: FloatArray, resamples: int
) -> FloatArray:
    ic = rng.integers(0, c.size, size=(resamples, c.size))
    it = rng.integers(0, t.size, size=(resamples, t.size))
    out: FloatArray = t[it].mean(axis=1) / c[ic].mean(axis=1) - 1
    return out


def test_relative_lift_interval_matches_bootstrap() -> None:
    rng = np.random.default_rng(3)
    c = clicks(rng, 4000)
    t = clicks(rng, 4000) * 1.1
    got = compare_means(c, t)
    boot = _bootstrap_relative(rng, c, t, 3000)
    assert got.rel_se == pytest.approx(boot.std(ddof=1), rel=0.05)
    low, high = np.quantile(boot, [0.025, 0.975])
    width = got.rel_ci[1] - got.rel_ci[0]
    assert abs(got.rel_ci[0] - low) < 0.05 * width
    assert abs(got.rel_ci[1] - high) < 0.05 * width


def test_ratio_relative_lift_matches_bootstrap() -> None:
    rng = np.random.default_rng(4)
    num_c, den_c = impressions_and_clicks(rng, 3000)
    num_t, den_t = impressions_and_clicks(rng, 3000)
    got = compare_ratios(num_c, den_c, num_t * 1.2, den_t)
    assert got.metric == "ratio"
    assert got.rel_lift == pytest.approx(
        (num_t.sum() * 1.2 / den_t.sum()) / (num_c.sum() / den_c.sum()) - 1, rel=1e-12
    )
    ic = rng.integers(0, 3000, size=(3000, 3000))
    it = rng.integers(0, 3000, size=(3000, 3000))
    r_c = num_c[ic].sum(axis=1) / den_c[ic].sum(axis=1)
    r_t = 1.2 * num_t[it].sum(axis=1) / den_t[it].sum(axis=1)
    assert got.abs_se == pytest.approx((r_t - r_c).std(ddof=1), rel=0.05)
    assert got.rel_se == pytest.approx((r_t / r_c - 1).std(ddof=1), rel=0.05)


# --- CUPED ----------------------------------------------------------------------------------


def correlated(
    rng: np.random.Generator, n: int, rho: float, lift: float, base: float = 10.0
) -> tuple[FloatArray, FloatArray]:
    """A metric ``y`` and a pre-experiment covariate ``x`` with correlation ``rho``."""
    x = rng.normal(0.0, 1.0, n)
    y = base + lift + rho * x + math.sqrt(1 - rho * rho) * rng.normal(0.0, 1.0, n)
    return y, x + 5.0


def test_cuped_reduces_variance_by_rho_squared() -> None:
    rng = np.random.default_rng(5)
    y_c, x_c = correlated(rng, 20_000, 0.7, 0.0)
    y_t, x_t = correlated(rng, 20_000, 0.7, 0.1)
    adj = cuped(y_c, y_t, x_c, x_t)
    assert adj.variance_reduction == pytest.approx(0.49, abs=0.02)
    assert adj.theta == pytest.approx(0.7, abs=0.02)
    pooled = np.concatenate(
        [adj.control - adj.control.mean(), adj.treatment - adj.treatment.mean()]
    )
    raw = np.concatenate([y_c - y_c.mean(), y_t - y_t.mean()])
    assert adj.variance_reduction == pytest.approx(1 - pooled.var() / raw.var(), rel=1e-9)
    got = compare_means(y_c, y_t, covariate_control=x_c, covariate_treatment=x_t)
    plain = compare_means(y_c, y_t)
    assert got.variance_reduction == adj.variance_reduction and got.theta == adj.theta
    assert got.abs_se**2 == pytest.approx(plain.abs_se**2 * 0.51, rel=0.05)
    # the relative lift divides by the unadjusted control mean; the means shown are raw
    assert got.rel_lift == pytest.approx(got.abs_lift / y_c.mean(), rel=1e-12)
    assert (got.mean_control, got.mean_treatment) == (plain.mean_control, plain.mean_treatment)
    assert got.significant and got.abs_ci[0] < 0.1 < got.abs_ci[1]


def test_cuped_with_an_uncorrelated_covariate_changes_nothing() -> None:
    rng = np.random.default_rng(6)
    y_c, y_t = rng.normal(0, 1, 20_000), rng.normal(0, 1, 20_000)
    x_c, x_t = rng.normal(0, 1, 20_000), rng.normal(0, 1, 20_000)
    adj = cuped(y_c, y_t, x_c, x_t)
    assert abs(adj.variance_reduction) < 0.002
    assert abs(adj.theta) < 0.03


def test_cuped_stays_unbiased_and_covers() -> None:
    rng = np.random.default_rng(7)
    lift, sims = 0.2, 400
    adjusted, raw, covered = [], [], 0
    for _ in range(sims):
        y_c, x_c = correlated(rng, 500, 0.7, 0.0)
        y_t, x_t = correlated(rng, 500, 0.7, lift)
        got = compare_means(y_c, y_t, covariate_control=x_c, covariate_treatment=x_t)
        adjusted.append(got.abs_lift)
        raw.append(y_t.mean() - y_c.mean())
        covered += got.abs_ci[0] < lift < got.abs_ci[1]
    sd = float(np.std(adjusted, ddof=1))
    assert abs(np.mean(adjusted) - lift) < 3 * sd / math.sqrt(sims)
    assert sd / float(np.std(raw, ddof=1)) == pytest.approx(math.sqrt(1 - 0.49), abs=0.05)
    assert 0.92 <= covered / sims <= 0.98


def test_cuped_relative_interval_matches_bootstrap() -> None:
    """The relative lift's variance under CUPED, with the covariance of the adjusted
    difference and the raw control mean, against a bootstrap that re-estimates theta."""
    rng = np.random.default_rng(8)
    n, resamples = 2000, 1500
    y_c, x_c = correlated(rng, n, 0.7, 0.0, base=2.0)
    y_t, x_t = correlated(rng, n, 0.7, 0.3, base=2.0)
    got = compare_means(y_c, y_t, covariate_control=x_c, covariate_treatment=x_t)
    ic = rng.integers(0, n, size=(resamples, n))
    it = rng.integers(0, n, size=(resamples, n))
    yc, xc, yt, xt = y_c[ic], x_c[ic], y_t[it], x_t[it]
    dyc, dxc = yc - yc.mean(1, keepdims=True), xc - xc.mean(1, keepdims=True)
    dyt, dxt = yt - yt.mean(1, keepdims=True), xt - xt.mean(1, keepdims=True)
    theta = ((dxc * dyc).sum(1) + (dxt * dyt).sum(1)) / ((dxc**2).sum(1) + (dxt**2).sum(1))
    diff = yt.mean(1) - yc.mean(1) - theta * (xt.mean(1) - xc.mean(1))
    rel = diff / yc.mean(1)
    assert got.abs_se == pytest.approx(diff.std(ddof=1), rel=0.06)
    assert got.rel_se == pytest.approx(rel.std(ddof=1), rel=0.06)


# --- SRM ------------------------------------------------------------------------------------


def test_srm_matches_scipy_chisquare() -> None:
    for observed, weights in (
        ([10_400, 9_600], [50, 50]),
        ([5_100, 4_900], [0.5, 0.5]),
        ([3_300, 3_400, 3_300], [1, 1, 1]),
        ([900, 2_100], [0.3, 0.7]),
    ):
        got = srm_test(observed, weights)
        total = sum(observed)
        ref = stats.chisquare(observed, [total * w / sum(weights) for w in weights])
        assert got.statistic == pytest.approx(ref.statistic, rel=1e-12)
        assert got.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
        json.dumps(got.to_dict(), allow_nan=False)


def test_srm_flags_a_52_48_split() -> None:
    got = srm_test([10_400, 9_600], [0.5, 0.5])
    assert got.mismatch and got.p_value < 1e-6
    assert not srm_test([10_050, 9_950], [0.5, 0.5]).mismatch


def test_srm_false_alarm_rate() -> None:
    rng = np.random.default_rng(9)
    weights = [0.2, 0.3, 0.5]
    splits = rng.multinomial(20_000, weights, size=2000)
    flagged = sum(srm_test(list(s), weights).mismatch for s in splits)
    assert flagged / 2000 <= 0.005
    loose = sum(srm_test(list(s), weights, threshold=0.05).mismatch for s in splits)
    assert 0.035 <= loose / 2000 <= 0.065


# --- calibration and sequential testing ------------------------------------------------------

SIMS = 1000
LOOKS = 20
PER_LOOK = 100  # users per arm added each "day"
ENDS = [PER_LOOK * (k + 1) for k in range(LOOKS)]


def _simulate_peeking(
    control: FloatArray, treatment: FloatArray, planned_n: float
) -> tuple[float, float, float]:
    """Rates over simulations (rows) of: rejecting at the final look (fixed horizon),
    rejecting at any look with the fixed-horizon test (naive peeking), and rejecting at any
    look with the sequential test."""
    look_c, look_t = look_stats(control, ENDS), look_stats(treatment, ENDS)
    final = naive = seq = 0
    for sc, st in zip(look_c, look_t, strict=True):
        fixed = [compare_mean_stats(c, t).significant for c, t in zip(sc, st, strict=True)]
        final += fixed[-1]
        naive += any(fixed)
        seq += any(
            compare_mean_stats(c, t, sequential=True, planned_n=planned_n).significant
            for c, t in zip(sc, st, strict=True)
        )
    sims = control.shape[0]
    return final / sims, naive / sims, seq / sims


@pytest.mark.parametrize("metric", ["normal", "clicks"])
def test_aa_calibration_and_peeking(metric: str) -> None:
    rng = np.random.default_rng(10 if metric == "normal" else 11)
    shape = (SIMS, ENDS[-1])
    if metric == "normal":
        c, t = rng.normal(5.0, 2.0, shape), rng.normal(5.0, 2.0, shape)
    else:
        c, t = clicks(rng, shape), clicks(rng, shape)
    final, naive, seq = _simulate_peeking(c, t, planned_n=2 * ENDS[-1])
    assert 0.035 <= final <= 0.065
    assert naive > 0.12  # peeking at 20 looks: about 0.2 (Armitage et al. 1969)
    assert seq <= 0.05


def test_aa_calibration_end_to_end_on_arrays() -> None:
    """The same fixed-horizon calibration through the array entry points, including a ratio
    metric and CUPED."""
    rng = np.random.default_rng(12)
    means = ratios = adjusted = 0
    for _ in range(SIMS):
        means += compare_means(clicks(rng, 1000), clicks(rng, 1000)).significant
        num_c, den_c = impressions_and_clicks(rng, 1000)
        num_t, den_t = impressions_and_clicks(rng, 1000)
        ratios += compare_ratios(num_c, den_c, num_t, den_t).significant
        y_c, x_c = correlated(rng, 500, 0.7, 0.0)
        y_t, x_t = correlated(rng, 500, 0.7, 0.0)
        adjusted += compare_means(
            y_c, y_t, covariate_control=x_c, covariate_treatment=x_t
        ).significant
    for rejected in (means, ratios, adjusted):
        assert 0.035 <= rejected / SIMS <= 0.065


def test_sequential_valid_under_continuous_monitoring() -> None:
    """Looking after every 20 users per arm, 250 looks: the sequence still holds."""
    rng = np.random.default_rng(13)
    sims, step, looks = 1000, 20, 250
    ends = np.arange(1, looks + 1) * step
    c, t = clicks(rng, (sims, ends[-1])), clicks(rng, (sims, ends[-1]))
    rho = sequential_rho(2 * 1000, 0.05)
    s_c, s_t = np.cumsum(c, axis=1)[:, ends - 1], np.cumsum(t, axis=1)[:, ends - 1]
    q_c, q_t = np.cumsum(c * c, axis=1)[:, ends - 1], np.cumsum(t * t, axis=1)[:, ends - 1]
    var_c = (q_c - s_c**2 / ends) / (ends - 1)
    var_t = (q_t - s_t**2 / ends) / (ends - 1)
    z = (s_t - s_c) / ends / np.sqrt((var_c + var_t) / ends)
    ever = np.zeros(sims, dtype=bool)
    naive = np.zeros(sims, dtype=bool)
    for k, n in enumerate(ends):
        ever |= np.abs(z[:, k]) > sequential_multiplier(2.0 * n, alpha=0.05, rho=rho)
        naive |= np.abs(z[:, k]) > stats.norm.isf(0.025)
    assert ever.mean() <= 0.05
    assert naive.mean() > 0.3


def test_sequential_eventually_rejects_a_real_lift() -> None:
    rng = np.random.default_rng(14)
    sims = 200
    c = rng.normal(5.0, 2.0, (sims, ENDS[-1]))
    t = rng.normal(5.0 + 0.15 * 2.0, 2.0, (sims, ENDS[-1]))  # a lift of 0.15 sd
    final, _, seq = _simulate_peeking(c, t, planned_n=2 * ENDS[-1])
    assert final > 0.95
    assert seq > 0.8


def test_sequential_interval_formula() -> None:
    rng = np.random.default_rng(15)
    c, t = rng.normal(0, 1, 800), rng.normal(0.1, 1.5, 1200)
    alpha, planned = 0.05, 3000
    got = compare_means(c, t, sequential=True, planned_n=planned, alpha=alpha)
    fixed = compare_means(c, t, alpha=alpha)
    rho = sequential_rho(planned, alpha)
    n = 2000
    sigma = fixed.abs_se * math.sqrt(n)  # the per-unit standard deviation of the estimator
    half = sigma * math.sqrt(
        2 * (n * rho**2 + 1) / (n**2 * rho**2) * math.log(math.sqrt(n * rho**2 + 1) / alpha)
    )
    assert got.abs_ci == pytest.approx((got.abs_lift - half, got.abs_lift + half), rel=1e-12)
    assert got.sequential and math.isinf(got.df)
    assert got.abs_ci[0] < fixed.abs_ci[0] and got.abs_ci[1] > fixed.abs_ci[1]
    assert got.p_value >= fixed.p_value
    # the relative interval widens by the same multiplier
    mult = half / fixed.abs_se
    assert got.rel_ci[1] - got.rel_ci[0] == pytest.approx(2 * mult * fixed.rel_se, rel=1e-9)


def test_sequential_rho_minimises_the_width_at_the_planned_n() -> None:
    for alpha in (0.01, 0.05, 0.2):
        rho = sequential_rho(DEFAULT_PLANNED_N, alpha)
        width = sequential_multiplier(DEFAULT_PLANNED_N, alpha=alpha, rho=rho)
        best = optimize.minimize_scalar(
            lambda r, a=alpha: sequential_multiplier(DEFAULT_PLANNED_N, alpha=a, rho=r),
            bounds=(1e-4, 1.0),
            method="bounded",
            options={"xatol": 1e-10},
        )
        assert rho == pytest.approx(best.x, rel=1e-4)
        assert width <= best.fun + 1e-12
        # GrowthBook's closed form, the first fixed-point iterate, is within 4% in rho and
        # gives practically the same width (the width is flat at its minimum)
        approx = math.sqrt(
            (-2 * math.log(alpha) + math.log(1 - 2 * math.log(alpha))) / DEFAULT_PLANNED_N
        )
        assert rho == pytest.approx(approx, rel=0.04)
        assert width == pytest.approx(
            sequential_multiplier(DEFAULT_PLANNED_N, alpha=alpha, rho=approx), rel=1e-3
        )


def test_sequential_p_value_agrees_with_the_interval() -> None:
    rho = sequential_rho(5000, 0.05)
    for n in (50.0, 1000.0, 5000.0, 1e6):
        mult = sequential_multiplier(n, alpha=0.05, rho=rho)
        assert sequential_p_value(mult, n, rho=rho) == pytest.approx(0.05, rel=1e-9)
        assert (
            sequential_p_value(mult * 1.01, n, rho=rho)
            < 0.05
            < sequential_p_value(mult * 0.99, n, rho=rho)
        )
    assert sequential_p_value(0.0, 100.0, rho=rho) == 1.0
    rng = np.random.default_rng(16)
    for _ in range(50):
        got = compare_means(rng.normal(0, 1, 300), rng.normal(0.2, 1, 300), sequential=True)
        assert got.significant == (got.abs_ci[0] > 0 or got.abs_ci[1] < 0)


# --- power ----------------------------------------------------------------------------------


def _normal_ind_solve(d: float, alpha: float, power: float) -> float:
    """statsmodels' NormalIndPower().solve_power(effect_size=d, alpha=, power=), equal arms:
    its power equation solved for nobs1."""
    crit = stats.norm.isf(alpha / 2)

    def gap(n1: float) -> float:
        lam = d * math.sqrt(n1 / 2)
        return float(stats.norm.sf(crit - lam) + stats.norm.cdf(-crit - lam)) - power

    return float(optimize.brentq(gap, 1.0, 1e9, xtol=1e-10))


def _t_ind_solve(d: float, alpha: float, power: float) -> float:
    """statsmodels' tt_ind_solve_power(effect_size=d, alpha=, power=), equal arms (searched
    near the normal answer: scipy's noncentral t is NaN far out)."""
    near = _normal_ind_solve(d, alpha, power)

    def gap(n1: float) -> float:
        df = 2 * n1 - 2
        crit = stats.t.isf(alpha / 2, df)
        nc = d * math.sqrt(n1 / 2)
        return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc)) - power

    return float(optimize.brentq(gap, max(2.0, 0.5 * near), 2.0 * near + 10, xtol=1e-10))


DESIGNS = [
    (10.0, 2.0, 0.01, 0.05, 0.8),
    (0.05, math.sqrt(0.05 * 0.95), 0.05, 0.05, 0.8),
    (3.0, 6.0, 0.2, 0.01, 0.9),
    (1.0, 1.0, 0.5, 0.05, 0.8),
]


@pytest.mark.parametrize(("mean", "sd", "mde", "alpha", "power"), DESIGNS)
def test_users_needed(mean: float, sd: float, mde: float, alpha: float, power: float) -> None:
    n = users_needed(mean, sd, mde, alpha=alpha, power=power)
    d = mean * mde / sd
    assert n == math.ceil(_normal_ind_solve(d, alpha, power) - 1e-9)
    assert abs(n - _t_ind_solve(d, alpha, power)) <= max(2.0, 0.01 * n)
    assert (
        power_at(n, mean, sd, mde, alpha=alpha)
        >= power
        > power_at(n - 1, mean, sd, mde, alpha=alpha)
    )


@pytest.mark.parametrize(("mean", "sd", "mde", "alpha", "power"), DESIGNS)
def test_users_needed_matches_statsmodels(
    mean: float, sd: float, mde: float, alpha: float, power: float
) -> None:
    smp = pytest.importorskip("statsmodels.stats.power")
    n = users_needed(mean, sd, mde, alpha=alpha, power=power)
    d = mean * mde / sd
    normal = smp.NormalIndPower().solve_power(effect_size=d, alpha=alpha, power=power, ratio=1.0)
    assert abs(n - normal) <= 1
    t = smp.tt_ind_solve_power(effect_size=d, alpha=alpha, power=power, ratio=1.0)
    assert abs(n - t) <= max(2.0, 0.01 * n)


# --- bad input ------------------------------------------------------------------------------


def test_bad_input_is_refused_with_a_clear_message() -> None:
    ok = np.arange(10, dtype=np.float64)
    with pytest.raises(ValueError, match="control is empty"):
        compare_means([], ok)
    with pytest.raises(ValueError, match="treatment is empty"):
        compare_means(ok, np.array([]))
    with pytest.raises(ValueError, match="treatment has 1 user"):
        compare_means(ok, [1.0])
    with pytest.raises(
        ValueError, match=r"control has 1 NaN or infinite value\(s\) \(the first at index 3\)"
    ):
        compare_means(np.where(ok == 3, np.nan, ok), ok)
    with pytest.raises(ValueError, match="treatment has 2 NaN"):
        compare_means(ok, np.where(ok > 7, np.inf, ok))
    with pytest.raises(ValueError, match="1-D"):
        compare_means(ok.reshape(2, 5), ok)
    with pytest.raises(ValueError, match="must hold numbers"):
        compare_means(["a", "b"], ok)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        compare_means(ok, ok, alpha=1.5)
    # ratios
    with pytest.raises(
        ValueError,
        match="control numerator and control denominator must have one value per user each, "
        "got 10 and 9",
    ):
        compare_ratios(ok, ok[:9], ok, ok)
    with pytest.raises(ValueError, match="treatment denominator is zero for every user"):
        compare_ratios(ok, ok + 1, ok, np.zeros(10))
    with pytest.raises(ValueError, match="control denominator has 1 NaN"):
        compare_ratios(ok, np.where(ok == 0, np.nan, ok), ok, ok + 1)
    with pytest.raises(ValueError, match="treatment numerator is empty"):
        compare_ratios(ok, ok + 1, [], [])
    # CUPED
    with pytest.raises(ValueError, match="both covariate_control and covariate_treatment"):
        compare_means(ok, ok, covariate_control=ok)
    with pytest.raises(
        ValueError,
        match="treatment and covariate_treatment must have one value per user each, got 10 and 8",
    ):
        compare_means(ok, ok, covariate_control=ok, covariate_treatment=ok[:8])
    with pytest.raises(ValueError, match="covariate_control has 1 NaN"):
        cuped(ok, ok, np.where(ok == 5, np.nan, ok), ok)
    # SRM
    with pytest.raises(ValueError, match="one entry per arm, got 2 and 3"):
        srm_test([10, 10], [1, 1, 1])
    with pytest.raises(ValueError, match=r"observed_counts\[1\] must be a non-negative integer"):
        srm_test([10, -1], [1, 1])
    with pytest.raises(ValueError, match=r"observed_counts\[0\] must be a non-negative integer"):
        srm_test([10.5, 3], [1, 1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"expected_weights\[1\] must be positive"):
        srm_test([10, 10], [1, 0])
    with pytest.raises(ValueError, match="all zero"):
        srm_test([0, 0], [1, 1])
    with pytest.raises(ValueError, match="at least 2 arms"):
        srm_test([10], [1])
    # power and sequential parameters
    with pytest.raises(ValueError, match="baseline_sd must be positive"):
        users_needed(1.0, 0.0, 0.1)
    with pytest.raises(ValueError, match="no effect to detect"):
        users_needed(0.0, 1.0, 0.1)
    with pytest.raises(ValueError, match="power must be in"):
        users_needed(1.0, 1.0, 0.1, power=0.01)
    with pytest.raises(ValueError, match="planned_n must be a positive"):
        compare_means(ok, ok, sequential=True, planned_n=0)
    with pytest.raises(ValueError, match="rho must be positive"):
        sequential_multiplier(100.0, rho=0.0)
