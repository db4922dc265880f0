"""Sweep throughput: wall time of a 12-job sweep with the local launcher vs. the ideal.

Ideal = (sum of the trials' own compute time) / (jobs at once), where a trial's own time is the
`wall_time` of its last record (the trainer's clock: building the data and model, training,
evaluating). The gap is what the sweep machinery costs: process start-up and imports, the
launcher's polling, the lock/heartbeat, and idle slots at the end.

    OMP_NUM_THREADS=1 python bench/bench_sweep.py [--steps 40] [--jobs 2] [--dataset DigitsDemo]
        [--start-method forkserver|subprocess]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="DigitsDemo")
    p.add_argument("--algorithm", default="ERM")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--n-trials", type=int, default=3)
    p.add_argument("--start-method", default="forkserver", choices=("forkserver", "subprocess"))
    p.add_argument("--keep", default=None, help="keep the sweep in this directory")
    ns = p.parse_args()

    from shiftbench.sweeps.jobs import enumerate_jobs
    from shiftbench.sweeps.launchers import LaunchOptions, get_launcher
    from shiftbench.sweeps.spec import SweepSpec

    imports: tuple[str, ...] = ()
    if ns.dataset == "DigitsDemo":
        import shiftbench.demo_data  # noqa: F401 - registers DigitsDemo

        imports = ("shiftbench.demo_data",)
    out = Path(ns.keep or tempfile.mkdtemp(prefix="bench_sweep_"))
    spec = SweepSpec(datasets=[ns.dataset], algorithms=[ns.algorithm], n_trials=ns.n_trials,
                     steps=ns.steps, checkpoint_freq=ns.steps, single_test_envs=True,
                     hparams={"batch_size": 16})
    spec.validate()
    jobs = enumerate_jobs(spec, out, imports=imports)
    # Build the dataset cache once, outside the measurement (a fresh machine pays it once).
    from shiftbench.datasets import get_dataset_class

    get_dataset_class(ns.dataset)(None, [0], {})
    start = time.time()
    result = get_launcher("local")(jobs, LaunchOptions(n_parallel=ns.jobs, threads=1,
                                                       progress=False,
                                                       start_method=ns.start_method))
    wall = time.time() - start
    own = []
    for job in jobs:
        lines = (job.dir / "results.jsonl").read_text().splitlines()
        own.append(json.loads(lines[-1])["wall_time"])
    ideal = sum(own) / ns.jobs
    load = os.getloadavg()
    report = {
        "jobs": len(jobs), "succeeded": result.succeeded, "failed": len(result.failed),
        "parallel": ns.jobs, "steps": ns.steps, "start_method": ns.start_method, "dataset": ns.dataset,
        "sweep_wall_s": round(wall, 1), "sum_trial_s": round(sum(own), 1),
        "mean_trial_s": round(sum(own) / len(own), 1), "ideal_wall_s": round(ideal, 1),
        "overhead_pct": round(100 * (wall / ideal - 1), 1),
        "per_job_overhead_s": round((wall * ns.jobs - sum(own)) / len(jobs), 2),
        "loadavg_1_5_15": [round(x, 2) for x in load], "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=1))
    if not ns.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
