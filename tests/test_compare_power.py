"""The power statement of `shiftbench compare` against a simulation of paired normal differences."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from shiftbench.results.power import min_detectable, paired_power, trials_needed


def simulated_power(delta: float, sd: float, n: int, alpha: float, reps: int = 40_000,
                    seed: int = 0) -> float:
    """The fraction of `reps` samples of n paired normal differences (mean delta, sd) whose
    two-sided one-sample t-test rejects at `alpha`."""
    rng = np.random.default_rng(seed)
    d = rng.normal(delta, sd, size=(reps, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(n))
    p = 2 * sps.t.sf(np.abs(t), n - 1)
    return float(np.mean(p < alpha))


@pytest.mark.parametrize("sd,n,alpha", [(1.5, 3, 0.05), (2.0, 5, 0.05), (0.7, 10, 0.05 / 4)])
def test_min_detectable_difference_has_80_percent_power_in_simulation(sd, n, alpha):
    mde = min_detectable(sd, n, alpha)
    assert mde is not None and mde > 0
    assert paired_power(mde, sd, n, alpha) == pytest.approx(0.8, abs=1e-6)
    assert simulated_power(mde, sd, n, alpha) == pytest.approx(0.8, rel=0.10)
    # and a difference half as large is clearly under-powered
    assert simulated_power(mde / 2, sd, n, alpha) < 0.6


@pytest.mark.parametrize("delta,sd,alpha", [(1.0, 2.0, 0.05), (0.5, 0.8, 0.01)])
def test_trials_needed_is_the_smallest_n_with_80_percent_power_in_simulation(delta, sd, alpha):
    n = trials_needed(delta, sd, alpha)
    assert n is not None and n >= 3
    assert simulated_power(delta, sd, n, alpha) >= 0.8 * 0.9
    assert simulated_power(delta, sd, n, alpha) == pytest.approx(paired_power(delta, sd, n, alpha),
                                                                 rel=0.10)
    assert paired_power(delta, sd, n - 1, alpha) < 0.8 <= paired_power(delta, sd, n, alpha)


def test_power_statement_needs_variance_and_two_pairs():
    assert min_detectable(1.0, 1) is None
    assert min_detectable(0.0, 5) is None
    assert trials_needed(1.0, 0.0) is None
    assert trials_needed(0.0, 1.0) is None
