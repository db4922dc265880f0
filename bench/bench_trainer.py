"""Trainer throughput: steps/s (training only and end to end) and the share of wall time spent
in evaluation, for ERM at DomainBed's small-image defaults (batch 64 per domain, checkpoint every
100 steps, 300 steps, test env 0), on two configurations:

1. `cmnist-shape`: evaluation-heavy, shaped like ColoredMNIST (3 environments x 5,000 examples
   of 2x28x28, 2 classes; synthetic data with a class-dependent offset, as DomainBed's harness);
2. `rotated-mnist`: RotatedMNIST from the 5,000 bundled digits (compute dominates).

Each configuration runs in float32 and with `--precision bf16` (bfloat16 autocast).

Usage: python bench/bench_trainer.py [--repeats 3] [--threads 2] [--configs cmnist-shape rotated-mnist]
       [--precisions fp32 bf16]
Prints one JSON line per run and a median summary per configuration. Run it on an idle machine;
on a shared one, compare `cpu_steps_per_s` (steps per CPU second of the trial's process, from the
records' `cpu_time`), which other processes' load disturbs much less than wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time

import torch

from shiftbench.datasets import MultiDomainDataset, TensorDomain, register_dataset
from shiftbench.trainer import TrainArgs, train


@register_dataset
class BenchCMNISTShape(MultiDomainDataset):
    """3 x 5,000 random 2x28x28 images, 2 classes, +0.1*(env+1) on channel y (DomainBed harness)."""

    ENVIRONMENTS = ("0", "1", "2")
    INPUT_SHAPE = (2, 28, 28)
    NUM_CLASSES = 2
    CHECKPOINT_FREQ = 100

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        g = torch.Generator().manual_seed(0)
        self.datasets = []
        for e in range(3):
            x = torch.rand((5000, 2, 28, 28), generator=g)
            y = torch.randint(2, (5000,), generator=g)
            x[torch.arange(5000), y] += 0.1 * (e + 1)
            self.datasets.append(TensorDomain(x, y, str(e)))


CONFIGS = {"cmnist-shape": "BenchCMNISTShape", "rotated-mnist": "RotatedMNIST"}


def run_once(dataset: str, steps: int, precision: str = "fp32") -> dict:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        records = train(TrainArgs(dataset=dataset, algorithm="ERM", test_envs=[0], steps=steps,
                                  checkpoint_freq=100, output_dir=out, skip_model_save=True,
                                  precision=precision),
                        log=lambda m: None, progress=False)
        wall = time.perf_counter() - start
    # step_time is a per-checkpoint mean over the steps since the previous checkpoint
    bounds = [-1] + [r["step"] for r in records]
    train_s = sum(r["step_time"] * (bounds[i + 1] - bounds[i]) for i, r in enumerate(records))
    eval_s = sum(r["eval_time"] for r in records)
    cpu_s = records[-1]["cpu_time"]
    return {"dataset": dataset, "precision": precision, "steps": steps, "wall_s": wall, "train_s": train_s,
            "eval_s": eval_s, "steps_per_s_end_to_end": steps / wall,
            "steps_per_s_training": steps / train_s, "eval_share": eval_s / wall,
            "cpu_s": cpu_s, "cpu_steps_per_s": steps / cpu_s,
            "test_acc": records[-1]["env0_in_acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({"machine": platform.processor() or platform.machine(),
                      "torch": torch.__version__, "threads": args.threads}))
    summary = {}
    for _ in range(args.repeats):
        for name in args.configs:  # interleaved, so drifting load hits all alike
            for precision in args.precisions:
                result = run_once(CONFIGS[name], args.steps, precision)
                print(json.dumps({"config": name, **result}), flush=True)
                summary.setdefault(f"{name} {precision}", []).append(result)
    for name, runs in summary.items():
        med = {k: statistics.median(r[k] for r in runs) for k in
               ("steps_per_s_end_to_end", "steps_per_s_training", "eval_share", "wall_s",
                "cpu_steps_per_s", "test_acc")}
        print(json.dumps({"config": name, "median_of": len(runs), **med}))


if __name__ == "__main__":
    main()
