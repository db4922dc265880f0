"""`shiftbench demo` in a tiny configuration (one held-out domain, one step)."""

from __future__ import annotations

import pytest

from shiftbench.cli import main
from shiftbench.demo import DEMO_ALGORITHMS, plan


def test_plan_groups_by_first_supported_task_and_reports_missing():
    by_task, missing = plan(["ERM", "DeepCORAL", "NoSuchAlgorithm"])
    assert by_task["dg"][0] == "ERM" and by_task["uda"] == ["DeepCORAL"]
    assert missing == ["NoSuchAlgorithm"]
    assert "ERM" in DEMO_ALGORITHMS


@pytest.fixture
def unregister_demo_dataset():
    """The demo registers DigitsDemo in this process; keep other tests' registry unchanged."""
    from shiftbench.datasets.base import DATASETS

    had = "DigitsDemo" in DATASETS
    yield
    if not had:
        DATASETS._items.pop("DigitsDemo", None)


@pytest.mark.slow
def test_tiny_demo_runs_and_reports(tmp_path, capsys, unregister_demo_dataset):
    code = main(["demo", "--output-dir", str(tmp_path), "--steps", "1", "--n-trials", "1",
                 "--algorithms", "ERM", "Missing", "--held-out", "mnist", "--no-progress"])
    out = capsys.readouterr().out
    assert "not registered in this installation, skipped: Missing" in out
    assert "16x16 px" in out and "1 trial(s) run, 0 failed" in out
    records = list((tmp_path / "sweep").glob("*/results.jsonl"))
    assert len(records) == 1
    assert code == 0
    if "`shiftbench collect` is not available" not in out:  # the results package is installed
        assert "<html" in (tmp_path / "report.html").read_text().lower()
        assert "ERM" in (tmp_path / "leaderboard.txt").read_text()
