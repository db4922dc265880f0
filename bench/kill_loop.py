"""Fault injection: SIGKILL a trial at random moments, relaunch the same command until it
finishes, and check that its records equal an uninterrupted run's (timings aside).

Usage: python bench/kill_loop.py [--kills 25] [--seed 0]
Each round starts `python -m shiftbench train ...` and kills it after a random delay drawn
uniformly from [0, the uninterrupted run's wall time]; kills landing in any phase (start-up,
a step, evaluation, record or checkpoint writing) are all exercised over enough rounds.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shiftbench.trainer import TIMING_KEYS

COMMAND = ["train", "--dataset", "DebugVector", "--algorithm", "ERM", "--test-envs", "0",
           "--steps", "60", "--checkpoint-freq", "4", "--hparams", '{"batch_size": 16}',
           "--threads", "1"]


def stable(path: Path) -> list[dict]:
    records = [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]
    for r in records:
        for k in TIMING_KEYS:
            r.pop(k, None)
        r["args"].pop("output_dir")
    return records


def launch(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shiftbench", *COMMAND, "--output-dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description="SIGKILL a trial repeatedly; compare records")
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ref = Path(tmp) / "reference"
        start = time.perf_counter()
        launch(ref).wait()
        full = time.perf_counter() - start
        killed = Path(tmp) / "killed"
        kills = relaunches = 0
        while kills < args.kills:
            if (killed / "done").exists():  # finished: start a fresh victim
                equal = stable(killed) == stable(ref)
                print(json.dumps({"finished_after_kills": kills, "equal_to_reference": equal}))
                if not equal:
                    raise SystemExit("MISMATCH")
                subprocess.run(["rm", "-rf", str(killed)], check=True)
            proc = launch(killed)
            relaunches += 1
            try:
                proc.wait(timeout=rng.uniform(0.0, full))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
        while not (killed / "done").exists():
            launch(killed).wait()
        equal = stable(killed) == stable(ref)
        print(json.dumps({"kills": kills, "launches": relaunches, "uninterrupted_wall_s": full,
                          "final_equal_to_reference": equal}))
        if not equal:
            raise SystemExit("MISMATCH")


if __name__ == "__main__":
    main()
