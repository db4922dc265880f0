"""Time every snippet of README.md as written (full sizes), in order, in a fresh directory: the
shell commands, the files it asks you to save, the Python blocks and the plug-in author's
pytest. For each: wall time; CPU time (user + system of the command and the children it waited
for; for `demo` and `sweep launch` also the summed `cpu_time` of the trials it finished, which
run in processes forked by a forkserver that this rusage misses); exit status; the load average
before and after. The README's figures come from this script.

    python bench/time_readme.py [--only demo train python ...] [--workdir DIR] [--fresh-home]
                                [--output FILE]

`--only` keeps the snippets whose subcommand (`demo`, `list`, `train`, `sweep`, `collect`,
`pytest`) or kind (`python`) is listed (files are always written); later snippets may need the
output of earlier ones. `--fresh-home` runs with an empty HOME (no data cache: a first run).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cli import machine  # noqa: E402
from readme_commands import readme_snippets  # noqa: E402


def trials_cpu(workdir: Path, since: float) -> float:
    """Summed `cpu_time` of the last record of every trial written under `workdir` since `since`."""
    total = 0.0
    for path in workdir.rglob("results.jsonl"):
        if path.stat().st_mtime < since:
            continue
        try:
            total += float(json.loads(path.read_text().splitlines()[-1]).get("cpu_time", 0.0))
        except (OSError, ValueError, IndexError):
            continue
    return total


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, float, int]:
    """(wall, CPU of the process tree it waited for, CPU of the trials it finished, exit)."""
    since = time.time()
    start = time.perf_counter()
    before = os.times()
    proc = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          stdin=subprocess.DEVNULL, env=env)
    after = os.times()
    own = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return time.perf_counter() - start, own, trials_cpu(cwd, since), proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, metavar="SUBCOMMAND")
    parser.add_argument("--workdir", default=None, help="default: a new temporary directory")
    parser.add_argument("--fresh-home", action="store_true", help="an empty HOME: no data cache")
    parser.add_argument("--output", default=None, help="also write the table here")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="readme_times_"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MPLBACKEND="Agg")
    if args.fresh_home:
        env["HOME"] = tempfile.mkdtemp(prefix="readme_home_")
        env.pop("XDG_CACHE_HOME", None)
        env.pop("SHIFTBENCH_CACHE", None)
    script = Path(sys.executable).parent / "shiftbench"
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "shiftbench"]
    lines = [f"README snippets as written, in {workdir}" + (" (fresh HOME)" if args.fresh_home else ""),
             f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: "
             f"{machine()}",
             f"{'wall':>9s} {'CPU':>8s} {'+trials':>8s} {'exit':>4s}  load before/after  snippet"]
    print("\n".join(lines), flush=True)
    for snippet in readme_snippets():
        if snippet.kind == "file":
            (workdir / snippet.name).write_text(snippet.text, encoding="utf-8")
            continue
        if snippet.kind == "python":
            name, argv = "python", [sys.executable, "-c", snippet.text]
            label = "python: " + snippet.text.strip().splitlines()[0]
        elif snippet.text.startswith(".venv/bin/python -m pytest"):
            name, argv = "pytest", [sys.executable, *shlex.split(snippet.text)[1:]]
            label = snippet.text
        else:
            words = shlex.split(snippet.text)[1:]
            name, argv, label = words[0], prefix + words, snippet.text
        if args.only and name not in args.only:
            continue
        load = os.getloadavg()[0]
        wall, own, trials, code = run(argv, workdir, env)
        # trials forked by a forkserver (demo, sweep launch) are missed by `own`; in-process
        # trials (train, the Python API, pytest) are in it already
        forked = f"{trials:7.1f}s" if name in ("demo", "sweep") else f"{'-':>8s}"
        line = (f"{wall:8.1f}s {own:7.1f}s {forked} {code:4d}  {load:5.1f}/"
                f"{os.getloadavg()[0]:5.1f}  {label}")
        lines.append(line)
        print(line, flush=True)
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
