"""How long the console script takes to answer: `--help`, an unknown algorithm, `list algorithms`
(targets: under 0.5 s, 0.5 s and 1 s), plus `list datasets`, `collect` on a small sweep, `data
list`, `sweep status` and the first line of `train` (which does import torch), for comparison.

Each command runs `--repeats` times as a fresh process (`.venv/bin/shiftbench` next to the
interpreter, else `python -m shiftbench`); reported: median wall time, median CPU time (user +
system of the child), the load average before and after, and the machine. Whether torch was
imported is checked separately by tests/test_cli_fast.py.

    python bench/bench_cli.py [--repeats 5] [--output bench/results/cli_<date>_<host>.txt]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"--help": 0.5, "unknown algorithm": 0.5, "list algorithms": 1.0}


def command_prefix() -> list[str]:
    script = Path(sys.executable).with_name("shiftbench")
    return [str(script)] if script.exists() else [sys.executable, "-m", "shiftbench"]


def small_sweep(root: Path) -> Path:
    """Records of 3 algorithms x 3 held-out environments x 2 trials, for `collect`."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from results_helpers import make_record, write_trial

    for a, alg in enumerate(("ERM", "CORAL", "DANN")):
        for trial in (0, 1):
            for env in range(3):
                write_trial(root, f"{alg}_{trial}_{env}",
                            [make_record(s, 0, [env], trial_seed=trial, algorithm=alg,
                                         acc=0.5 + 0.1 * a + 0.01 * s) for s in (0, 5)])
    return root


def time_once(argv: list[str]) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system of the child) and exit code of one run."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None, help="also write the table here")
    args = parser.parse_args()
    exe = command_prefix()
    tmp = Path(tempfile.mkdtemp(prefix="bench_cli_"))
    sweep = small_sweep(tmp / "sweep")
    commands = {
        "--help": ["--help"],
        "unknown algorithm": ["train", "--algorithm", "NOPE", "--steps", "1",
                              "--output-dir", str(tmp / "train")],
        "list algorithms": ["list", "algorithms"],
        "list datasets": ["list", "datasets"],
        "collect (18 trials)": ["collect", "--input-dir", str(sweep), "--quiet"],
        "data list": ["data", "list", "--data-dir", str(tmp)],
        "sweep status (DebugVector x 5 algorithms)": [
            "sweep", "status", "--datasets", "DebugVector", "--algorithms", "ERM", "CORAL", "DANN",
            "IRM", "Mixup", "--n-trials", "2", "--output-dir", str(tmp / "status")],
        "train --help": ["train", "--help"],
        "unknown algorithm, with --import (imports torch)": [
            "train", "--algorithm", "NOPE", "--import", "json", "--steps", "1"],
    }
    load_before = os.getloadavg()
    rows = []
    for name, argv in commands.items():
        runs = [time_once(exe + argv) for _ in range(args.repeats)]
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        codes = sorted({r[2] for r in runs})
        target = TARGETS.get(name)
        verdict = "" if target is None else ("ok" if wall < target else "OVER") + f" (< {target} s)"
        rows.append(f"{name:50s} {wall:7.3f} {cpu:7.3f}  exit {codes}  {verdict}")
    load_after = os.getloadavg()
    shutil.rmtree(tmp, ignore_errors=True)
    lines = [f"shiftbench console script, median of {args.repeats} fresh processes",
             f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: "
             f"{machine()}",
             f"load average (1/5/15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
             f"after: {', '.join(f'{x:.2f}' for x in load_after)}",
             f"{'command':50s} {'wall s':>7s} {'CPU s':>7s}", *rows]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
