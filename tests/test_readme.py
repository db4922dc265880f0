"""Every `.venv/bin/shiftbench` command of README.md runs as written, in order, in a fresh
directory, with tiny sizes (`readme_commands.SMALL`); bench/time_readme.py times them at full size."""

from __future__ import annotations

import subprocess
import sys

import pytest
from readme_commands import readme_commands, small


def test_readme_commands_are_found():
    commands = readme_commands()
    assert any(c.split()[1] == "demo" for c in commands)
    assert any("sweep launch" in c and "--skip-confirmation" in c for c in commands)
    assert [c.split()[1] for c in commands] == [
        "demo", "list", "list", "train", "sweep", "sweep", "collect", "collect"]


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path):
    for command in readme_commands():
        argv = small(command)
        proc = subprocess.run([sys.executable, "-m", "shiftbench", *argv], cwd=tmp_path,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
        assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-2000:])
        if argv[0] == "collect" and "--format" not in argv:
            assert "vs ERM" in proc.stdout
    assert (tmp_path / "out" / "demo" / "report.html").exists()
    assert (tmp_path / "out" / "sweep_report.html").exists()
    assert list((tmp_path / "out" / "trial").glob("results.jsonl"))
