"""SyntheticStreets (v1, or v2 with `--version 2`) generation time and the small segmentation
network's per-step cost.

Measures, `--repeats` times each, with one thread: the CPU seconds (`time.process_time`, robust
to other load) and wall seconds to render one domain of `--images` images, and the CPU
milliseconds of one SegSourceOnly / SegDACS training step (batch 8, bf16 autocast) and of the
prediction of 32 images. Prints one JSON line per measurement and a summary of medians with the
load average.

Usage: OMP_NUM_THREADS=1 python bench/bench_streets.py [--version 2] [--images 600] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def timed(fn) -> tuple[float, float]:
    c, w = time.process_time(), time.time()
    fn()
    return time.process_time() - c, time.time() - w


def main() -> None:
    from shiftbench.algorithms import create_algorithm
    from shiftbench.datasets import streets, streets_v2

    p = argparse.ArgumentParser()
    p.add_argument("--version", type=int, choices=(1, 2), default=1)
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--repeats", type=int, default=3)
    ns = p.parse_args()
    torch.set_num_threads(1)
    generate = streets.generate if ns.version == 1 else streets_v2.generate
    out: dict[str, list[float]] = {}
    for r in range(ns.repeats):
        for env in ("game", "real", "virtual"):
            cpu, wall = timed(lambda env=env, r=r: generate(env, ns.images, seed=100 + r))
            out.setdefault(f"generate_{env}_cpu_s", []).append(cpu)
            out.setdefault(f"generate_{env}_wall_s", []).append(wall)
            print(json.dumps({"what": f"generate {env}", "images": ns.images, "cpu_s": cpu, "wall_s": wall}))
    x, y = torch.rand(8, 3, 64, 128), torch.randint(10, (8, 64, 128))
    for name in ("SegSourceOnly", "SegDACS"):
        alg = create_algorithm(name, (3, 64, 128), 10, 1, dataset="SyntheticStreets", setting="uda",
                               total_steps=1000)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            alg.train_step([(x, y)], [x])  # warm-up
            for _ in range(ns.repeats):
                cpu, _ = timed(lambda alg=alg: alg.train_step([(x, y)], [x]))
                out.setdefault(f"{name}_step_cpu_ms", []).append(1000 * cpu)
            alg.eval()
            with torch.inference_mode():
                for _ in range(ns.repeats):
                    cpu, _ = timed(lambda alg=alg: alg.predict(torch.rand(32, 3, 64, 128)))
                    out.setdefault("predict32_cpu_ms", []).append(1000 * cpu)
    summary = {k: round(statistics.median(v), 3) for k, v in out.items()}
    summary["loadavg_1min"] = os.getloadavg()[0]
    summary["version"] = ns.version
    print("SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
