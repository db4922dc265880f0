"""The notebook API (shiftbench.api) and the example notebook, executed with tiny sizes."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd
import pytest

import shiftbench.api as sb
from shiftbench.errors import ShiftbenchError

matplotlib.use("Agg")
NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_example_notebook_runs(tmp_path, monkeypatch):
    """Every code cell, in order, in one namespace; the `parameters` cell swapped for tiny sizes."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code_cells[0].metadata.get("tags", [])
    exec(compile(code_cells[0].source, "parameters", "exec"), namespace)  # noqa: S102
    namespace.update(DATASET="DebugVector", STEPS=3, N_TRIALS=2, HPARAMS={})
    for i, cell in enumerate(code_cells[1:], 1):
        exec(compile(cell.source, f"cell {i}", "exec"), namespace)  # noqa: S102
    frames = namespace["frames"]
    assert frames and all(isinstance(f, pd.DataFrame) for f in frames.values())
    board = frames[namespace["first"]]
    assert list(board.index) == ["ERM", "IRM"] and "Avg" in board.columns
    assert board.notna().all().all() and ((board >= 0) & (board <= 100)).all().all()
    assert namespace["fig_curves"].axes and namespace["fig_board"].axes
    headline = namespace["board"]
    assert isinstance(headline, pd.DataFrame) and set(headline["algorithm"]) == {"ERM", "IRM"}
    assert (tmp_path / "notebook_out" / "sweep").is_dir()


def test_example_notebook_ships_with_the_outputs_of_a_run():
    """Executed in order (nbconvert), every code cell has its outputs: the leaderboards as
    tables, the figures as PNG, the progress lines on stderr."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert all(c.outputs for c in code[1:]), "a code cell without stored output"
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("text/html" in o.get("data", {}) for o in outputs)  # DataFrames
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # both figures
    stderr = "".join(o.text for o in outputs if o.get("name") == "stderr")
    assert "job 1/" in stderr and "finished ERM" in stderr  # progress, visible by default


def test_api_records_tables_and_errors(tmp_path):
    out = tmp_path / "t"
    records = sb.run_trial("DebugVector", "ERM", test_envs=[1], steps=3, output_dir=out)
    assert [r["step"] for r in records] == [0, 2]
    read = sb.load_records(out)  # read back as written (plus the folder it was read from)
    assert [{k: v for k, v in r.items() if k != "_job_dir"} for r in read] == records
    assert sb.run_trial("DebugVector", "ERM", test_envs=[1], steps=3, output_dir=out) == records
    frame = sb.records_frame(out)
    assert len(frame) == 2 and "env1_out_acc" in frame.columns
    with pytest.raises(ShiftbenchError, match="valid arguments: .*steps"):
        sb.run_trial("DebugVector", "ERM", output_dir=out, stepz=3)
    with pytest.raises(ShiftbenchError, match="valid arguments: .*n_trials"):
        sb.run_sweep(tmp_path / "s", datasets=["DebugVector"], n_trails=2)
    with pytest.raises(ShiftbenchError, match="unknown table"):
        sb.plot_leaderboard(records, title="no such table")


def test_run_trial_with_loggers_and_callbacks(tmp_path):
    seen = []

    class Spy:
        def step(self, step, losses):
            seen.append(step)

    sb.run_trial("DebugVector", "ERM", steps=3, output_dir=tmp_path / "t", loggers=["csv"],
                 callbacks=[Spy()])
    assert seen == [0, 1, 2] and (tmp_path / "t" / "metrics" / "steps.csv").is_file()
