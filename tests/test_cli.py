"""The command line: help, listing, training, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shiftbench.cli import main


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shiftbench", *argv], capture_output=True,
                          text=True)


def test_python_m_and_list(capsys):
    proc = run("list", "algorithms", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert any(r["algorithm"] == "ERM" and "dg" in r["settings"] for r in rows)
    assert main(["list", "datasets", "*MNIST"]) == 0
    out = capsys.readouterr().out
    assert "ColoredMNIST" in out and "RotatedMNIST" in out and "Debug28" not in out


def test_train_with_domainbed_aliases(tmp_path, capsys):
    code = main(["train", "--dataset", "DebugVector", "--algorithm", "ERM", "--test_envs", "1",
                 "--steps", "3", "--checkpoint_freq", "2", "--output_dir", str(tmp_path / "o"),
                 "--hparams", '{"batch_size": 4}', "--task", "domain_generalization"])
    assert code == 0
    assert "final: step 2" in capsys.readouterr().out
    assert (tmp_path / "o" / "done").exists()


@pytest.mark.parametrize("argv,expected", [
    (["--algorithm", "ERN"], "unknown algorithm 'ERN' (did you mean 'ERM'?)"),
    (["--dataset", "rotatedmnist"], "did you mean 'RotatedMNIST'?"),
    (["--test-envs", "7"], "test environment 7 is out of range"),
    (["--test-envs", "nope"], "unknown environment of DebugVector 'nope'"),
    (["--hparams", "{lr: 1}"], "--hparams is not valid JSON"),
    (["--hparams", "[1]"], "must be a JSON object"),
    (["--hparams", '{"learning_rate": 0.1}'], "unknown hparam for ERM 'learning_rate'"),
    (["--hparams", '{"lr": "fast"}'], "hparam 'lr' must be of type float"),
    (["--hparams", '{"batch_size": 0}'], "hparam 'batch_size' must lie in [1, inf]"),
    (["--hparams", '{"batch_size": 2.5}'], "must be of type int"),
    (["--task", "tta"], "does not support --task tta"),
    (["--task", "magic"], "unknown task 'magic'"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--holdout-fraction", "1.5"], "--holdout-fraction must lie in [0, 1)"),
    (["--import", "no_such_module_xyz"], "cannot import it"),
])
def test_bad_input_is_a_clear_error(tmp_path, capsys, argv, expected):
    out = tmp_path / "never"
    code = main(["train", "--dataset", "DebugVector", "--steps", "2", "--output-dir", str(out),
                 *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err, err
    assert "Traceback" not in err
    assert not out.exists() or not (out / "results.jsonl").exists()


def test_unknown_subcommand_exits_nonzero():
    proc = run("frobnicate")
    assert proc.returncode != 0 and "invalid choice" in proc.stderr
