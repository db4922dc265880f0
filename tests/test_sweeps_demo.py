"""`shiftbench demo` in a tiny configuration (one held-out domain, one step)."""

from __future__ import annotations

import json

import pytest

from shiftbench.cli import main
from shiftbench.demo import plan
from shiftbench.trial_record import auto_precision


def test_plan_groups_by_first_supported_task_and_reports_missing():
    by_task, missing = plan(["DeepCORAL", "ERM", "NoSuchAlgorithm"])
    # ERM runs in dg and, as the source-only baseline, in every other setting of the plan
    assert by_task["dg"][0] == "ERM" and by_task["uda"] == ["ERM", "DeepCORAL"]
    assert list(by_task) == ["dg", "uda"]  # in the order of the settings, not of the names
    assert missing == ["NoSuchAlgorithm"]
    # CCSA supports dg too, but the demo runs it in its paper's main setting
    assert plan(["CCSA", "SagNet"])[0] == {"dg": ["SagNet"], "sda": ["CCSA"]}
    assert auto_precision() in ("fp32", "bf16")


@pytest.fixture
def unregister_demo_dataset():
    """The demo registers DigitsDemo in this process; keep other tests' registry unchanged.
    `scratch` also forgets shiftbench.demo_data when the demo first imported it, so a later
    import registers DigitsDemo again (removing the name alone left the module imported and
    DigitsDemo unknown to every later test of the process that needed it)."""
    from shiftbench.datasets.base import DATASETS

    with DATASETS.scratch():
        yield


@pytest.mark.slow
def test_tiny_demo_runs_and_reports(tmp_path, capsys, unregister_demo_dataset):
    code = main(["demo", "--output-dir", str(tmp_path), "--steps", "2", "--n-trials", "1",
                 "--algorithms", "ERM", "Missing", "--held-out", "mnist", "--no-progress",
                 "--precision", "bf16", "--lr", "0.002", "--cnn-width", "16"])
    out = " ".join(capsys.readouterr().out.split())  # the header is wrapped at 80 columns
    assert "not registered in this installation, skipped: Missing" in out
    assert "16x16 px" in out and "1 trial(s) run, 0 failed" in out
    assert "2 steps of batch 16" in out and "2 evaluations" in out and "bf16 precision" in out
    assert "lr 0.002" in out and "width 16 (16-32-32-32 channels" in out
    records = list((tmp_path / "sweep").glob("*/results.jsonl"))
    assert len(records) == 1
    last = json.loads(records[0].read_text().splitlines()[-1])
    assert last["args"]["precision"] == "bf16" and last["hparams"]["lr"] == 0.002
    assert last["hparams"]["cnn_width"] == 16
    assert last["cpu_time"] > 0
    assert code == 0
    if "the results package is not installed" not in out:
        assert "<html" in (tmp_path / "report.html").read_text().lower()
        assert "ERM" in (tmp_path / "leaderboard.txt").read_text()
