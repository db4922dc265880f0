"""Power of the paired two-sided t-test, from an observed standard deviation of paired differences.

For n paired differences with standard deviation `sd`, the test statistic follows a noncentral t
distribution with n - 1 degrees of freedom and noncentrality delta * sqrt(n) / sd when the true
mean difference is delta. Its power at level alpha is

    P(|T| > t_{1-alpha/2, n-1}) = 1 - F_nct(t_c) + F_nct(-t_c).

`min_detectable` inverts it in delta (the smallest difference detected with the given power),
`trials_needed` in n (the trial seeds needed to detect a given difference). Both treat the
observed `sd` as the true one, the usual planning assumption; tests/test_compare_power.py
checks them against a simulation of paired normal differences.
"""

from __future__ import annotations

import math

from scipy import optimize
from scipy import stats as sps

MAX_TRIALS = 100_000


def paired_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Probability that the two-sided paired t-test at `alpha` rejects, for a true mean
    difference `delta`, differences' standard deviation `sd` and `n` pairs."""
    if n < 2:
        return float("nan")
    if sd <= 0:
        return 1.0 if delta != 0 else alpha
    df = n - 1
    critical = sps.t.ppf(1 - alpha / 2, df)
    nc = abs(delta) * math.sqrt(n) / sd
    upper = float(sps.nct.sf(critical, df, nc))
    lower = float(sps.nct.cdf(-critical, df, nc))  # the wrong-sign tail: tiny once nc is large
    if not math.isfinite(lower):  # scipy's nct can underflow to NaN far in the tail
        lower = 0.0
    return upper + lower


def min_detectable(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """The smallest |mean difference| detected with probability `power` (None: n < 2 or no
    variance observed, so nothing can be said)."""
    if n < 2 or not sd > 0 or not math.isfinite(sd):
        return None
    hi = sd
    while paired_power(hi, sd, n, alpha) < power:
        hi *= 2
        if hi > 1e6 * sd:
            return None
    return float(optimize.brentq(lambda d: paired_power(d, sd, n, alpha) - power, 0.0, hi,
                                 xtol=1e-10 * sd))


def trials_needed(delta: float, sd: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """The fewest pairs (trial seeds) with which the test detects `delta` with probability
    `power` (None: no variance observed, or more than `MAX_TRIALS`)."""
    if not sd > 0 or not math.isfinite(sd) or delta == 0:
        return None
    lo, hi = 2, 2
    while paired_power(delta, sd, hi, alpha) < power:
        lo, hi = hi, hi * 2
        if hi > MAX_TRIALS:
            return None
    while lo < hi:  # the smallest n in [lo, hi] with enough power (power grows with n)
        mid = (lo + hi) // 2
        if paired_power(delta, sd, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return hi
