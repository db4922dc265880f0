"""The statistics of `shiftbench compare`: one algorithm against baselines, per unit and rule.

A *unit* is what a suite reports one number for: a dataset (DG: the mean over its held-out
domains, per trial seed) or a source->target task (DA: the selected run's accuracy on the target).
Per selection rule, every algorithm's per-trial scores come from `shiftbench.results.selection`;
then

* each algorithm: the mean over trial seeds with a 95 % t-interval (sample standard deviation);
* the algorithm minus each baseline, paired by trial seed: mean difference, 95 % t-interval,
  two-sided paired t-test p-value, Holm-corrected over the suite's units (per rule and baseline);
* with more than one unit, the same on the suite average (per trial seed, the mean over units);
* one verdict per baseline, from the suite average (or the single unit): "better" / "worse" only
  when the test is significant at `alpha`, "no detectable difference" otherwise;
* power (`shiftbench.results.power`): from the observed standard deviation of the paired
  differences, the smallest difference this many trial seeds detect with 80 % power, and the
  trial seeds needed to detect `detect` points. Per unit at alpha / m (Holm's strictest step),
  on the suite average at alpha.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps

from shiftbench.health import marks
from shiftbench.results.health import annotate, legend, sweep_health
from shiftbench.results.power import min_detectable, trials_needed
from shiftbench.results.selection import Selected, get_selection_rule, select
from shiftbench.results.stats import mean_and_error, paired_difference, paired_test

AVERAGE = "suite average"
BETTER, WORSE, SAME = "better", "worse", "no detectable difference"


@dataclass(frozen=True)
class Unit:
    """One reported number of a suite: a dataset's held-out domains, or one source->target task."""

    name: str
    dataset: str
    test_envs: tuple[int, ...]  # DG: every held-out domain averaged; DA: the target
    source_envs: tuple[int, ...] | None = None  # DA tasks only


@dataclass
class Comparison:
    """The tables of one comparison as pandas DataFrames, plus notes."""

    algorithm: str
    baselines: list[str]
    rules: list[str]
    units: list[Unit]
    alpha: float
    detect: float | None
    frames: dict[str, Any] = field(default_factory=dict)  # algorithms, differences, verdicts
    notes: list[str] = field(default_factory=list)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and is not counted)."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(present)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float | None, float | None,
                                                                       float | None]:
    """Mean and the two ends of its t-interval (ends None with fewer than two values)."""
    mean, se = mean_and_error(list(values), ddof=1)
    if mean is None or se is None:
        return mean, None, None
    half = sps.t.ppf(0.5 + level / 2, len(values) - 1) * se
    return mean, mean - half, mean + half


def unit_scores(selected: Sequence[Selected], units: Sequence[Unit]
                ) -> dict[tuple[str, str], dict[int, float]]:
    """(unit, algorithm) -> {trial seed: score in %}; a DG trial counts only when every held-out
    domain of the unit has a selected run."""
    by_key: dict[tuple, dict[int, float]] = defaultdict(dict)
    for s in selected:
        by_key[(s.dataset, s.algorithm, s.test_env, s.source_envs)][s.trial_seed] = s.test_acc
    algorithms = sorted({s.algorithm for s in selected})
    out: dict[tuple[str, str], dict[int, float]] = {}
    for unit in units:
        for alg in algorithms:
            per_env = [by_key.get((unit.dataset, alg, t, unit.source_envs), {})
                       for t in unit.test_envs]
            trials = set.intersection(*(set(d) for d in per_env)) if per_env else set()
            out[(unit.name, alg)] = {t: 100 * float(np.mean([d[t] for d in per_env]))
                                     for t in sorted(trials)}
    return out


def _flags_by_unit(selected: Sequence[Selected], units: Sequence[Unit]
                   ) -> dict[tuple[str, str], set[str]]:
    """(unit, algorithm) -> the health flags of the selected runs behind it (and the average)."""
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in selected:
        for u in units:
            if s.dataset == u.dataset and s.test_env in u.test_envs and \
                    s.source_envs == u.source_envs:
                out[(u.name, s.algorithm)] |= set(getattr(s, "health", ()) or ())
                out[(AVERAGE, s.algorithm)] |= set(getattr(s, "health", ()) or ())
    return out


def suite_average(scores: dict[tuple[str, str], dict[int, float]], units: Sequence[Unit],
                  alg: str) -> dict[int, float]:
    """Per trial seed, the mean over every unit (trials missing a unit are left out)."""
    per_unit = [scores.get((u.name, alg), {}) for u in units]
    trials = set.intersection(*(set(d) for d in per_unit)) if per_unit else set()
    return {t: float(np.mean([d[t] for d in per_unit])) for t in sorted(trials)}


def verdict(diff: float | None, p: float | None, alpha: float) -> str:
    """Better / worse only when significant; never "better" without a p-value below alpha."""
    if diff is None or p is None or not p < alpha:
        return SAME
    return BETTER if diff > 0 else WORSE


def _difference_row(rule: str, unit: str, algorithm: str, baseline: str, a: dict[int, float],
                    b: dict[int, float], power_alpha: float, detect: float | None
                    ) -> dict[str, Any]:
    test = paired_test(algorithm, baseline, a, b)
    interval = paired_difference(test.diffs)
    mean, lo, hi = interval.mean, interval.low, interval.high
    sd = float(np.std(test.diffs, ddof=1)) if test.n >= 2 else None
    return {"rule": rule, "unit": unit, "algorithm": algorithm, "baseline": baseline,
            "n_pairs": test.n, "diff": mean, "ci_low": lo, "ci_high": hi,
            "p_value": test.p_value, "sd_diff": sd, "power_alpha": power_alpha,
            "min_detectable_80": None if sd is None else min_detectable(sd, test.n, power_alpha),
            "detect": detect,
            "trials_needed": (None if sd is None or detect is None
                              else trials_needed(detect, sd, power_alpha))}


def compare_records(records: Sequence[dict[str, Any]], algorithm: str, baselines: Sequence[str],
                    units: Sequence[Unit], rules: Sequence[str], alpha: float = 0.05,
                    detect: float | None = None) -> Comparison:
    """Every table of a comparison, computed from trial records."""
    import pandas as pd

    result = Comparison(algorithm, list(baselines), list(rules), list(units), alpha, detect)
    algorithms = [algorithm, *baselines]
    alg_rows, diff_rows, verdict_rows = [], [], []
    names = [u.name for u in units] + ([AVERAGE] if len(units) > 1 else [])
    health = sweep_health(records)
    seen_flags: set[str] = set()
    for rule in rules:
        selected = [s for s in select(records, rule, strict=False) if s.algorithm in algorithms]
        if not selected:
            result.notes.append(f"rule {rule}: nothing to select from (its scores are missing "
                                "from the records, or no trial has finished)")
            continue
        annotate(health, {rule: selected})
        flags = _flags_by_unit(selected, units)
        seen_flags |= {f for fs in flags.values() for f in fs}
        scores = unit_scores(selected, units)
        if len(units) > 1:
            for alg in algorithms:
                scores[(AVERAGE, alg)] = suite_average(scores, units, alg)
        for unit in names:
            for alg in algorithms:
                values = list(scores.get((unit, alg), {}).values())
                mean, lo, hi = t_interval(values)
                alg_rows.append({"rule": rule, "unit": unit, "algorithm": alg, "mean": mean,
                                 "ci_low": lo, "ci_high": hi, "n_trials": len(values),
                                 "health": marks(flags.get((unit, alg), ()))})
        n_units = len(units)
        for baseline in baselines:
            rows = [_difference_row(rule, u.name, algorithm, baseline,
                                    scores.get((u.name, algorithm), {}),
                                    scores.get((u.name, baseline), {}), alpha / n_units, detect)
                    for u in units]
            for row, p_holm in zip(rows, holm([r["p_value"] for r in rows])):
                row["p_holm"] = p_holm
                row["verdict"] = verdict(row["diff"], p_holm, alpha)
            if len(units) > 1:
                avg = _difference_row(rule, AVERAGE, algorithm, baseline,
                                      scores[(AVERAGE, algorithm)], scores[(AVERAGE, baseline)],
                                      alpha, detect)
                avg["p_holm"] = avg["p_value"]  # one test: nothing to correct
                avg["verdict"] = verdict(avg["diff"], avg["p_value"], alpha)
                rows.append(avg)
            diff_rows += rows
            head = rows[-1]
            per_unit = rows[:n_units]
            verdict_rows.append({
                "rule": rule, "baseline": baseline, "on": head["unit"], "diff": head["diff"],
                "ci_low": head["ci_low"], "ci_high": head["ci_high"], "p": head["p_holm"],
                "n_pairs": head["n_pairs"], "verdict": head["verdict"],
                "units_better": sum(r["verdict"] == BETTER for r in per_unit),
                "units_worse": sum(r["verdict"] == WORSE for r in per_unit),
                "units": n_units})
    if seen_flags:
        result.notes.append(legend(seen_flags) + " A verdict involving flagged runs compares "
                            "unhealthy training: see `shiftbench collect --health` on the store.")
    result.frames = {"algorithms": pd.DataFrame(alg_rows), "differences": pd.DataFrame(diff_rows),
                     "verdicts": pd.DataFrame(verdict_rows)}
    return result


# --------------------------------------------------------------------------------------------
# Rendering


def _num(x: Any, digits: int = 1, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if round(x, digits) == 0:
        x = 0.0  # no "-0.0"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _p(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def _interval(row: Any, signed: bool = False) -> str:
    mean = _num(row["mean" if "mean" in row else "diff"], signed=signed)
    if row["ci_low"] is None or (isinstance(row["ci_low"], float) and math.isnan(row["ci_low"])):
        return mean
    return f"{mean} [{_num(row['ci_low'], signed=signed)}, {_num(row['ci_high'], signed=signed)}]"


def display_tables(comparison: Comparison) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) of every table, in print order, cells as display strings."""
    frames = comparison.frames
    out = []
    for rule in comparison.rules:
        algs = frames["algorithms"]
        if algs.empty or rule not in set(algs["rule"]):
            continue
        title = get_selection_rule(rule).TITLE
        sub = algs[algs["rule"] == rule]
        units = list(dict.fromkeys(sub["unit"]))
        rows = []
        for alg in dict.fromkeys(sub["algorithm"]):
            cells = {r["unit"]: r for _, r in sub[sub["algorithm"] == alg].iterrows()}
            n = max(int(r["n_trials"]) for r in cells.values())
            rows.append([alg] + [_interval(cells[u]) + (f" {cells[u]['health']}"
                                                        if cells[u]["health"] else "")
                                 for u in units] + [str(n)])
        out.append((f"[{rule}] {title}: accuracy %, mean [95% CI] over trial seeds",
                    ["algorithm", *units, "trials"], rows))
        diffs = frames["differences"]
        sub = diffs[diffs["rule"] == rule]
        rows = []
        for _, r in sub.iterrows():
            rows.append([r["baseline"], r["unit"], _interval(r, signed=True), _p(r["p_value"]),
                         _p(r["p_holm"]), r["verdict"], str(r["n_pairs"]),
                         _num(r["min_detectable_80"])] +
                        ([str(r["trials_needed"]) if r["trials_needed"] is not None else "-"]
                         if comparison.detect is not None else []))
        headers = ["baseline", "unit", f"{comparison.algorithm} - baseline [95% CI]", "p",
                   "p Holm", "verdict", "pairs", "detectable @80%"]
        if comparison.detect is not None:
            headers.append(f"seeds to detect {comparison.detect:g}")
        out.append((f"[{rule}] paired differences (points); Holm over {len(comparison.units)} "
                    f"unit(s), alpha {comparison.alpha:g}", headers, rows))
    return out


def verdict_lines(comparison: Comparison) -> list[str]:
    """One sentence per rule and baseline."""
    lines = []
    v = comparison.frames.get("verdicts")
    if v is None or v.empty:
        return lines
    for _, r in v.iterrows():
        where = "" if r["units"] == 1 else (
            f"; per unit (Holm): better on {r['units_better']}, worse on {r['units_worse']} "
            f"of {r['units']}")
        lines.append(f"[{r['rule']}] {comparison.algorithm} vs {r['baseline']}: {r['verdict']} "
                     f"({_interval(r, signed=True)} points on {r['on']}, p = {_p(r['p'])}, "
                     f"{r['n_pairs']} paired trial seeds{where})")
    return lines


def render(comparison: Comparison, fmt: str = "text", extra: Sequence[tuple[str, list[str],
           list[list[str]]]] = ()) -> str:
    """The comparison as text (also markdown, latex or html), followed by `extra` tables."""
    from tabulate import tabulate

    tablefmt = {"text": "simple", "markdown": "github", "latex": "latex_booktabs",
                "html": "html"}[fmt]
    parts = []
    for title, headers, rows in [*display_tables(comparison), *extra]:
        heading = {"markdown": f"**{title}**", "latex": f"% {title}",
                   "html": f"<h4>{title}</h4>"}.get(fmt, title)
        parts.append(heading + "\n" + tabulate(rows, headers=headers, tablefmt=tablefmt,
                                               disable_numparse=True))
    verdicts = verdict_lines(comparison)
    if verdicts:
        body = {"markdown": "\n".join(f"- {v}" for v in verdicts),
                "html": "<ul>" + "".join(f"<li>{v}</li>" for v in verdicts) + "</ul>",
                "latex": "\n".join(f"% {v}" for v in verdicts)}.get(fmt, "\n".join(verdicts))
        parts.append(("Verdicts:\n" if fmt == "text" else "") + body)
    parts += [f"note: {n}" for n in comparison.notes]
    return "\n\n".join(parts)
