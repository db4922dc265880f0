"""Named source->target task suites (sweeps/tasks.py)."""

from __future__ import annotations

import pytest

from shiftbench.errors import ShiftbenchError, UnknownNameError
from shiftbench.sweeps.tasks import TASK_SUITES, get_task_suite, suite_tasks, task_name


def names(suite, dataset=None):
    return [t.name for t in get_task_suite(suite).tasks(dataset)]


def test_office31_is_the_six_pairs_in_the_fields_order():
    assert names("office31") == ["A→W", "D→W", "W→D", "A→D", "D→A", "W→A"]
    tasks = get_task_suite("office31").tasks()
    assert tasks[0].dataset == "Office31"
    assert (tasks[0].source_envs, tasks[0].test_envs) == ((0,), (2,))


def test_officehome_twelve_visda_one():
    home = names("officehome")
    assert len(home) == 12 == len(set(home)) and home[0] == "A→C"
    assert names("visda") == ["synthetic→real"]


def test_digits_classic_pairs_on_digits_and_the_demo():
    assert names("digits") == ["mnist→mnist_m", "synth→mnist", "mnist→lowres", "lowres→mnist"]
    import shiftbench.demo_data  # noqa: F401  (registers DigitsDemo)

    assert names("digits", "DigitsDemo") == names("digits")


def test_leave_one_out_suites():
    pacs = get_task_suite("pacs").tasks()
    assert [t.name for t in pacs] == ["→A", "→C", "→P", "→S"]
    assert pacs[1].source_envs == (0, 2, 3) and pacs[1].test_envs == (1,)
    assert len(get_task_suite("domainnet").tasks()) == 6
    assert [t.name for t in suite_tasks(["loo"], ["Digits"])][0] == "→mnist"


def test_bad_names_list_the_choices():
    with pytest.raises(UnknownNameError, match="office31"):
        get_task_suite("office-31")
    with pytest.raises(ShiftbenchError, match="mnist_m"):
        get_task_suite("office31").tasks("Digits")
    with pytest.raises(ShiftbenchError, match="--datasets"):
        suite_tasks(["loo"])
    assert {"office31", "officehome", "digits", "visda", "domainnet", "loo"} <= set(TASK_SUITES)


def test_task_name():
    assert task_name(["A", "C", "D", "W"], (0, 2), (3,)) == "A+D→W"
    assert task_name(["A", "D", "W"], (0, 1), (2,)) == "→W"  # all other domains
    assert task_name(["s", "r"], (0,), (1,)) == "s→r"
    assert task_name(["A", "D", "W"], None, (2,)) == "→W"


# --- sweeps --------------------------------------------------------------------------------

def _launch(capsys, *flags):
    from shiftbench.cli import main

    code = main(["sweep", "launch", "--launcher", "dummy", "--skip-confirmation", *flags])
    return code, capsys.readouterr()


def _pairs(stdout):
    """(algorithm, source envs, test envs) of every `shiftbench train` command the dry run prints."""
    import shlex

    out = []
    for line in stdout.splitlines():
        if " -m shiftbench train " not in line:
            continue
        argv = shlex.split(line)
        value = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}
        out.append((value["--algorithm"], value.get("--source-envs"), value["--test-envs"]))
    return out


def test_sweep_launch_tasks_digits_enumerates_exactly_the_pairs(tmp_path, capsys):
    code, out = _launch(capsys, "--tasks", "digits", "--algorithms", "ERM", "DANN", "--task",
                        "uda", "--n-trials", "1", "--steps", "5", "--output-dir", str(tmp_path))
    assert code == 0
    pairs = _pairs(out.out)
    # mnist=0, mnist_m=1, synth=2, lowres=3
    expected = [("0", "1"), ("2", "0"), ("0", "3"), ("3", "0")]
    assert pairs == [(a, s, t) for a in ("ERM", "DANN") for s, t in expected]


def test_sweep_tasks_bad_name_and_conflicts(tmp_path, capsys):
    code, out = _launch(capsys, "--tasks", "office-31", "--output-dir", str(tmp_path))
    assert code != 0 and "office31" in out.err and "officehome" in out.err
    code, out = _launch(capsys, "--tasks", "digits", "--source-envs", "0", "--output-dir",
                        str(tmp_path))
    assert code != 0 and "replace" in out.err
    code, out = _launch(capsys, "--tasks", "loo", "--output-dir", str(tmp_path))
    assert code != 0 and "--datasets" in out.err


def test_spec_file_tasks_and_default_unchanged(tmp_path):
    from shiftbench.sweeps.jobs import enumerate_jobs
    from shiftbench.sweeps.spec import SweepSpec, load_spec

    path = tmp_path / "s.toml"
    path.write_text('algorithms = ["ERM"]\ntask = "uda"\ntasks = ["office31"]\nn_trials = 2\n'
                    'steps = 3\n')
    jobs = enumerate_jobs(load_spec(path), tmp_path / "o")
    assert len(jobs) == 12
    assert [(j.args.source_envs, j.args.test_envs) for j in jobs[::2]] == [
        ([0], [2]), ([1], [2]), ([2], [1]), ([0], [1]), ([1], [0]), ([2], [0])]
    # Python API; without tasks, DomainBed's held-out sets with every other domain as source
    spec = SweepSpec(datasets=["Debug28"], algorithms=["ERM"], n_trials=1, steps=2)
    spec.validate()
    default = enumerate_jobs(spec, tmp_path / "p")
    assert all(j.args.source_envs is None for j in default) and len(default) == 6
    spec = SweepSpec(datasets=["Debug28"], algorithms=["ERM"], n_trials=1, steps=2, tasks=["loo"])
    spec.validate()
    assert [(j.args.source_envs, j.args.test_envs) for j in enumerate_jobs(spec, tmp_path / "q")] \
        == [([1, 2], [0]), ([0, 2], [1]), ([0, 1], [2])]


def test_collect_prints_the_task_table_of_a_task_sweep(tmp_path, capsys):
    from shiftbench.cli import main

    out_dir = tmp_path / "sweep"
    flags = ["--tasks", "loo", "--datasets", "Debug28", "--algorithms", "ERM", "--task", "uda",
             "--n-trials", "1", "--steps", "2", "--checkpoint-freq", "1",
             "--hparams", '{"batch_size": 8}', "--output-dir", str(out_dir)]
    assert main(["sweep", "launch", "--launcher", "local", "--jobs", "1", "--threads", "1",
                 "--skip-confirmation", "--no-progress", *flags]) == 0
    capsys.readouterr()
    assert main(["collect", "--input-dir", str(out_dir)]) == 0
    text = capsys.readouterr().out
    assert "transductive target accuracy" in text
    header = next(line for line in text.splitlines() if "→0" in line)
    assert "→1" in header and "→2" in header and "Avg" in header
