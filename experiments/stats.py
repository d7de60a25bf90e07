"""The statistics of an A/B test: lifts with intervals, CUPED, SRM, sequential tests, power.

Everything here works on per-user data (the user is the randomization unit): for each arm,
one value per exposed user (clicks per user, dwell seconds per user...), or, for a ratio
metric, a numerator and a denominator per user (clicks and impressions). Only numpy and
scipy's special functions are used; the results are frozen dataclasses whose ``to_dict()``
holds plain JSON values (a NaN or infinity becomes ``None``).

Mean metrics (:func:`compare_means`)
    The absolute lift is the difference of the arm means, ``d = m_t - m_c``, with
    ``Var(d) = s_t^2/n_t + s_c^2/n_c`` (sample variances, ``ddof=1``) and Welch's t test:
    the Welch-Satterthwaite degrees of freedom ``(v_c + v_t)^2 / (v_c^2/(n_c-1) +
    v_t^2/(n_t-1))`` with ``v = s^2/n``. The interval and two-sided p-value are exactly those
    of ``scipy.stats.ttest_ind(treatment, control, equal_var=False)``.

Relative lift (all comparisons)
    ``r = d / m_c`` (``= m_t/m_c - 1`` without CUPED), by the delta method on a ratio of
    estimators (Deng, Knoblich & Lu 2018, "Applying the Delta Method in Metric Analytics",
    KDD)::

        Var(r) ~= Var(d)/m_c^2 + d^2 Var(m_c)/m_c^4 - 2 d Cov(d, m_c)/m_c^3

    With independent arms ``Cov(d, m_c) = -Var(m_c)`` and this is the familiar
    ``Var(m_t)/m_c^2 + m_t^2 Var(m_c)/m_c^4``. The interval is ``r +- c * se(r)`` with the
    same critical value ``c`` as the absolute interval (Welch's t quantile, or the sequential
    multiplier). ``significant`` and ``p_value`` are those of the absolute lift; the relative
    interval, being a delta-method approximation, can disagree with them when the evidence is
    borderline. With a control mean of 0 the relative lift is undefined (NaN).

Ratio metrics (:func:`compare_ratios`)
    The arm's metric is ``R = sum(num)/sum(den) = mean(num)/mean(den)`` over its users; the
    users, not the impressions, are independent, so the variance comes from the delta method
    (Deng et al. 2018, section 3)::

        Var(R) ~= (1/n) * ( s_num^2/mu_den^2 - 2 mu_num s_num,den/mu_den^3
                            + mu_num^2 s_den^2/mu_den^4 )

    The lifts then follow as for means, with Welch-Satterthwaite degrees of freedom on these
    per-arm variances (as GrowthBook does; with the thousands of users of a real test, this is
    the normal interval).

CUPED (:func:`cuped`, ``compare_means(..., covariate_control=, covariate_treatment=)``)
    Deng, Xu, Kohavi & Walker 2013, "Improving the Sensitivity of Online Controlled
    Experiments by Utilizing Pre-Experiment Data" (WSDM). Each user's value is adjusted by a
    pre-experiment covariate ``x`` (the same metric before the test, say)::

        y_adj = y - theta * (x - mean_x),   theta = S_xy / S_xx

    where ``mean_x`` is the mean of ``x`` over both arms and ``S_xy``, ``S_xx`` are the
    within-arm sums of cross-products, pooled over both arms (each arm centred on its own
    means; this is the ANCOVA slope of Lin 2013, and keeps a treatment effect on ``y`` out of
    ``theta``). One ``theta`` serves both arms, so the lift stays unbiased: ``x`` is
    independent of the assignment. The variance reduction reported is
    ``1 - S_adj,adj / S_yy`` (pooled within-arm sums of squares), which is the squared
    within-arm correlation of ``x`` and ``y``. The adjusted lift's variance ignores the
    ``O(1/n)`` uncertainty of ``theta``, as everyone does.

    The relative lift under CUPED divides the adjusted difference by the *unadjusted* control
    mean, as GrowthBook does: ``r = (m_t,adj - m_c,adj) / m_c``, its variance by the formula
    above with ``Var(m_c) = s_c^2/n_c`` and ``Cov(d, m_c) = -cov(y_c,adj, y_c)/n_c``. The
    reported arm means (``mean_control``, ``mean_treatment``) are the raw ones, so under CUPED
    ``abs_lift`` is not their difference.

Sample ratio mismatch (:func:`srm_test`)
    Pearson's chi-square goodness of fit of the users counted in each arm against the
    configured split (the computation of ``scipy.stats.chisquare``), flagged below a threshold
    of 0.001 as GrowthBook does. Fabijan et al. 2019, "Diagnosing Sample Ratio Mismatch in
    Online Controlled Experiments: A Taxonomy and Rules of Thumb for Practitioners" (KDD): a
    mismatch means the assignment or the logging is broken and no lift should be trusted.

Sequential testing (``sequential=True``; :func:`sequential_rho`,
:func:`sequential_multiplier`, :func:`sequential_p_value`)
    A fixed-horizon interval holds at one look decided in advance; looking every day and
    stopping at the first significant result inflates false positives (to about 25% at 20
    looks and alpha 0.05). A confidence *sequence* holds at all sample sizes simultaneously.
    We use the normal-mixture boundary of Howard, Ramdas, McAuliffe & Sekhon 2021,
    "Time-uniform, nonparametric, nonasymptotic confidence sequences" (Ann. Statist.), in the
    asymptotic form of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, "Time-uniform central
    limit theory and asymptotic confidence sequences" (Ann. Statist. 2024), which is the one
    Eppo's and GrowthBook's sequential modes use.

    For a sample mean of ``N`` i.i.d. units with variance ``sigma^2``, the two-sided
    ``1 - alpha`` confidence sequence is the estimate plus or minus::

        sigma * sqrt( 2 (N rho^2 + 1) / (N^2 rho^2) * log( sqrt(N rho^2 + 1) / alpha ) )

    (Howard et al.'s two-sided normal mixture boundary ``sqrt((V + 1/rho'^2) log((V rho'^2
    + 1)/alpha^2))`` on the sum, which mixes ``exp(lambda S - lambda^2 V / 2)`` over
    ``lambda ~ N(0, rho'^2)``; with intrinsic time ``V = N sigma^2`` and ``rho'^2 =
    rho^2/sigma^2``, divided by ``N``). For the lift, ``N = n_c + n_t`` and
    ``sigma^2 = N * Var(d)`` is the per-unit variance of the estimator (the variance of its
    influence function), so with ``u = N rho^2`` the half-width is::

        half_width = se(d) * sqrt( (u + 1)/u * log( (u + 1)/alpha^2 ) )

    i.e. the fixed-horizon ``z_{1-alpha/2}`` is replaced by the multiplier
    ``sqrt((u+1)/u * log((u+1)/alpha^2))``. The interval is normal-based (``df`` is
    infinite). Any fixed ``rho > 0`` gives a valid sequence; ``rho`` only decides where it is
    tightest, and must not depend on the data. We choose it to minimise the half-width at a
    planned total sample size ``planned_n``: setting the derivative in ``u`` to zero gives
    ``u = log((u + 1)/alpha^2)``, solved by fixed-point iteration, ``rho = sqrt(u /
    planned_n)``. (GrowthBook uses the first iterate, ``u ~= -2 log(alpha) + log(1 - 2
    log(alpha))``, with ``planned_n = 5000``.)

    The always-valid p-value is the smallest alpha at which the sequence (with this ``rho``)
    excludes 0, which in closed form is::

        p = min(1, sqrt(u + 1) * exp( -z^2 u / (2 (u + 1)) )),   z = d / se(d)

    the reciprocal of the mixture likelihood ratio of the mixture SPRT (Johari, Koomen,
    Pekelis & Walsh 2017, "Peeking at A/B Tests", KDD). ``p < alpha`` exactly when the
    interval excludes 0, and the chance that ``p`` ever falls below alpha, over any number of
    looks, is at most alpha (asymptotically in the sample size, not the number of looks).

Power (:func:`users_needed`, :func:`power_at`)
    The two-sided two-sample z test with equal arms and a common standard deviation, as
    statsmodels' ``NormalIndPower``: with ``delta = |baseline_mean * relative_mde|`` and
    ``lam = delta / (sd * sqrt(2/n))``, ``power = Phi(lam - z_{1-alpha/2}) + Phi(-lam -
    z_{1-alpha/2})``. :func:`users_needed` is the smallest ``n`` per arm reaching the power;
    it is close to ``2 sd^2 (z_{1-alpha/2} + z_power)^2 / delta^2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special

__all__ = [
    "DEFAULT_PLANNED_N",
    "SRM",
    "SRM_THRESHOLD",
    "Comparison",
    "CupedResult",
    "MeanStats",
    "RatioStats",
    "clustered_se",
    "compare_mean_stats",
    "compare_means",
    "compare_ratio_stats",
    "compare_ratios",
    "cuped",
    "power_at",
    "sequential_multiplier",
    "sequential_p_value",
    "sequential_rho",
    "srm_test",
    "users_needed",
]

FloatArray = npt.NDArray[np.float64]
JSONScalar = float | int | bool | str | None
JSONDict = dict[str, JSONScalar | list[JSONScalar]]

SRM_THRESHOLD = 0.001
"""The p-value below which :func:`srm_test` flags a mismatch (GrowthBook's default)."""

DEFAULT_PLANNED_N = 5_000
"""The total users (both arms) at which the sequential interval is tightest, by default
(GrowthBook's default tuning). It decides efficiency, never validity."""


# --- input checks ---------------------------------------------------------------------------


def _check_alpha(alpha: float, name: str = "alpha") -> float:
    a = float(alpha)
    if not 0.0 < a < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {alpha!r}")
    return a


def _values(values: npt.ArrayLike, name: str, *, min_size: int = 2) -> FloatArray:
    """``values`` as a 1-D float64 array of finite numbers, at least ``min_size`` of them."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must hold numbers: {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-user values, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: an arm needs at least {min_size} users")
    if arr.size < min_size:
        raise ValueError(f"{name} has {arr.size} user(s): an arm needs at least {min_size}")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} has {int(bad.sum())} NaN or infinite value(s) (the first at index {first})"
        )
    return arr


def _same_length(a: FloatArray, b: FloatArray, name_a: str, name_b: str) -> None:
    if a.size != b.size:
        raise ValueError(
            f"{name_a} and {name_b} must have one value per user each, "
            f"got {a.size} and {b.size} values"
        )


def _finite(value: float) -> JSONScalar:
    return value if math.isfinite(value) else None


# --- sufficient statistics ------------------------------------------------------------------


@dataclass(frozen=True)
class MeanStats:
    """One arm of a mean metric, summarised: users, mean and sample variance (``ddof=1``).

    Build it from the per-user values with :meth:`of`, or from aggregates (a warehouse's
    ``count``, ``sum`` and ``sum of squares``) directly.
    """

    n: int
    mean: float
    variance: float

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"an arm needs at least 2 users, got n={self.n}")
        if not (math.isfinite(self.mean) and math.isfinite(self.variance)):
            raise ValueError(f"mean and variance must be finite, got {self.mean}, {self.variance}")
        if self.variance < 0:
            raise ValueError(f"variance must be >= 0, got {self.variance}")

    @classmethod
    def of(cls, values: npt.ArrayLike, name: str = "values") -> MeanStats:
        """The statistics of per-user ``values`` (``name`` is used in error messages)."""
        v = _values(values, name)
        return cls(n=int(v.size), mean=float(v.mean()), variance=float(v.var(ddof=1)))

    @property
    def mean_variance(self) -> float:
        """The variance of the arm's mean, ``variance / n``."""
        return self.variance / self.n


@dataclass(frozen=True)
class RatioStats:
    """One arm of a ratio metric (``sum(num) / sum(den)`` over its users), summarised.

    The means, sample variances and covariance (``ddof=1``) of the per-user numerators and
    denominators are sufficient for the delta method; build it with :meth:`of`.
    """

    n: int
    numerator_mean: float
    denominator_mean: float
    numerator_variance: float
    denominator_variance: float
    covariance: float

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"an arm needs at least 2 users, got n={self.n}")
        values = (
            self.numerator_mean,
            self.denominator_mean,
            self.numerator_variance,
            self.denominator_variance,
            self.covariance,
        )
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"ratio statistics must be finite, got {values}")
        if self.numerator_variance < 0 or self.denominator_variance < 0:
            raise ValueError("variances must be >= 0")
        if self.denominator_mean == 0:
            raise ValueError(
                "the denominator sums to zero over the arm's users: the ratio is undefined"
            )

    @classmethod
    def of(
        cls, numerator: npt.ArrayLike, denominator: npt.ArrayLike, name: str = "arm"
    ) -> RatioStats:
        """The statistics of per-user ``numerator`` and ``denominator`` values (one per user,
        in the same order; ``name`` is used in error messages)."""
        num = _values(numerator, f"{name} numerator")
        den = _values(denominator, f"{name} denominator")
        _same_length(num, den, f"{name} numerator", f"{name} denominator")
        if not den.any():
            raise ValueError(f"{name} denominator is zero for every user: the ratio is undefined")
        if den.sum() == 0:
            raise ValueError(f"{name} denominator sums to zero: the ratio is undefined")
        cov = np.cov(num, den, ddof=1)
        return cls(
            n=int(num.size),
            numerator_mean=float(num.mean()),
            denominator_mean=float(den.mean()),
            numerator_variance=float(cov[0, 0]),
            denominator_variance=float(cov[1, 1]),
            covariance=float(cov[0, 1]),
        )

    @property
    def ratio(self) -> float:
        """The arm's metric, ``mean(num) / mean(den)``."""
        return self.numerator_mean / self.denominator_mean

    @property
    def ratio_variance(self) -> float:
        """The delta-method variance of :attr:`ratio` (Deng, Knoblich & Lu 2018)."""
        mx, my = self.numerator_mean, self.denominator_mean
        per_user = (
            self.numerator_variance / my**2
            - 2.0 * mx * self.covariance / my**3
            + mx**2 * self.denominator_variance / my**4
        )
        return max(per_user, 0.0) / self.n


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Treatment against control for one metric.

    ``mean_control`` and ``mean_treatment`` are the arms' raw metric values (means, or ratios
    for a ratio metric). ``abs_lift`` is the treatment-minus-control difference (CUPED-adjusted
    when a covariate was given) and ``rel_lift`` that difference over the control value; the
    intervals are at level ``1 - alpha``, always-valid ones when ``sequential``. ``p_value``
    tests a zero absolute lift (two-sided), and ``significant`` is ``p_value < alpha``, which
    is the absolute interval excluding 0. ``df`` is Welch's degrees of freedom, infinite for
    the normal-based sequential interval.
    """

    metric: Literal["mean", "ratio"]
    n_control: int
    n_treatment: int
    mean_control: float
    mean_treatment: float
    abs_lift: float
    abs_se: float
    abs_ci: tuple[float, float]
    rel_lift: float
    rel_se: float
    rel_ci: tuple[float, float]
    p_value: float
    significant: bool
    alpha: float
    df: float
    sequential: bool = False
    variance_reduction: float | None = None
    theta: float | None = None

    def to_dict(self) -> JSONDict:
        """The fields as JSON values; NaN (a relative lift over a zero control) and infinity
        (``df`` of a normal interval) become ``None``, the intervals two-element lists."""
        out: JSONDict = {
            "metric": self.metric,
            "n_control": self.n_control,
            "n_treatment": self.n_treatment,
            "mean_control": _finite(self.mean_control),
            "mean_treatment": _finite(self.mean_treatment),
            "abs_lift": _finite(self.abs_lift),
            "abs_se": _finite(self.abs_se),
            "abs_ci": [_finite(self.abs_ci[0]), _finite(self.abs_ci[1])],
            "rel_lift": _finite(self.rel_lift),
            "rel_se": _finite(self.rel_se),
            "rel_ci": [_finite(self.rel_ci[0]), _finite(self.rel_ci[1])],
            "p_value": _finite(self.p_value),
            "significant": self.significant,
            "alpha": self.alpha,
            "df": _finite(self.df),
            "sequential": self.sequential,
            "variance_reduction": (
                None if self.variance_reduction is None else _finite(self.variance_reduction)
            ),
            "theta": None if self.theta is None else _finite(self.theta),
        }
        return out


@dataclass(frozen=True, eq=False)
class CupedResult:
    """Both arms' CUPED-adjusted values, the shared ``theta`` and the pooled within-arm
    variance reduction ``1 - var(adjusted) / var(raw)``."""

    control: FloatArray = field(repr=False)
    treatment: FloatArray = field(repr=False)
    theta: float
    variance_reduction: float

    def to_dict(self) -> JSONDict:
        """``theta``, the variance reduction and the users per arm (not the arrays)."""
        return {
            "theta": _finite(self.theta),
            "variance_reduction": _finite(self.variance_reduction),
            "n_control": int(self.control.size),
            "n_treatment": int(self.treatment.size),
        }


@dataclass(frozen=True)
class SRM:
    """A sample ratio mismatch check: observed users per arm against the expected split."""

    observed: tuple[int, ...]
    expected: tuple[float, ...]
    statistic: float
    df: int
    p_value: float
    threshold: float
    mismatch: bool

    def to_dict(self) -> JSONDict:
        """The fields as JSON values."""
        return {
            "observed": list(self.observed),
            "expected": list(self.expected),
            "statistic": self.statistic,
            "df": self.df,
            "p_value": self.p_value,
            "threshold": self.threshold,
            "mismatch": self.mismatch,
        }


# --- sequential testing ---------------------------------------------------------------------


def sequential_rho(planned_n: float, alpha: float = 0.05) -> float:
    """The mixture parameter ``rho`` whose confidence sequence is tightest at ``planned_n``
    total users: ``rho = sqrt(u / planned_n)`` with ``u = log((u + 1) / alpha^2)``."""
    a = _check_alpha(alpha)
    if not (math.isfinite(planned_n) and planned_n > 0):
        raise ValueError(f"planned_n must be a positive number of users, got {planned_n!r}")
    c = -2.0 * math.log(a)
    u = c
    for _ in range(200):  # a contraction: the derivative 1/(u + 1) is below 1
        nxt = math.log1p(u) + c
        if abs(nxt - u) <= 1e-14 * nxt:
            u = nxt
            break
        u = nxt
    return math.sqrt(u / planned_n)


def _check_rho(n: float, rho: float) -> float:
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be positive, got {rho!r}")
    if not (math.isfinite(n) and n > 0):
        raise ValueError(f"n must be a positive number of users, got {n!r}")
    return n * rho * rho


def sequential_multiplier(n: float, *, alpha: float = 0.05, rho: float) -> float:
    """What replaces ``z_{1-alpha/2}`` in an always-valid interval at ``n`` total users:
    ``sqrt((u + 1)/u * log((u + 1)/alpha^2))`` with ``u = n rho^2``. The half-width is this
    times the estimator's standard error."""
    a = _check_alpha(alpha)
    u = _check_rho(n, rho)
    return math.sqrt((u + 1.0) / u * (math.log1p(u) - 2.0 * math.log(a)))


def sequential_p_value(z: float, n: float, *, rho: float) -> float:
    """The always-valid p-value of a z statistic at ``n`` total users:
    ``min(1, sqrt(u + 1) * exp(-z^2 u / (2 (u + 1))))`` with ``u = n rho^2``. Over any
    sequence of looks, the chance that it ever falls below alpha is at most alpha."""
    u = _check_rho(n, rho)
    if math.isnan(z):
        raise ValueError("z must be a number, got NaN")
    log_p = 0.5 * math.log1p(u) - z * z * u / (2.0 * (u + 1.0))
    return min(1.0, math.exp(log_p))


# --- comparisons ----------------------------------------------------------------------------


def _welch_df(v_c: float, v_t: float, n_c: int, n_t: int) -> float:
    """Welch-Satterthwaite degrees of freedom from the arms' estimator variances."""
    den = v_c * v_c / (n_c - 1) + v_t * v_t / (n_t - 1)
    return (v_c + v_t) ** 2 / den if den > 0 else math.inf


def _compare(
    *,
    metric: Literal["mean", "ratio"],
    n_c: int,
    n_t: int,
    value_c: float,
    value_t: float,
    diff: float,
    var_c: float,
    var_t: float,
    base: float,
    var_base: float,
    cov_diff_base: float,
    alpha: float,
    sequential: bool,
    planned_n: float,
    variance_reduction: float | None = None,
    theta: float | None = None,
) -> Comparison:
    """The lifts, intervals and p-value from the arms' estimator variances ``var_c``,
    ``var_t`` (the variance of ``diff`` is their sum); ``base`` is the relative lift's
    denominator, with its variance and covariance with ``diff``."""
    a = _check_alpha(alpha)
    se = math.sqrt(var_c + var_t)
    if sequential:
        rho = sequential_rho(planned_n, a)
        n = float(n_c + n_t)
        df = math.inf
        crit = sequential_multiplier(n, alpha=a, rho=rho)
    else:
        df = _welch_df(var_c, var_t, n_c, n_t)
        crit = float(special.stdtrit(df, 1.0 - a / 2.0))
    if se == 0:  # both arms constant: the difference is known exactly
        p = 1.0 if diff == 0 else 0.0
    elif sequential:
        p = sequential_p_value(diff / se, n, rho=rho)
    else:
        p = float(2.0 * special.stdtr(df, -abs(diff) / se))
    p = min(max(p, 0.0), 1.0)
    if base != 0:
        rel = diff / base
        rel_var = (
            (var_c + var_t) / base**2
            + diff**2 * var_base / base**4
            - 2.0 * diff * cov_diff_base / base**3
        )
        rel_se = math.sqrt(max(rel_var, 0.0))
    else:
        rel = rel_se = math.nan
    return Comparison(
        metric=metric,
        n_control=n_c,
        n_treatment=n_t,
        mean_control=value_c,
        mean_treatment=value_t,
        abs_lift=diff,
        abs_se=se,
        abs_ci=(diff - crit * se, diff + crit * se),
        rel_lift=rel,
        rel_se=rel_se,
        rel_ci=(rel - crit * rel_se, rel + crit * rel_se),
        p_value=p,
        significant=p < a,
        alpha=a,
        df=df,
        sequential=sequential,
        variance_reduction=variance_reduction,
        theta=theta,
    )


def compare_mean_stats(
    control: MeanStats,
    treatment: MeanStats,
    *,
    alpha: float = 0.05,
    sequential: bool = False,
    planned_n: float = DEFAULT_PLANNED_N,
) -> Comparison:
    """:func:`compare_means` on summary statistics (no CUPED)."""
    return _compare(
        metric="mean",
        n_c=control.n,
        n_t=treatment.n,
        value_c=control.mean,
        value_t=treatment.mean,
        diff=treatment.mean - control.mean,
        var_c=control.mean_variance,
        var_t=treatment.mean_variance,
        base=control.mean,
        var_base=control.mean_variance,
        cov_diff_base=-control.mean_variance,
        alpha=alpha,
        sequential=sequential,
        planned_n=planned_n,
    )


def compare_means(
    control: npt.ArrayLike,
    treatment: npt.ArrayLike,
    *,
    alpha: float = 0.05,
    covariate_control: npt.ArrayLike | None = None,
    covariate_treatment: npt.ArrayLike | None = None,
    sequential: bool = False,
    planned_n: float = DEFAULT_PLANNED_N,
) -> Comparison:
    """Compare the per-user means of two arms (one value per exposed user).

    The absolute lift's interval and p-value are Welch's t test's; the relative lift's
    interval is the delta method's (see the module docstring). With both covariates (one
    pre-experiment value per user, aligned with the arms' values), the lift is CUPED-adjusted,
    and ``variance_reduction`` and ``theta`` are reported. With ``sequential``, the intervals
    and p-value are always-valid, tightest at ``planned_n`` total users.

    Raises:
        ValueError: an arm has fewer than 2 users, a NaN or infinite value, or a covariate
            of another length; only one covariate was given; ``alpha`` is not in (0, 1).
    """
    if (covariate_control is None) != (covariate_treatment is None):
        raise ValueError("CUPED needs both covariate_control and covariate_treatment, or neither")
    if covariate_control is None or covariate_treatment is None:
        return compare_mean_stats(
            MeanStats.of(control, "control"),
            MeanStats.of(treatment, "treatment"),
            alpha=alpha,
            sequential=sequential,
            planned_n=planned_n,
        )
    y_c = _values(control, "control")
    y_t = _values(treatment, "treatment")
    adj = cuped(y_c, y_t, covariate_control, covariate_treatment)
    adj_c = MeanStats.of(adj.control, "adjusted control")
    adj_t = MeanStats.of(adj.treatment, "adjusted treatment")
    raw_c = MeanStats.of(y_c, "control")
    cov_adj_raw = float(np.cov(adj.control, y_c, ddof=1)[0, 1])
    return _compare(
        metric="mean",
        n_c=raw_c.n,
        n_t=adj_t.n,
        value_c=raw_c.mean,
        value_t=float(y_t.mean()),
        diff=adj_t.mean - adj_c.mean,
        var_c=adj_c.mean_variance,
        var_t=adj_t.mean_variance,
        base=raw_c.mean,
        var_base=raw_c.mean_variance,
        cov_diff_base=-cov_adj_raw / raw_c.n,
        alpha=alpha,
        sequential=sequential,
        planned_n=planned_n,
        variance_reduction=adj.variance_reduction,
        theta=adj.theta,
    )


def compare_ratio_stats(
    control: RatioStats,
    treatment: RatioStats,
    *,
    alpha: float = 0.05,
    sequential: bool = False,
    planned_n: float = DEFAULT_PLANNED_N,
) -> Comparison:
    """:func:`compare_ratios` on summary statistics."""
    v_c = control.ratio_variance
    return _compare(
        metric="ratio",
        n_c=control.n,
        n_t=treatment.n,
        value_c=control.ratio,
        value_t=treatment.ratio,
        diff=treatment.ratio - control.ratio,
        var_c=v_c,
        var_t=treatment.ratio_variance,
        base=control.ratio,
        var_base=v_c,
        cov_diff_base=-v_c,
        alpha=alpha,
        sequential=sequential,
        planned_n=planned_n,
    )


def compare_ratios(
    numerator_control: npt.ArrayLike,
    denominator_control: npt.ArrayLike,
    numerator_treatment: npt.ArrayLike,
    denominator_treatment: npt.ArrayLike,
    *,
    alpha: float = 0.05,
    sequential: bool = False,
    planned_n: float = DEFAULT_PLANNED_N,
) -> Comparison:
    """Compare a ratio metric, ``sum(num) / sum(den)`` over each arm's users (clicks over
    impressions, say), with one numerator and one denominator per user.

    Each arm's variance is the delta method's (Deng, Knoblich & Lu 2018); the lifts follow as
    in :func:`compare_means`. A user may have a zero denominator (no impressions), an arm may
    not.

    Raises:
        ValueError: an arm has fewer than 2 users, numerators and denominators of different
            lengths, a NaN or infinite value, or denominators summing to zero.
    """
    return compare_ratio_stats(
        RatioStats.of(numerator_control, denominator_control, "control"),
        RatioStats.of(numerator_treatment, denominator_treatment, "treatment"),
        alpha=alpha,
        sequential=sequential,
        planned_n=planned_n,
    )


# --- CUPED ----------------------------------------------------------------------------------


def cuped(
    control: npt.ArrayLike,
    treatment: npt.ArrayLike,
    covariate_control: npt.ArrayLike,
    covariate_treatment: npt.ArrayLike,
) -> CupedResult:
    """CUPED-adjust both arms with one ``theta`` from the pooled within-arm regression of
    the metric on its pre-experiment covariate (Deng et al. 2013; module docstring).

    Returns ``y - theta * (x - mean_x)`` for each arm (``mean_x`` over both arms, so the
    adjusted values keep the metric's scale), ``theta``, and the variance reduction. A
    covariate that is constant within each arm carries no information: ``theta`` is 0.

    Raises:
        ValueError: an arm has fewer than 2 users, a NaN or infinite value, or a covariate of
            another length than its arm.
    """
    y_c = _values(control, "control")
    y_t = _values(treatment, "treatment")
    x_c = _values(covariate_control, "covariate_control")
    x_t = _values(covariate_treatment, "covariate_treatment")
    _same_length(y_c, x_c, "control", "covariate_control")
    _same_length(y_t, x_t, "treatment", "covariate_treatment")
    dy_c, dy_t = y_c - y_c.mean(), y_t - y_t.mean()
    dx_c, dx_t = x_c - x_c.mean(), x_t - x_t.mean()
    s_xx = float(dx_c @ dx_c + dx_t @ dx_t)
    s_xy = float(dx_c @ dy_c + dx_t @ dy_t)
    s_yy = float(dy_c @ dy_c + dy_t @ dy_t)
    theta = s_xy / s_xx if s_xx > 0 else 0.0
    mean_x = float((x_c.sum() + x_t.sum()) / (x_c.size + x_t.size))
    adj_c = y_c - theta * (x_c - mean_x)
    adj_t = y_t - theta * (x_t - mean_x)
    # the residual sum of squares of the within-arm regression is s_yy - theta * s_xy
    reduction = theta * s_xy / s_yy if s_yy > 0 else 0.0
    return CupedResult(
        control=adj_c, treatment=adj_t, theta=theta, variance_reduction=min(reduction, 1.0)
    )


# --- sample ratio mismatch ------------------------------------------------------------------


def srm_test(
    observed_counts: Sequence[int],
    expected_weights: Sequence[float],
    *,
    threshold: float = SRM_THRESHOLD,
) -> SRM:
    """Chi-square test of the users counted per arm against the configured weights (any
    positive scale: ``[50, 50]`` or ``[0.5, 0.5]``); ``mismatch`` when ``p < threshold``.

    Raises:
        ValueError: fewer than 2 arms, counts and weights of different lengths, a count that
            is not a non-negative integer, no users at all, or a weight that is not positive.
    """
    t = _check_alpha(threshold, "threshold")
    if len(observed_counts) != len(expected_weights):
        raise ValueError(
            f"observed_counts and expected_weights must have one entry per arm, "
            f"got {len(observed_counts)} and {len(expected_weights)}"
        )
    if len(observed_counts) < 2:
        raise ValueError(f"an SRM test needs at least 2 arms, got {len(observed_counts)}")
    counts: list[int] = []
    for i, c in enumerate(observed_counts):
        f = float(c)
        if not (math.isfinite(f) and f >= 0 and f.is_integer()):
            raise ValueError(f"observed_counts[{i}] must be a non-negative integer, got {c!r}")
        counts.append(int(f))
    weights = [float(w) for w in expected_weights]
    for i, w in enumerate(weights):
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"expected_weights[{i}] must be positive, got {expected_weights[i]!r}")
    total = sum(counts)
    if total == 0:
        raise ValueError("observed_counts are all zero: no users to test")
    scale = total / math.fsum(weights)
    expected = [w * scale for w in weights]
    stat = math.fsum((o - e) ** 2 / e for o, e in zip(counts, expected, strict=True))
    df = len(counts) - 1
    p = float(special.chdtrc(df, stat))
    return SRM(
        observed=tuple(counts),
        expected=tuple(expected),
        statistic=stat,
        df=df,
        p_value=p,
        threshold=t,
        mismatch=p < t,
    )


# --- power ----------------------------------------------------------------------------------


def _check_design(baseline_mean: float, baseline_sd: float, relative_mde: float) -> float:
    """The absolute effect ``|baseline_mean * relative_mde|``, after checking the inputs."""
    for name, v in (
        ("baseline_mean", baseline_mean),
        ("baseline_sd", baseline_sd),
        ("relative_mde", relative_mde),
    ):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v!r}")
    if baseline_sd <= 0:
        raise ValueError(f"baseline_sd must be positive, got {baseline_sd!r}")
    delta = abs(baseline_mean * relative_mde)
    if delta == 0:
        raise ValueError(
            "baseline_mean * relative_mde is zero: no effect to detect "
            f"(baseline_mean={baseline_mean!r}, relative_mde={relative_mde!r})"
        )
    return delta


def power_at(
    n_per_arm: float,
    baseline_mean: float,
    baseline_sd: float,
    relative_mde: float,
    *,
    alpha: float = 0.05,
) -> float:
    """The power of the two-sided two-sample z test with ``n_per_arm`` users in each arm,
    to detect a relative lift ``relative_mde`` on a metric of mean ``baseline_mean`` and
    per-user standard deviation ``baseline_sd`` (the same in both arms)."""
    a = _check_alpha(alpha)
    delta = _check_design(baseline_mean, baseline_sd, relative_mde)
    if not (math.isfinite(n_per_arm) and n_per_arm > 0):
        raise ValueError(f"n_per_arm must be positive, got {n_per_arm!r}")
    lam = delta / (baseline_sd * math.sqrt(2.0 / n_per_arm))
    z = float(special.ndtri(1.0 - a / 2.0))
    return float(special.ndtr(lam - z) + special.ndtr(-lam - z))


def users_needed(
    baseline_mean: float,
    baseline_sd: float,
    relative_mde: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int:
    """The users needed in *each* arm for :func:`power_at` to reach ``power`` (at least 2).

    For a conversion rate ``p``, ``baseline_sd`` is ``sqrt(p (1 - p))``.

    Raises:
        ValueError: ``baseline_sd`` is not positive, the effect is zero, or ``alpha`` and
            ``power`` are not ``0 < alpha < power < 1``.
    """
    a = _check_alpha(alpha)
    pw = float(power)
    if not a < pw < 1.0:
        raise ValueError(f"power must be in (alpha, 1) = ({a}, 1), got {power!r}")
    delta = _check_design(baseline_mean, baseline_sd, relative_mde)
    z = float(special.ndtri(1.0 - a / 2.0)) + float(special.ndtri(pw))
    n = max(2, math.ceil(2.0 * (baseline_sd * z / delta) ** 2))
    # the closed form ignores the far tail's power; step to the smallest n that suffices
    while n > 2 and power_at(n - 1, baseline_mean, baseline_sd, relative_mde, alpha=a) >= pw:
        n -= 1
    while power_at(n, baseline_mean, baseline_sd, relative_mde, alpha=a) < pw:
        n += 1
    return n


def clustered_se(deviations: npt.ArrayLike, groups: Sequence[str]) -> float:
    """The cluster-robust standard error of a mean whose terms deviate from it by
    ``deviations``, the terms grouped by ``groups`` (a user's pages): the sandwich variance
    with the small-sample factor G / (G - 1), as statsmodels' ``cov_type="cluster"``."""
    d = np.asarray(deviations, np.float64)
    _, which = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(which, weights=d)
    g = len(sums)
    return math.sqrt(float((sums**2).sum()) * g / max(g - 1, 1)) / len(d)
