"""The shell commands of README.md that call the console script, and their small versions."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
PREFIX = ".venv/bin/shiftbench "
# Tiny sizes for the walk through (tests/test_readme.py): same flags, seconds instead of minutes.
SMALL = {
    "--steps": "2", "--n-trials": "1", "--n-hparams": "1", "--datasets": "Debug28",
}
DEMO_SMALL = ["--steps", "2", "--n-trials", "1", "--held-out", "mnist", "--algorithms", "ERM"]


def readme_commands(path: Path = README) -> list[str]:
    """Every line of a code block (fenced or indented) that starts with `.venv/bin/shiftbench`."""
    out, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        text = line.strip()
        if (fenced or line.startswith("    ")) and text.startswith(PREFIX):
            out.append(re.sub(r"\s+#.*$", "", text))
    return out


def small(command: str) -> list[str]:
    """argv after the script, with `SMALL` sizes (a flag's values up to the next flag replaced)."""
    argv = shlex.split(command)[1:]
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in SMALL:
            out.append(SMALL[argv[i]])
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                i += 1
            continue
        i += 1
    if out[:1] == ["demo"]:
        out += DEMO_SMALL
    return out
