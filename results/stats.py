"""Statistics over trial seeds: means with standard errors, paired tests, ranks, search budgets."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from shiftbench.trial_record import config_key

DEFAULT_DDOF = 1  # the sample standard error: every table, paired difference and API uses it


def mean_and_error(values: Sequence[float], ddof: int = DEFAULT_DDOF
                   ) -> tuple[float | None, float | None]:
    """Mean and standard error of the mean; (None, None) for no values.

    `ddof=1` (the default, used everywhere) is the sample standard error,
    `std(values, ddof=1) / sqrt(n)`. `ddof=0` is DomainBed's estimator, `np.std(values / sqrt(n))`
    (population standard deviation over sqrt(n)), kept only to reproduce DomainBed's numbers.
    With one value the error is undefined (None) under both: one trial says nothing about the
    spread, and tables print `n=1` instead of a misleading `± 0.0`.
    """
    if len(values) == 0:
        return None, None
    arr = np.asarray(list(values), dtype=float)
    mean = float(np.mean(arr))
    if len(arr) < 2:
        return mean, None
    if ddof == 0:
        return mean, float(np.std(arr / np.sqrt(len(arr))))
    return mean, float(np.std(arr, ddof=ddof) / np.sqrt(len(arr)))


@dataclass
class Difference:
    """The mean of paired differences with its sample standard error and a t interval."""

    n: int
    mean: float | None
    se: float | None  # sample standard error of the mean difference (ddof 1); None for n < 2
    low: float | None  # two-sided `level` t confidence interval; None for n < 2
    high: float | None
    level: float = 0.95


def paired_difference(diffs: Sequence[float], level: float = 0.95) -> Difference:
    """Mean paired difference, its sample standard error (the estimator of every ± here) and
    the Student-t confidence interval mean ± t_{n-1} se; se and interval are None below 2 pairs."""
    values = [float(d) for d in diffs]
    mean, se = mean_and_error(values, DEFAULT_DDOF)
    if se is None:
        return Difference(len(values), mean, None, None, None, level)
    half = float(sps.t.ppf(0.5 + level / 2, len(values) - 1)) * se
    return Difference(len(values), mean, se, mean - half, mean + half, level)


@dataclass
class PairedComparison:
    """An algorithm against the baseline over the trial seeds both have."""

    algorithm: str
    baseline: str
    trials: list[int]
    diffs: list[float]  # algorithm - baseline, per trial (same units as the inputs)
    mean_diff: float | None
    t_statistic: float | None
    p_value: float | None  # two-sided paired t-test; None with fewer than 2 pairs or no variance
    se: float | None = None  # sample standard error of mean_diff (`paired_difference`)
    low: float | None = None  # 95 % t interval of mean_diff
    high: float | None = None

    @property
    def n(self) -> int:
        return len(self.trials)


def paired_test(algorithm: str, baseline: str, alg_by_trial: Mapping[int, float],
                base_by_trial: Mapping[int, float]) -> PairedComparison:
    """Paired two-sided t-test (scipy.stats.ttest_rel) over the trials present in both."""
    trials = sorted(set(alg_by_trial) & set(base_by_trial))
    a = [alg_by_trial[t] for t in trials]
    b = [base_by_trial[t] for t in trials]
    diffs = [x - y for x, y in zip(a, b)]
    difference = paired_difference(diffs)
    mean_diff = difference.mean
    t_stat = p = None
    if len(trials) >= 2:
        res = sps.ttest_rel(a, b)
        if math.isfinite(float(res.pvalue)):
            t_stat, p = float(res.statistic), float(res.pvalue)
    return PairedComparison(algorithm, baseline, trials, diffs, mean_diff, t_stat, p,
                            difference.se, difference.low, difference.high)


def average_ranks(scores: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict[str, float]]:
    """Per group (e.g. dataset), rank the names by score (1 = best, ties share the mean rank).

    `scores`: group -> name -> score (None = unranked in that group). Returns name -> group -> rank.
    """
    ranks: dict[str, dict[str, float]] = defaultdict(dict)
    for group, by_name in scores.items():
        present = [(a, v) for a, v in by_name.items() if v is not None]
        if not present:
            continue
        for (a, _), rank in zip(present, sps.rankdata([-v for _, v in present], method="average")):
            ranks[a][group] = float(rank)
    return ranks


@dataclass
class Budget:
    """How many hyperparameter configurations an algorithm had on one dataset."""

    task: str
    dataset: str
    algorithm: str
    min_configs: int
    max_configs: int

    def text(self) -> str:
        if self.min_configs == self.max_configs:
            return str(self.min_configs)
        return f"{self.min_configs}-{self.max_configs}"


def hparam_budgets(records: Iterable[dict[str, Any]]) -> list[Budget]:
    """Distinct configurations (`config_key`: hparams seed and fixed overrides) per (held-out env,
    trial), summarised per (task, dataset, algorithm).

    Only runs held out on one environment count (the pair runs of leave-one-domain-out repeat
    the same configurations).
    """
    seeds: dict[tuple, set[tuple[int, str]]] = defaultdict(set)
    for r in records:
        a = r["args"]
        if len(a["test_envs"]) != 1:
            continue
        seeds[(a["task"], a["dataset"], a["algorithm"], a["test_envs"][0], a["trial_seed"])].add(
            config_key(a))
    per: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for (task, dataset, algorithm, _, _), s in seeds.items():
        per[(task, dataset, algorithm)].append(len(s))
    return [Budget(t, d, a, min(v), max(v)) for (t, d, a), v in sorted(per.items())]


def unequal_budgets(budgets: Sequence[Budget], baseline: str | None = None) -> list[str]:
    """Human-readable warnings where algorithms on one (task, dataset) had different budgets."""
    warnings = []
    by_dataset: dict[tuple[str, str], list[Budget]] = defaultdict(list)
    for b in budgets:
        by_dataset[(b.task, b.dataset)].append(b)
    for (task, dataset), bs in sorted(by_dataset.items()):
        ranges = {(b.min_configs, b.max_configs) for b in bs}
        if len(ranges) <= 1 and all(b.min_configs == b.max_configs for b in bs):
            continue
        ref = next((b for b in bs if b.algorithm == baseline), None)
        detail = ", ".join(f"{b.algorithm} {b.text()}" for b in bs)
        what = f" (baseline {ref.algorithm}: {ref.text()})" if ref else ""
        warnings.append(f"unequal hparam budgets on {dataset} [{task}]{what}: {detail}")
    return warnings
