"""Sweep specs, job enumeration, job identity and command quoting (all in-process, fast)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from shiftbench.errors import ShiftbenchError, UnknownNameError
from shiftbench.sweeps.jobs import enumerate_jobs, job_hash, job_identity
from shiftbench.sweeps.spec import SpecError, SweepSpec, held_out_sets, load_spec
from shiftbench.trainer import TrainArgs


def _spec(**kw) -> SweepSpec:
    spec = SweepSpec(**kw)
    spec.validate()
    return spec


def test_enumeration_counts_with_pairs_and_single():
    # Debug28 has 3 environments: 3 singles + 3 pairs (DomainBed's 36-job test sweep).
    spec = _spec(datasets=["Debug28"], algorithms=["ERM"], n_hparams=3, n_trials=2)
    assert len(enumerate_jobs(spec, "out")) == 2 * 3 * (3 + 3)
    single = _spec(datasets=["Debug28"], algorithms=["ERM"], n_hparams=3, n_trials=2,
                   single_test_envs=True)
    assert len(enumerate_jobs(single, "out")) == 2 * 3 * 3
    # 4 environments: 4 + 6 sets; two datasets and hparams seeds 1..2 only.
    spec = _spec(datasets=["Digits", "Debug28"], algorithms=["ERM"], n_hparams=3,
                 n_hparams_from=1, n_trials=1)
    jobs = enumerate_jobs(spec, "out")
    assert len(jobs) == 2 * (10 + 6)
    assert {j.args.hparams_seed for j in jobs} == {1, 2}
    assert len({j.hash for j in jobs}) == len(jobs)


def test_grid_and_fixed_hparams_expand(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('datasets = ["Debug28"]\nalgorithms = ["ERM"]\nn_trials = 2\n'
                    'single_test_envs = true\n[hparams]\nbatch_size = 8\n'
                    '[algorithm.ERM.grid]\nlr = [0.01, 0.001]\nweight_decay = [0.0, 0.1, 0.2]\n'
                    '[test_envs]\nDebug28 = [["0"], [1, 2]]\n')
    spec = load_spec(path)
    jobs = enumerate_jobs(spec, tmp_path)
    assert len(jobs) == 2 * 6 * 2  # test-env sets x grid points x trials
    assert {tuple(j.args.test_envs) for j in jobs} == {(0,), (1, 2)}
    assert all('"batch_size": 8' in j.args.hparams for j in jobs)
    # The same hparams seed gives the same configuration in every trial.
    by_trial = {}
    for j in jobs:
        by_trial.setdefault(j.args.trial_seed, set()).add((tuple(j.args.test_envs), j.args.hparams))
    assert by_trial[0] == by_trial[1]


def test_held_out_sets_skip_pairs_for_two_environments():
    spec = SweepSpec(datasets=["Office31"])
    assert held_out_sets(spec, "Office31") == [[0], [1], [2], [0, 1], [0, 2], [1, 2]]
    assert held_out_sets(spec, "VisDA") == [[0], [1]]


GOLDEN_ARGS = TrainArgs(dataset="Digits", algorithm="ERM", test_envs=[2, 0], task="dg",
                        hparams='{"lr": 0.001, "batch_size": 32}', hparams_seed=1, trial_seed=2,
                        seed=12345, steps=300, holdout_fraction=0.2)


def test_hash_golden_value():
    # Changing this value orphans every existing sweep directory: do it only on purpose.
    assert job_hash(GOLDEN_ARGS) == "2ba2f402e8c9cd1627cc3017ff46dde8"


def test_hash_ignores_paths_order_and_added_defaults():
    base = job_hash(GOLDEN_ARGS)
    other = TrainArgs(**{**GOLDEN_ARGS.__dict__, "output_dir": "/elsewhere", "data_dir": "/data",
                         "device": "cpu", "test_envs": [0, 2], "skip_model_save": True,
                         "hparams": '{"batch_size":32,  "lr":0.001}'})
    assert job_hash(other) == base
    # Fields at their defaults are not part of the identity (a field added later with a
    # default that keeps the old behaviour leaves old hashes alone) ...
    assert "target_shots" not in job_identity(GOLDEN_ARGS)
    # ... but a non-default value of any result-changing field is.
    for change in ({"target_shots": 5}, {"checkpoint_freq": 7}, {"steps": 301}, {"seed": 1},
                   {"hparams": '{"lr": 0.01, "batch_size": 32}'}, {"test_envs": [1]}):
        assert job_hash(TrainArgs(**{**GOLDEN_ARGS.__dict__, **change})) != base, change


def test_hash_invariant_to_data_dir_and_output_dir_in_enumeration(tmp_path):
    spec = _spec(datasets=["Debug28"], algorithms=["ERM"], n_trials=1, single_test_envs=True)
    a = enumerate_jobs(spec, tmp_path / "a", data_dir="/x")
    b = enumerate_jobs(spec, tmp_path / "b", data_dir=None)
    assert [j.hash for j in a] == [j.hash for j in b]
    assert a[0].dir == tmp_path / "a" / a[0].hash


def test_bad_toml_reports_line_numbers(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('datasets = ["Debug28"]\nalgorithms = ["ERM"]\nn_trials = "two"\n')
    with pytest.raises(SpecError, match=r"bad.toml, line 3: n_trials must be int"):
        load_spec(path)
    path.write_text('datasets = ["Debug28"]\n\n[algorithm.ERM.grid]\nlr = 0.1\n')
    with pytest.raises(SpecError, match=r"line 4: grid value of ERM.lr must be a non-empty list"):
        load_spec(path)
    path.write_text('datasets = ["Debug28"]\nalgorithms = ["ERM"]\nn_trails = 2\n')
    with pytest.raises(SpecError, match=r"line 3: unknown sweep spec key 'n_trails' \(did you mean "
                                        r"'n_trials'\?\)"):
        load_spec(path)
    path.write_text('datasets = ["Debug28"]\nalgorithms = ["ERM"]\n[hparams]\nlearning_rate = 1\n')
    with pytest.raises(SpecError, match=r"line 4: unknown hparam for ERM 'learning_rate'"):
        load_spec(path)
    path.write_text('datasets = ["Debug28"]\nalgorithms = ["ERM", "NoSuchAlg"]\n')
    with pytest.raises(SpecError, match=r"line 2: unknown algorithm 'NoSuchAlg'.*valid choices"):
        load_spec(path)
    path.write_text('datasets = ["Debug28"]\nn_trials = = 2\n')
    with pytest.raises(SpecError, match=r"invalid TOML.*line 2"):
        load_spec(path)
    path.write_text('datasets = ["Debug28"]\n[test_envs]\nDebug28 = [["0", "1", "2"]]\n')
    with pytest.raises(SpecError, match=r"line 3: .*fewer than 3 environments"):
        load_spec(path)


def test_bad_flags_name_the_value():
    with pytest.raises(UnknownNameError, match="unknown dataset 'Digitz'"):
        _spec(datasets=["Digitz"], algorithms=["ERM"])
    with pytest.raises(ShiftbenchError, match="n_trials must be >= 1"):
        _spec(datasets=["Debug28"], algorithms=["ERM"], n_trials=0)
    with pytest.raises(ShiftbenchError, match="no datasets given"):
        _spec(algorithms=["ERM"])
    with pytest.raises(ShiftbenchError, match="does not support --task tta"):
        _spec(datasets=["Debug28"], algorithms=["ERM"], task="tta")


def test_commands_are_shell_quoted_against_injection(tmp_path):
    evil = tmp_path / "out dir'; touch PWNED; echo '$(touch PWNED2)"
    spec = _spec(datasets=["Debug28"], algorithms=["ERM"], n_trials=1, single_test_envs=True,
                 hparams={"lr": 0.001})
    job = enumerate_jobs(spec, evil, data_dir="/data/`touch PWNED3`")[0]
    line = job.command_str(python=sys.executable, threads=1)
    assert shlex.split(line) == job.command(python=sys.executable, threads=1)
    # The shell sees exactly one argument per value: echo them back through a real shell.
    echoed = subprocess.run(["sh", "-c", "printf '%s\\n' " + line.split(" ", 3)[3]],
                            capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert str(job.spec_file) in echoed.splitlines()
    # the dry run's `shiftbench train` form carries every value, the data directory included
    line = job.train_command_str(python=sys.executable, threads=1)
    assert shlex.split(line) == job.train_command(python=sys.executable, threads=1)
    echoed = subprocess.run(["sh", "-c", "printf '%s\\n' " + line.split(" ", 4)[4]],
                            capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert str(job.dir) in echoed.splitlines() and "/data/`touch PWNED3`" in echoed.splitlines()
    assert not any(Path(tmp_path, name).exists() for name in ("PWNED", "PWNED2", "PWNED3"))


def test_dry_run_prints_commands(tmp_path, capsys):
    from shiftbench.cli import main

    code = main(["sweep", "launch", "--datasets", "Debug28", "--algorithms", "ERM",
                 "--n_trials", "2", "--single_test_envs", "--steps", "3", "--output_dir",
                 str(tmp_path), "--command_launcher", "dry-run"])
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "-m shiftbench train" in ln]
    assert code == 0 and len(lines) == 6
    assert all("--steps 3" in ln and "--trial-seed" in ln for ln in lines)
    assert not list(tmp_path.iterdir())  # nothing launched, nothing written


def test_slurm_options_are_checked():
    from shiftbench.sweeps.launchers import check_sbatch_value, slurm_minutes

    assert slurm_minutes("90") == 90
    assert slurm_minutes("1:30:00") == 90
    assert slurm_minutes("2-01:00") == 2 * 1440 + 60
    with pytest.raises(ShiftbenchError, match="expected minutes"):
        slurm_minutes("soon")
    assert check_sbatch_value("partition", "gpu-a100") == "gpu-a100"
    with pytest.raises(ShiftbenchError, match="not allowed"):
        check_sbatch_value("partition", "gpu\n#SBATCH --wrap='rm -rf ~'")


def test_unknown_launcher_lists_choices(tmp_path):
    from shiftbench.sweeps.launchers import get_launcher

    with pytest.raises(UnknownNameError, match="unknown launcher 'slurmm'.*did you mean 'slurm'"):
        get_launcher("slurmm")


def test_slurm_task_requeues_itself_on_preemption(tmp_path):
    pytest.importorskip("submitit")
    from shiftbench.sweeps.slurm_task import SweepTask

    spec = _spec(datasets=["DebugVector"], algorithms=["ERM"], n_trials=1, single_test_envs=True)
    job = enumerate_jobs(spec, tmp_path)[0]
    task = SweepTask(job.command(threads=1), str(job.dir))
    # submitit calls checkpoint() on SIGUSR2 (timeout/preemption) and requeues what it returns:
    # the same command, which resumes the trial from its checkpoint.
    resubmission = task.checkpoint()
    assert resubmission.function is task and resubmission.function.argv == job.command(threads=1)
    failing = SweepTask([sys.executable, "-c", "raise SystemExit(3)"], str(job.dir))
    with pytest.raises(RuntimeError, match="exited with status 3"):
        failing()


def test_precision_and_tta_mode_reach_jobs_hashes_and_commands(tmp_path):
    # The defaults (fp32, continual) leave the identity, hence every existing hash, unchanged.
    assert "precision" not in job_identity(GOLDEN_ARGS)
    assert "tta_mode" not in job_identity(GOLDEN_ARGS)
    explicit = TrainArgs(**{**GOLDEN_ARGS.__dict__, "precision": "fp32", "tta_mode": "continual"})
    assert job_hash(explicit) == "2ba2f402e8c9cd1627cc3017ff46dde8"
    bf16 = TrainArgs(**{**GOLDEN_ARGS.__dict__, "precision": "bf16"})
    assert job_identity(bf16)["precision"] == "bf16"
    assert job_hash(bf16) != job_hash(GOLDEN_ARGS)
    episodic = TrainArgs(**{**GOLDEN_ARGS.__dict__, "task": "tta", "tta_mode": "episodic"})
    continual = TrainArgs(**{**GOLDEN_ARGS.__dict__, "task": "tta"})
    assert job_hash(episodic) != job_hash(continual)

    base = dict(datasets=["Debug28"], algorithms=["ERM"], n_trials=1, single_test_envs=True)
    fp32_jobs = enumerate_jobs(_spec(**base), tmp_path)
    bf16_jobs = enumerate_jobs(_spec(**base, precision="bf16"), tmp_path)
    assert all(j.args.precision == "bf16" for j in bf16_jobs)
    assert not {j.hash for j in fp32_jobs} & {j.hash for j in bf16_jobs}
    assert "--precision bf16" in bf16_jobs[0].train_command_str()
    assert "--precision" not in fp32_jobs[0].train_command_str()
    # tta_mode is read only by test-time adaptation: other tasks' jobs ignore it.
    dg_episodic = enumerate_jobs(_spec(**base, tta_mode="episodic"), tmp_path)
    assert [j.hash for j in dg_episodic] == [j.hash for j in fp32_jobs]
    tta = dict(base, algorithms=["Tent"], task="tta")
    tta_jobs = enumerate_jobs(_spec(**tta, tta_mode="episodic"), tmp_path)
    assert all(j.args.tta_mode == "episodic" for j in tta_jobs)
    assert "--tta-mode episodic" in tta_jobs[0].train_command_str()
    assert ({j.hash for j in tta_jobs}
            .isdisjoint(j.hash for j in enumerate_jobs(_spec(**tta), tmp_path)))


def test_precision_and_tta_mode_from_toml_and_flags(tmp_path, capsys):
    from shiftbench.cli import main

    path = tmp_path / "s.toml"
    path.write_text('datasets = ["Debug28"]\nalgorithms = ["ERM"]\nn_trials = 1\n'
                    'single_test_envs = true\nprecision = "bf16"\n')
    assert load_spec(path).trial.precision == "bf16"
    path.write_text('datasets = ["Debug28"]\nalgorithms = ["ERM"]\nprecision = "fp16"\n')
    with pytest.raises(SpecError, match=r"line 3: unknown precision 'fp16'.*; valid choices: "
                                        r"bf16, fp32"):
        load_spec(path)
    path.write_text('datasets = ["Debug28"]\nalgorithms = ["Tent"]\ntask = "tta"\n'
                    'tta_mode = "online"\n')
    with pytest.raises(SpecError, match=r"line 4: unknown tta_mode 'online'.*; valid choices: "
                                        r"continual, episodic"):
        load_spec(path)
    path.write_text('datasets = ["Debug28"]\nprecision = 16\n')
    with pytest.raises(SpecError, match=r"line 2: precision must be str"):
        load_spec(path)

    flags = ["sweep", "launch", "--datasets", "Debug28", "--algorithms", "ERM", "--n-trials", "1",
             "--single-test-envs", "--steps", "3", "--output-dir", str(tmp_path / "out"),
             "--launcher", "dry-run"]
    assert main(flags + ["--precision", "bf16"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "-m shiftbench train" in ln]
    assert len(lines) == 3 and all("--precision bf16" in ln for ln in lines)
    # The flag overrides the spec file; a bad value names the choices.
    path.write_text('datasets = ["Debug28"]\nalgorithms = ["ERM"]\nprecision = "bf16"\n')
    assert main(flags + ["--spec", str(path), "--precision", "fp32"]) == 0
    assert "--precision" not in capsys.readouterr().out
    assert main(flags + ["--precision", "half"]) == 2
    assert "unknown precision 'half'; valid choices: bf16, fp32" in capsys.readouterr().err


def test_default_algorithms_fit_the_datasets_task_type():
    """No algorithm list: every algorithm of the setting that trains on the datasets' task type
    (no segmentation algorithm in a classification sweep, and the reverse)."""
    from shiftbench.algorithms import get_algorithm_class

    digits = _spec(datasets=["Digits"], task="uda")
    streets = _spec(datasets=["SyntheticStreets"], task="uda")
    assert "DANN" in digits.algorithms and "SegDACS" in streets.algorithms
    assert all("classification" in get_algorithm_class(a).TASK_TYPES for a in digits.algorithms)
    assert all("segmentation" in get_algorithm_class(a).TASK_TYPES for a in streets.algorithms)
