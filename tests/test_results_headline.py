"""The headline leaderboards: one per setting under its primary rule, the paired difference to
the baseline, sentences instead of uncomputable tables, and the DataFrame API."""

from __future__ import annotations

import contextlib
import io

import pytest
from results_helpers import make_record, write_trial
from scipy import stats as sps

from shiftbench.cli import main
from shiftbench.results import leaderboard
from shiftbench.results.headline import render_headline
from shiftbench.results.tables import collect

# ACC[task][alg][trial][env]: the test accuracy of the only hparam config
ACC = {
    "dg": {"ERM": [[0.60, 0.70, 0.80], [0.62, 0.69, 0.83]],
           "CORAL": [[0.65, 0.72, 0.81], [0.66, 0.75, 0.80]]},
    "uda": {"ERM": [[0.50, 0.50, 0.50], [0.52, 0.48, 0.50]],
            "DeepCORAL": [[0.55, 0.60, 0.58], [0.54, 0.61, 0.50]]},
}


def records():
    out = []
    for task, algs in ACC.items():
        for alg, trials in algs.items():
            for trial, accs in enumerate(trials):
                for env, acc in enumerate(accs):
                    others = {f"env{i}_out_acc": 0.9 for i in range(3) if i != env}
                    out.append(make_record(0, 0, [env], trial_seed=trial, algorithm=alg, task=task,
                                           **{f"env{env}_in_acc": acc}, **others))
    return out


@pytest.fixture(scope="module")
def collection():
    return collect(records())


def test_leaderboard_frame(collection):
    frame = leaderboard(collection)
    assert list(frame["setting"]) == ["dg", "dg", "uda", "uda"]
    assert list(frame["algorithm"]) == ["CORAL", "ERM", "DeepCORAL", "ERM"]  # best first
    assert set(frame["rule"]) == {"iid"}
    coral = frame[(frame.setting == "dg") & (frame.algorithm == "CORAL")].iloc[0]
    assert coral["0"] == pytest.approx(65.5) and coral["2"] == pytest.approx(80.5)
    per_trial = {alg: [100 * sum(t) / 3 for t in ACC["dg"][alg]] for alg in ("ERM", "CORAL")}
    assert coral["avg"] == pytest.approx(sum(per_trial["CORAL"]) / 2)
    diffs = [a - b for a, b in zip(per_trial["CORAL"], per_trial["ERM"])]
    assert coral["diff_vs_ERM"] == pytest.approx(sum(diffs) / 2)
    assert coral["p_value"] == pytest.approx(sps.ttest_rel(per_trial["CORAL"], per_trial["ERM"]).pvalue)
    assert coral["n_pairs"] == 2 and coral["n_trials"] == 2


def test_leaderboard_of_one_setting_and_of_a_directory(tmp_path):
    for i, r in enumerate(records()):
        write_trial(tmp_path, f"t{i}", [r])
    frame = leaderboard(tmp_path, task="uda")
    assert list(frame["algorithm"]) == ["DeepCORAL", "ERM"]
    with pytest.raises(Exception, match="no results for setting 'sda'"):
        leaderboard(tmp_path, task="sda")


def test_headline_text(collection):
    text = render_headline(collection)
    lines = text.splitlines()
    assert "Domain generalization (dg) on DebugVector, 2 trial(s); model selection:\n" \
           "training-domain validation set" in text
    assert max(len(line) for line in lines) <= 80
    assert "Unsupervised domain adaptation (uda)" in text
    assert "vs ERM" in text and "(baseline)" in text
    dg_rows = [line for line in lines if line.startswith(("CORAL ", "ERM "))]
    assert dg_rows[0].startswith("CORAL")  # best first
    # single held-out domains only: leave-one-domain-out is one sentence, not a grid of X
    assert "Leave-one-domain-out selection is left out" in text
    assert " X " not in text and "env{" not in text and "_uda_" not in text
    assert "--all-tables" in text and "report.html" in text
    assert len(lines) < 30


def test_collect_default_is_the_headline(tmp_path):
    for i, r in enumerate(records()):
        write_trial(tmp_path, f"t{i}", [r])

    def run(*extra):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["collect", "--input-dir", str(tmp_path), "--quiet", *extra]) == 0
        return buf.getvalue()

    short, full = run(), run("--all-tables")
    assert "vs ERM" in short and "-------- Dataset" not in short
    assert "-------- Dataset: DebugVector, model selection method: leave-one-domain-out" in full
    assert len(short.splitlines()) < len(full.splitlines()) / 3
    out = tmp_path / "tables.txt"
    run("--output", str(out))  # a file gets every table
    assert out.read_text() == full
