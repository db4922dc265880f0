"""`shiftbench compare`: a plug-in algorithm from a user's file against ERM and CORAL on
`digits-dg` at a small budget, the verdict table, and baselines reused by a second comparison;
`--dry-run` of `domainbed-full`; `list suites`; bad input."""

from __future__ import annotations

import os
import sys

import pytest

from shiftbench.cli import main

PLUGIN = '''
"""A user's algorithms, registered from their own file."""
import torch.nn.functional as F

from shiftbench.algorithms.base import concat_minibatches, register_algorithm, step
from shiftbench.algorithms.erm import ERM
from shiftbench.sweeps.launchers import get_launcher, register_launcher

LAUNCHED = []


@register_algorithm
class SmoothERM(ERM):
    """ERM with label smoothing 0.1 (Szegedy et al., 2016): cross-entropy against targets
    mixed 0.9 / 0.1 with the uniform distribution."""

    PAPER = "test plug-in"

    SMOOTHING = 0.1

    def update(self, minibatches, unlabeled=None):
        x, y = concat_minibatches(minibatches)
        loss = F.cross_entropy(self.predict(x), y, label_smoothing=self.SMOOTHING)
        step(loss, self.optimizer)
        return {"loss": loss.item()}


@register_algorithm
class SmootherERM(SmoothERM):
    """Label smoothing 0.2."""

    PAPER = "test plug-in"

    SMOOTHING = 0.2


@register_launcher("counting")
def counting(jobs, options):
    """The local launcher, recording which algorithms it was given."""
    LAUNCHED.extend(j.args.algorithm for j in jobs)
    return get_launcher("local")(jobs, options)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    from shiftbench.algorithms import base
    from shiftbench.sweeps.launchers import LAUNCHERS

    (tmp_path / "my_algorithms.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(tmp_path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    import my_algorithms

    yield my_algorithms
    for name in ("SmoothERM", "SmootherERM"):
        base.ALGORITHM_REGISTRY._items.pop(name, None)
        if name in base.ALGORITHMS:
            base.ALGORITHMS.remove(name)
    LAUNCHERS._items.pop("counting", None)
    sys.modules.pop("my_algorithms", None)


def test_plugin_against_erm_and_coral_then_only_the_new_trials_run(tmp_path, plugin, capsys):
    store = tmp_path / "store"
    flags = ["--against", "ERM", "CORAL", "--suite", "digits-dg", "--steps", "6",
             "--n-trials", "2", "--n-hparams", "1", "--output-dir", str(store),
             "--import", "my_algorithms", "--launcher", "counting", "--skip-confirmation",
             "--no-progress", "--jobs", "2", "--threads", "1", "--detect", "1.0"]
    assert main(["compare", "--algorithm", "SmoothERM", *flags]) == 0
    out = capsys.readouterr().out
    # 3 algorithms x 4 held-out domains x 2 trial seeds x 1 configuration
    assert sorted(plugin.LAUNCHED) == sorted(["SmoothERM", "ERM", "CORAL"] * 8)
    assert "SmoothERM vs ERM:" in out and "SmoothERM vs CORAL:" in out
    for word in ("mean [95% CI]", "p Holm", "detectable @80%", "seeds to detect 1"):
        assert word in out
    verdicts = [line for line in out.splitlines() if line.startswith("[iid] SmoothERM vs")]
    assert len(verdicts) == 2
    assert all(any(v in line for v in ("better", "worse", "no detectable difference"))
               for line in verdicts)

    plugin.LAUNCHED.clear()
    assert main(["compare", "--algorithm", "SmootherERM", *flags, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "to run: 8" in out and "reused (done in the store): 16" in out
    assert plugin.LAUNCHED == []
    assert main(["compare", "--algorithm", "SmootherERM", *flags, "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert plugin.LAUNCHED == ["SmootherERM"] * 8  # the baselines were found in the store
    assert "| baseline" in out and "SmootherERM vs ERM" in out


def test_python_api_returns_the_tables_as_dataframes(tmp_path, plugin):
    import shiftbench.api as sb

    frames = sb.compare("SmoothERM", ["ERM"], "digits-dg", output_dir=tmp_path / "s", steps=2,
                        n_trials=2, n_hparams=1, imports=["my_algorithms"], threads=1,
                        launcher="counting", rules=["iid"])
    assert set(frames) == {"algorithms", "differences", "verdicts", "published"}
    d = frames["differences"]
    assert list(d.baseline) == ["ERM"] and d.iloc[0]["n_pairs"] == 2
    assert set(frames["algorithms"].algorithm) == {"SmoothERM", "ERM"}


def test_domainbed_full_dry_run_lists_the_jobs_with_cost_and_published_rows(tmp_path, capsys):
    assert main(["compare", "--algorithm", "CORAL", "--against", "ERM", "--suite",
                 "domainbed-full", "--dry-run", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # per algorithm: (6 + 21 + 4 x 10 + 21) held-out sets x 20 configurations x 3 trial seeds
    assert "to run: 10560" in out
    assert "ColoredMNIST" in out and "DomainNet" in out and "CPU hours to run" in out
    assert "published, not re-run" in out and "DomainBed" in out
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_da_suite_units_are_its_tasks_and_tllib_rows_apply(tmp_path, capsys):
    from shiftbench.sweeps.compare import make_plan
    from shiftbench.sweeps.compare_cli import units_of
    from shiftbench.sweeps.suites import get_suite

    plan = make_plan(get_suite("digits-da"), "DeepCORAL", ["ERM"], tmp_path)
    assert [u.name for u in units_of(plan)] == ["mnist→mnist_m", "synth→mnist", "mnist→lowres",
                                                "lowres→mnist"]
    assert len(plan.jobs) == 2 * 4 * 3 * 3  # algorithms x tasks x configurations x seeds
    assert main(["compare", "--algorithm", "CDAN", "--against", "ERM", "DANN", "--suite",
                 "office31-da", "--dry-run", "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "TLlib Office31" in out and "published, not re-run" in out
    assert "93.8" in out  # CDAN A→W in TLlib's table


def test_compare_runs_paired_trials_and_names_unpaired_ones_it_cannot_reuse(tmp_path):
    from shiftbench.sweeps.compare import make_plan
    from shiftbench.sweeps.jobs import enumerate_jobs
    from shiftbench.sweeps.suites import get_suite

    suite = get_suite("digits-dg").with_budget(n_trials=2, n_hparams=1, steps=3)
    plan = make_plan(suite, "CORAL", ["ERM"], tmp_path)
    seeds = {}
    for job in plan.jobs:  # paired: one seed per (held-out set, trial seed), whatever algorithm
        seeds.setdefault((tuple(job.args.test_envs), job.args.trial_seed), set()).add(
            job.args.seed)
    assert all(len(s) == 1 for s in seeds.values()) and len(seeds) == 8
    for job in enumerate_jobs(plan.spec, tmp_path, seeding="domainbed")[:3]:
        job.dir.mkdir(parents=True)
    plan = make_plan(suite, "CORAL", ["ERM"], tmp_path)
    assert len(plan.to_run) == 16
    assert "3 trial(s) of this job set" in plan.notes[0] and "unpaired" in plan.notes[0]


def test_list_suites(capsys):
    assert main(["list", "suites"]) == 0
    out = capsys.readouterr().out
    for name in ("digits-dg", "digits-da", "rmnist", "domainbed-full"):
        assert name in out


@pytest.mark.parametrize("argv,message", [
    (["--suite", "digits-gd"], "unknown suite 'digits-gd' (did you mean 'digits-dg'?)"),
    (["--suite", "digits-dg", "--against", "SmoothERM"], "also in --against"),
    (["--suite", "digits-dg", "--n-trials", "0"], "--n-trials must be a positive integer"),
    (["--suite", "digits-dg", "--selection", "iidd"], "unknown selection rule 'iidd'"),
])
def test_bad_input_is_refused_by_name(tmp_path, capsys, argv, message):
    code = main(["compare", "--algorithm", "SmoothERM", "--output-dir", str(tmp_path / "s"),
                 "--dry-run", *argv])
    assert code == 2
    assert message in capsys.readouterr().err
