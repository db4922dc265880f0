"""Unsupervised DA methods against source-only ERM, through the trainer, on identical splits.

Every algorithm runs `shiftbench.trainer.train` with `--task uda` on a two-domain problem
(environment 0 = labeled source, environment 1 = target: half of its training split is the
unlabeled stream, the rest is the evaluation set), for each seed (trial seed = seed, so splits
and batches are the same for every algorithm at a given seed). Prints a markdown table of target
accuracy (mean +- std over seeds) with the paired difference to ERM.

Problems:
* `moons` (default): methods.md section 22.1 DGP-A, two interleaving half-moons (noise 0.1),
  the target rotated by `--angle` degrees about the centroid; MLP featurizer.
* `digits`: the built-in Digits dataset restricted to `--source` -> `--target` (default
  mnist -> mnist_m), small CNN featurizer; needs minutes per trial on a CPU.

    python bench/bench_adaptation.py --seeds 0 1 2 --steps 600
    python bench/bench_adaptation.py --problem digits --steps 300 --algorithms ERM DANN CDAN
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from shiftbench.algorithms import get_algorithm_class, list_algorithms
from shiftbench.datasets.base import MultiDomainDataset, TensorDomain, register_dataset
from shiftbench.trainer import TrainArgs, train

OURS = ["CDAN", "CDANE", "BSP", "ADDA", "DAN", "MCC", "MCD", "MDD", "AdaBN", "GAM"]


def rotated_moons(n: int, angle_deg: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` points of two half-moons (noise 0.1), centred, rotated by `angle_deg` degrees."""
    rs = np.random.RandomState(seed)
    y = rs.randint(0, 2, n)
    t = rs.uniform(0, np.pi, n)
    x = np.where(y[:, None] == 0, np.stack([np.cos(t), np.sin(t)], 1),
                 np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
    x = x + 0.1 * rs.randn(n, 2) - np.array([0.5, 0.25])
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return torch.tensor(x @ rot.T, dtype=torch.float32), torch.tensor(y, dtype=torch.long)


def register_problem(args) -> str:
    """Register the two-domain dataset of `args` and return its name."""
    if args.problem == "moons":
        angle, n = args.angle, args.n_per_domain

        class Moons(MultiDomainDataset):
            """Source moons and target moons rotated by `angle` degrees."""

            ENVIRONMENTS = ("source", f"rotated{angle:g}")
            INPUT_SHAPE = (2,)
            NUM_CLASSES = 2
            N_STEPS = 500
            CHECKPOINT_FREQ = 100

            def __init__(self, root, test_envs, hparams):
                super().__init__(root, test_envs, hparams)
                self.datasets = [TensorDomain(*rotated_moons(n, 0.0, 1), name="source"),
                                 TensorDomain(*rotated_moons(n, angle, 2), name="target")]

        register_dataset(Moons, name="BenchMoons")
        return "BenchMoons"

    from shiftbench.datasets.digits import Digits, build_digits

    cache: dict[str, list[TensorDomain]] = {}
    pair = (args.source, args.target)
    for name in pair:
        if name not in Digits.ENVIRONMENTS:
            sys.exit(f"unknown Digits domain {name!r}; valid: {', '.join(Digits.ENVIRONMENTS)}")

    class DigitsPair(Digits):
        """Two Digits domains, built once per process."""

        ENVIRONMENTS = pair

        def __init__(self, root, test_envs, hparams):
            MultiDomainDataset.__init__(self, root, test_envs, hparams)
            if "envs" not in cache:
                envs = build_digits()
                cache["envs"] = [TensorDomain(*envs[e], name=e) for e in pair]
            self.datasets = cache["envs"]

    register_dataset(DigitsPair, name="BenchDigitsPair")
    return "BenchDigitsPair"


def run(args) -> dict[str, list[dict]]:
    dataset = register_problem(args)
    base_hp = {"batch_size": args.batch_size}
    if args.problem == "moons":
        base_hp.update(mlp_width=args.mlp_width, mlp_depth=3)
    base_hp.update(json.loads(args.hparams))
    results: dict[str, list[dict]] = {}
    root = args.output_dir or tempfile.mkdtemp(prefix="bench_adaptation_")
    for algorithm in args.algorithms:
        space = get_algorithm_class(algorithm)  # fails early on an unknown name
        hp = {k: v for k, v in base_hp.items()
              if k in space.hparam_space(_info(dataset))}
        results[algorithm] = []
        for seed in args.seeds:
            start = time.time()
            out = os.path.join(root, f"{algorithm}_s{seed}")
            records = train(TrainArgs(dataset=dataset, algorithm=algorithm, test_envs=[1],
                                      task="uda", steps=args.steps, checkpoint_freq=args.steps,
                                      trial_seed=seed, seed=seed, output_dir=out,
                                      skip_model_save=True, hparams=json.dumps(hp)),
                            log=lambda m: None, progress=False)
            last = records[-1]
            row = {"seed": seed, "target": last["env1_in_acc"], "target_uda": last["env1_uda_acc"],
                   "source_val": last["env0_out_acc"], "seconds": time.time() - start}
            results[algorithm].append(row)
            print(f"{algorithm:8s} seed {seed}: target {row['target']:.4f} "
                  f"(unlabeled part {row['target_uda']:.4f}), source val {row['source_val']:.4f}, "
                  f"{row['seconds']:.1f}s", flush=True)
    return results


def _info(dataset: str):
    from shiftbench.datasets import get_dataset_class
    from shiftbench.hparams_registry import DatasetInfo

    cls = get_dataset_class(dataset)
    return DatasetInfo(dataset, tuple(cls.INPUT_SHAPE), int(cls.NUM_CLASSES))


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def table(results: dict[str, list[dict]], baseline: str = "ERM") -> str:
    lines = ["| algorithm | target acc. (held-out) | target acc. (unlabeled part) | source val. acc. "
             f"| Δ vs {baseline} (paired) | wins vs {baseline} | s / trial |",
             "|---|---|---|---|---|---|---|"]
    base = {r["seed"]: r["target"] for r in results.get(baseline, [])}
    for algorithm, rows in results.items():
        diffs = [r["target"] - base[r["seed"]] for r in rows if r["seed"] in base]
        delta = "—" if algorithm == baseline or not diffs else (
            f"{100 * statistics.mean(diffs):+.1f}")
        wins = "—" if algorithm == baseline or not diffs else f"{sum(d > 0 for d in diffs)}/{len(diffs)}"
        lines.append(
            f"| {algorithm} | {_mean_std([r['target'] for r in rows])} "
            f"| {_mean_std([r['target_uda'] for r in rows])} "
            f"| {_mean_std([r['source_val'] for r in rows])} | {delta} | {wins} "
            f"| {statistics.mean(r['seconds'] for r in rows):.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--algorithms", nargs="+", default=None,
                   help="algorithms to compare (default: ERM and every registered uda algorithm)")
    p.add_argument("--problem", choices=("moons", "digits"), default="moons")
    p.add_argument("--angle", type=float, default=35.0, help="moons: target rotation in degrees")
    p.add_argument("--n-per-domain", type=int, default=2000, help="moons: examples per domain")
    p.add_argument("--mlp-width", type=int, default=32, help="moons: MLP width")
    p.add_argument("--source", default="mnist", help="digits: source domain")
    p.add_argument("--target", default="mnist_m", help="digits: target domain")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hparams", default="{}", help="JSON overrides for every algorithm that has them")
    p.add_argument("--output-dir", default=None, help="trial directories (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the raw results to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.algorithms is None:
        args.algorithms = ["ERM"] + [a for a in list_algorithms(setting="uda") if a != "ERM"]
    results = run(args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    what = (f"rotated moons ({args.angle:g}°)" if args.problem == "moons"
            else f"Digits {args.source} → {args.target}")
    print(f"\n{what}, {args.steps} steps, batch {args.batch_size}, seeds {args.seeds}\n")
    print(table(results))


if __name__ == "__main__":
    main()
