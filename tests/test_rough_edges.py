"""Rough edges a user hits: piped output closed early, launchers without their resources."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("argv", [["data", "--json"], ["data", "download"]])
def test_closed_pipe_exits_quietly(argv):
    """`shiftbench ... | head`: the reader is gone before anything is written (its end of the
    pipe is closed before the process starts), so every write fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "shiftbench", *argv], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""
