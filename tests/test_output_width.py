"""What the command line prints fits 80 columns, and output that is not a terminal is plain lines
(no carriage returns, no redrawn bars): the trial's checkpoint table and progress bar, the sweep's
job list, status table and progress. (The README walk-through, tests/test_readme.py, checks the
demo's and every README command's output the same way.)"""

from __future__ import annotations

import io
import re

from shiftbench.progress import JobLines, ProgressReporter
from shiftbench.reporting import TableLog, band_lines, column_name


def assert_plain_80(text: str) -> None:
    assert "\r" not in text and "\x1b[" not in text, "a redrawn bar in plain output"
    long = [line for line in text.splitlines() if len(line) > 80]
    assert not long, long


def test_checkpoint_table_fits_80_columns_with_many_environments():
    """6 environments (DomainNet, RotatedMNIST) plus extra losses: the columns that do not fit
    continue on an indented line, aligned with their header."""
    record = {"step": 4999, "args": {"test_envs": [0]}, "env0_in_acc": 0.8361,
              **{f"env{i}_out_acc": 0.5 + i / 100 for i in range(6)},
              "loss": 0.41234, "disc_loss": 0.693, "gen_loss": 1.2, "penalty_weight": 10.0,
              "step_time": 0.3321, "eval_time": 12.5, "mem_gb": 0.1, "wall_time": 1.0}
    lines: list[str] = []
    log = TableLog(lines.append)
    log.checkpoint(record)
    log.checkpoint({**record, "step": 5000})
    assert_plain_80("\n".join(lines))
    assert lines[0].startswith("in<i>/out<i>") and "held out: 0" in lines[0]
    header = [ln for ln in lines[1:] if "in0" in ln or "s/step" in ln]
    assert len(header) == 2  # two bands, printed once (the columns did not change)
    assert "0.8361" in "\n".join(lines) and "mem_gb" not in "\n".join(lines)
    assert lines[2].startswith("  ") and lines[4].startswith("  ")  # the second bands
    assert len(lines) == 1 + 2 + 2 + 2  # legend, header bands, two rows of two bands


def test_column_names_and_bands():
    assert column_name("env0_in_acc") == "in0" and column_name("env12_out_acc") == "out12"
    assert column_name("env2_out_miou") == "out2 mIoU" and column_name("step_time") == "s/step"
    assert len(column_name("a_very_long_loss_name")) == 12
    lines = band_lines(["x"] * 20, [6] * 20, 80)
    assert all(len(line) <= 80 for line in lines) and len(lines) == 2


def test_progress_bar_is_at_most_80_columns_and_keeps_the_loss(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: still 80
    out = io.StringIO()
    p = ProgressReporter(out, interactive=True)
    p.start({"algorithm": "DomainAdversarialNeuralNetworkPlusPlus", "dataset": "OfficeHome",
             "test_envs": ["Art", "Clipart"], "steps": 5000, "checkpoint_freq": 300})
    for step in range(3):
        p.step(step, {"loss": 0.43215, "penalty": 2.0})
    frames = [f.strip("\n") for f in re.split(r"[\r\n]", out.getvalue()) if f.strip()]
    assert frames and all(len(f) <= 80 for f in frames), frames
    assert "loss 0.4321" in frames[-1] or "loss 0.4322" in frames[-1], frames[-1]
    p.end()


def test_sweep_progress_off_a_terminal_is_plain_lines():
    clock = iter([0.0, 5.0, 40.0, 41.0]).__next__
    out = io.StringIO()
    bar = JobLines(3, "sweep", out, interval=30.0, clock=clock)
    bar.update(1)  # 5 s: within the interval, quiet
    bar.set_postfix(running=1, failed=0)
    bar.update(1)  # 40 s: a line
    bar.write("FAILED (1) a job")
    bar.update(1)  # the last: always a line
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == ["sweep: 2/3 jobs ended in 40 s, ETA 20 s, running 1, failed 0",
                     "FAILED (1) a job", "sweep: 3/3 jobs ended in 41 s, running 1, failed 0"]


def test_sweep_launch_piped_fits_80_columns_in_plain_lines(tmp_path, capsys):
    from shiftbench.cli import main

    code = main(["sweep", "launch", "--datasets", "DebugVector", "--algorithms", "ERM", "CORAL",
                 "--n-trials", "1", "--steps", "2", "--single-test-envs", "--hparams",
                 '{"batch_size": 16, "mlp_width": 32}', "--output-dir", str(tmp_path / "sweep"),
                 "--skip-confirmation"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert_plain_80(out.out)
    assert_plain_80(out.err)
    assert 'hparams of every job: {"batch_size": 16, "mlp_width": 32}' in out.out
    assert "not_launched" in out.out and "DebugVector CORAL dg test_envs=[2]" in out.out
    assert "sweep: 6/6 jobs ended" in out.err
    code = main(["sweep", "status", "--datasets", "DebugVector", "--algorithms", "ERM", "CORAL",
                 "--n-trials", "1", "--steps", "2", "--single-test-envs", "--hparams",
                 '{"batch_size": 16, "mlp_width": 32}', "--output-dir", str(tmp_path / "sweep")])
    out = capsys.readouterr()
    assert code == 0 and "6/6 done (100%)" in out.out
    assert_plain_80(out.out)
