"""The statistics of `shiftbench compare` on hand-built records: intervals, paired differences,
Holm's correction and the verdict rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from shiftbench.results.compare import (
    AVERAGE,
    BETTER,
    SAME,
    WORSE,
    Unit,
    compare_records,
    holm,
    render,
    verdict,
)


def records(algorithm: str, dataset: str, scores: dict[tuple[int, int], float]) -> list[dict]:
    """Two checkpoints per (held-out env, trial): step 1 is the better one under `iid`."""
    out = []
    for (env, trial), acc in scores.items():
        for step, val, test in ((0, 0.1, 0.0), (1, 0.9, acc)):
            r = {"args": {"task": "dg", "dataset": dataset, "algorithm": algorithm,
                          "test_envs": [env], "hparams_seed": 0, "trial_seed": trial},
                 "step": step}
            for i in range(2):
                r[f"env{i}_out_acc"] = val if i != env else 0.5
                r[f"env{i}_in_acc"] = test if i == env else 0.5
            out.append(r)
    return out


def test_holm_matches_its_definition():
    p = [0.01, 0.04, 0.03, None, 0.005]
    adjusted = holm(p)
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert adjusted[3] is None
    assert [adjusted[i] for i in (0, 1, 2, 4)] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_verdict_never_says_better_without_significance():
    assert verdict(5.0, 0.2, 0.05) == SAME
    assert verdict(5.0, None, 0.05) == SAME
    assert verdict(0.4, 0.01, 0.05) == BETTER
    assert verdict(-0.4, 0.01, 0.05) == WORSE


def test_intervals_differences_and_holm_over_datasets():
    rng = np.random.default_rng(0)
    trials = range(5)
    recs = []
    base = {d: {(e, t): 0.5 + 0.05 * rng.normal() for e in range(2) for t in trials}
            for d in ("A", "B")}
    for d in ("A", "B"):
        recs += records("ERM", d, base[d])
        shift = 0.10 if d == "A" else 0.0  # +10 points on A, nothing on B
        recs += records("New", d, {k: v + shift + 0.005 * rng.normal()
                                   for k, v in base[d].items()})
    units = [Unit("A", "A", (0, 1)), Unit("B", "B", (0, 1))]
    c = compare_records(recs, "New", ["ERM"], units, ["iid"], detect=1.0)
    algs, diffs = c.frames["algorithms"], c.frames["differences"]
    row = algs[(algs.unit == "A") & (algs.algorithm == "ERM")].iloc[0]
    per_trial = [100 * np.mean([base["A"][(e, t)] for e in range(2)]) for t in trials]
    half = sps.t.ppf(0.975, 4) * np.std(per_trial, ddof=1) / np.sqrt(5)
    assert row["mean"] == pytest.approx(np.mean(per_trial))
    assert row["ci_high"] - row["mean"] == pytest.approx(half)
    a = diffs[diffs.unit == "A"].iloc[0]
    b = diffs[diffs.unit == "B"].iloc[0]
    assert a["diff"] == pytest.approx(10, abs=1) and a["verdict"] == BETTER
    assert b["verdict"] == SAME
    assert a["p_holm"] == pytest.approx(holm([a["p_value"], b["p_value"]])[0])
    assert a["p_holm"] == pytest.approx(2 * a["p_value"])  # the smaller of the two p-values
    assert set(diffs.unit) == {"A", "B", AVERAGE}
    assert a["min_detectable_80"] > 0 and a["trials_needed"] >= 2
    v = c.frames["verdicts"].iloc[0]
    assert v["on"] == AVERAGE and v["units_better"] == 1 and v["units"] == 2
    text = render(c)
    assert "New vs ERM" in text and "detectable @80%" in text
    for fmt, marker in (("markdown", "| baseline"), ("latex", "\\toprule"), ("html", "<table")):
        assert marker in render(c, fmt)


def test_a_trial_missing_a_held_out_domain_is_left_out_of_the_dataset_average():
    recs = records("ERM", "A", {(0, 0): 0.5, (1, 0): 0.6, (0, 1): 0.7})
    recs += records("New", "A", {(0, 0): 0.5, (1, 0): 0.6, (0, 1): 0.7, (1, 1): 0.7})
    c = compare_records(recs, "New", ["ERM"], [Unit("A", "A", (0, 1))], ["iid"])
    algs = c.frames["algorithms"]
    assert algs[algs.algorithm == "ERM"].iloc[0]["n_trials"] == 1
    assert algs[algs.algorithm == "New"].iloc[0]["n_trials"] == 2
    assert c.frames["verdicts"].iloc[0]["verdict"] == SAME  # one pair: nothing to test
