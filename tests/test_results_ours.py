"""`shiftbench collect` on a small sweep of our own trainer's records (generated at test time)."""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

from shiftbench.cli import main
from shiftbench.results.reading import read_sweep
from shiftbench.results.tables import collect

DG_ENV_SETS = ([0], [1], [2], [0, 1], [0, 2], [1, 2])


def _train(out, algorithm, task, test_envs, hparams_seed, trial_seed):
    name = f"{algorithm}-{task}-{''.join(map(str, test_envs))}-h{hparams_seed}-t{trial_seed}"
    argv = ["train", "--dataset", "DebugVector", "--algorithm", algorithm, "--task", task,
            "--test-envs", *map(str, test_envs), "--hparams-seed", str(hparams_seed),
            "--trial-seed", str(trial_seed), "--seed", str(7 * trial_seed + hparams_seed),
            "--steps", "2", "--checkpoint-freq", "1", "--skip-model-save", "--no-progress",
            "--output-dir", str(out / name)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """dg: ERM, 2 configs; trial 0 has the LOO pair runs, trial 1 only single held-out runs.
    uda: ERM and DeepCORAL, default configs, 2 trials. ssda: ERM on env 0, 2 trials."""
    out = tmp_path_factory.mktemp("our-sweep")
    mp = pytest.MonkeyPatch()
    mp.setattr(os, "fsync", lambda fd: None)  # crash safety is not under test here; speed is
    try:
        _train_all(out)
    finally:
        mp.undo()
    return out


def _train_all(out):
    for h in (0, 1):
        for envs in DG_ENV_SETS:
            _train(out, "ERM", "dg", envs, h, 0)
        for env in range(3):
            _train(out, "ERM", "dg", [env], h, 1)
    for alg in ("ERM", "DeepCORAL"):
        for env in range(3):
            for trial in (0, 1):
                _train(out, alg, "uda", [env], 0, trial)
    for trial in (0, 1):
        _train(out, "ERM", "ssda", [0], 0, trial)


def run_collect(*args):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["collect", *args])
    return code, buf.getvalue()


def test_reads_our_records(sweep_dir):
    sweep = read_sweep(sweep_dir, quiet=True)
    s = sweep.summary()
    assert s["jobs"] == 18 + 12 + 2 and s["done"] == s["jobs"] and s["duplicates_dropped"] == 0
    assert s["records"] == 2 * s["jobs"]
    assert {r["args"]["task"] for r in sweep.records} == {"dg", "uda", "ssda"}


def test_collect_prints_every_table(sweep_dir):
    code, text = run_collect("--input-dir", str(sweep_dir), "--quiet", "--all-tables")
    assert code == 0
    for title in ("training-domain validation set", "leave-one-domain-out cross-validation",
                  "test-domain validation set (oracle)", "few labeled target examples"):
        assert f"-------- Dataset: DebugVector, model selection method: {title}" in text
        assert f"-------- Averages, model selection method: {title}" in text
    for title in ("training-domain validation set", "leave-one-domain-out cross-validation",
                  "test-domain validation set (oracle)"):  # ranks: only uda has 2 algorithms
        assert f"-------- Average rank (1 = best), model selection method: {title}, task: uda" in text
    assert "-------- Difference to ERM (points; paired t-test over trial seeds), model selection " \
           "method: training-domain validation set, task: uda" in text
    assert "-------- Hyperparameter configurations per held-out environment and trial" in text
    assert "unequal hparam budgets" not in text.split("task: uda")[-1]
    # the trainer records entropy, IM, SND and DEV scores on the unlabeled target split
    for title in ("target entropy", "target information maximisation",
                  "target soft neighbourhood density", "deep embedded validation"):
        assert (f"-------- Dataset: DebugVector, model selection method: {title} (unsupervised), "
                "task: uda") in text
    assert "selection rule 'snd' skipped" not in text
    assert "selection rule 'dev' skipped" not in text


def test_tables_on_our_records(sweep_dir):
    c = collect(read_sweep(sweep_dir, quiet=True))
    assert c.rules == ["iid", "loo", "oracle", "target", "entropy", "im", "snd", "dev"]
    by = {(t.kind, t.rule, t.task): t for t in c.tables}
    iid = by[("dataset", "iid", "dg")]
    assert iid.columns == ["0", "1", "2", "Avg"]
    assert all(cell.n == 2 for cell in iid.cells[0][:3])
    loo = by[("dataset", "loo", "dg")]
    assert all(cell.n == 1 for cell in loo.cells[0][:3])  # only trial 0 has pair runs
    uda = by[("baseline", "iid", "uda")]
    assert uda.rows == ["DeepCORAL"] and uda.cells[0][0].n == 2
    target = by[("dataset", "target", "ssda")]
    assert target.cells[0][0].n == 2 and target.cells[0][1].display() == "X"
    budget = by[("budget", None, "dg")]
    assert budget.cells[0][0].display() == "2"


@pytest.mark.parametrize("fmt", ["markdown", "csv", "json", "latex", "domainbed"])
def test_every_format_on_our_records(sweep_dir, fmt):
    code, text = run_collect("--input-dir", str(sweep_dir), "--format", fmt, "--quiet")
    assert code == 0 and text
    if fmt == "json":
        data = json.loads(text)
        assert data["summary"]["jobs"] == 32 and data["rules"] == ["iid", "loo", "oracle", "target",
                                                                 "entropy", "im", "snd", "dev"]
    if fmt == "domainbed":
        assert text.startswith("Total records: 64\n")
        assert "-------- Dataset: DebugVector [uda], model selection method: training-domain" in text
