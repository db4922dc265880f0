"""Time every `.venv/bin/shiftbench` command of README.md as written (full sizes), in order, in a
fresh directory: wall time, CPU time of the command and its children (user + system), exit
status, and the load average before and after each. The README's figures come from this script.

    python bench/time_readme.py [--only demo train ...] [--workdir DIR] [--output FILE]

`--only` keeps the commands whose subcommand (`demo`, `list`, `train`, `sweep`, `collect`) is
listed; later commands may need the output of earlier ones (collect needs the sweep).
"""

from __future__ import annotations

import argparse
import datetime
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
from readme_commands import readme_commands  # noqa: E402


def run(argv: list[str], cwd: Path) -> tuple[float, float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    before = os.times()
    proc.wait()
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return time.perf_counter() - start, cpu, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=None, metavar="SUBCOMMAND")
    parser.add_argument("--workdir", default=None, help="default: a new temporary directory")
    parser.add_argument("--output", default=None, help="also write the table here")
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="readme_times_"))
    workdir.mkdir(parents=True, exist_ok=True)
    script = [sys.executable, "-m", "shiftbench"]
    lines = [f"README commands as written, in {workdir}",
             f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: "
             f"{machine()}", f"{'wall':>10s} {'CPU':>10s} {'exit':>4s}  load before/after  command"]
    print("\n".join(lines), flush=True)
    for command in readme_commands():
        argv = shlex.split(command)[1:]
        if args.only and argv[0] not in args.only:
            continue
        load = os.getloadavg()[0]
        wall, cpu, code = run(script + argv, workdir)
        line = (f"{wall:9.1f}s {cpu:9.1f}s {code:4d}  {load:5.1f}/{os.getloadavg()[0]:5.1f}  "
                f"{command}")
        lines.append(line)
        print(line, flush=True)
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
