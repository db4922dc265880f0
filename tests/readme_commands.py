"""The snippets of README.md, in order, and their small versions (tests/test_readme.py walks
them; bench/time_readme.py times the shell commands at full size).

A snippet is a shell line of a code block that runs the project (`.venv/bin/shiftbench ...`,
`.venv/bin/python -m pytest <file>.py`; the project's own test-suite run is not one), a fenced
Python block that starts with `# <name>.py` (a file the reader saves), or any other fenced
Python block (code the reader runs)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
PREFIX = ".venv/bin/shiftbench "
SHELL_PREFIXES = (PREFIX, ".venv/bin/python -m pytest ")
# Tiny sizes for the walk through (tests/test_readme.py): same flags, seconds instead of minutes.
SMALL = {
    "--steps": "2", "--n-trials": "1", "--n-hparams": "1",
}
DEMO_SMALL = ["--steps", "2", "--n-trials", "1", "--held-out", "mnist", "--algorithms", "ERM"]
# The same for the Python blocks: keyword arguments rewritten.
PYTHON_SMALL = {"steps": "2", "n_trials": "1"}


@dataclass
class Snippet:
    kind: str  # "shell", "file" or "python"
    text: str
    name: str = ""  # the file name of a "file" snippet


def readme_snippets(path: Path = README) -> list[Snippet]:
    """Every snippet, in the order of the README."""
    out: list[Snippet] = []
    fence: str | None = None
    block: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text.startswith("```"):
            if fence is None:
                fence, block = text[3:].strip(), []
                continue
            if fence == "python" and block:
                first = block[0].strip()
                named = re.fullmatch(r"#\s*(\w+\.py)", first)
                out.append(Snippet("file", "\n".join(block) + "\n", named.group(1)) if named
                           else Snippet("python", "\n".join(block) + "\n"))
            fence = None
            continue
        if fence is not None:
            block.append(line)
        if (fence is not None or line.startswith("    ")) and text.startswith(SHELL_PREFIXES):
            if text.startswith(PREFIX) or re.search(r"\w+\.py\b", text):  # not the suite's run
                out.append(Snippet("shell", re.sub(r"\s+#.*$", "", text)))
    return out


def readme_commands(path: Path = README) -> list[str]:
    """The shell lines that call the console script."""
    return [s.text for s in readme_snippets(path) if s.kind == "shell" and s.text.startswith(PREFIX)]


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


def small_python(code: str) -> str:
    """A Python snippet with `PYTHON_SMALL` keyword arguments."""
    for name, value in PYTHON_SMALL.items():
        code = re.sub(rf"\b{name}=\d+", f"{name}={value}", code)
    return code
