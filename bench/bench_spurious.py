"""Spurious-correlation benchmark (a ColoredMNIST-like vector problem): do IRM and VREx beat ERM?

Data (methods.md section 22.1, DGP-G, with the invariant cue made noisier than the spurious one,
as the digit shape is harder to read than the colour in ColoredMNIST):
  shape bit z ~ Bern(0.5); label y = z XOR Bern(0.25)    (the invariant cue predicts y 75%)
  colour bit c = y XOR Bern(e)                          (the spurious cue predicts y 1 - e)
  x = [ (2z - 1) + N(0, s_z^2) repeated over `shape_dims` dims,
        (2c - 1) + N(0, s_c^2) repeated over `color_dims` dims,  N(0, 1) noise dims ]
Training environments e = 0.1 and 0.2 (colour 90% / 80% predictive), test environment e = 0.9
(colour reversed). Optimum for an invariant predictor: 75% everywhere; a colour-reader scores
about 10% on the test environment. Accuracy above ~75% on the test domain would mean a leak.

Each algorithm is trained through the public API (create_algorithm + train_step) on
fixed training sets (`n` examples per environment, random minibatches of `batch` per domain).
Prints per-seed test accuracies and mean +- std per algorithm (and train accuracy).

Usage: OMP_NUM_THREADS=1 python bench/bench_spurious.py [--seeds 0 1 2 3 4] [--steps 3000] [--n 25000]
       [--algorithms ERM IRM VREx] [--hparams '{"IRM": {"irm_lambda": 1000}}']
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from shiftbench.algorithms import create_algorithm

# Penalty weights: DomainBed's ranges, values fixed once from a 1-seed pilot (recorded in docs).
DEFAULT_HPARAMS = {
    "ERM": {},
    "IRM": {"irm_lambda": 1e3, "irm_penalty_anneal_iters": 300},
    "VREx": {"vrex_lambda": 1e3, "vrex_penalty_anneal_iters": 300},
}
COMMON = {"lr": 1e-3, "mlp_width": 64, "mlp_depth": 3, "mlp_dropout": 0.0, "weight_decay": 0.0}


def make_environment(e: float, n: int, g: torch.Generator, shape_dims: int = 4, color_dims: int = 2,
                     noise_dims: int = 4, shape_noise: float = 1.0, color_noise: float = 0.3):
    z = torch.randint(2, (n,), generator=g)
    y = z ^ (torch.rand(n, generator=g) < 0.25).long()
    c = y ^ (torch.rand(n, generator=g) < e).long()
    shape = (2 * z - 1).float()[:, None] + shape_noise * torch.randn(n, shape_dims, generator=g)
    color = (2 * c - 1).float()[:, None] + color_noise * torch.randn(n, color_dims, generator=g)
    noise = torch.randn(n, noise_dims, generator=g)
    return torch.cat([shape, color, noise], dim=1), y


def accuracy(alg, x, y) -> float:
    alg.eval()
    with torch.no_grad():
        acc = (alg.predict(x).argmax(1) == y).float().mean().item()
    alg.train()
    return acc


def run(name: str, seed: int, steps: int, n: int, batch: int, hparams: dict) -> dict:
    g = torch.Generator().manual_seed(1000 + seed)  # same data for every algorithm at a seed
    train_envs = [make_environment(e, n, g) for e in (0.1, 0.2)]
    test_x, test_y = make_environment(0.9, n, g)
    torch.manual_seed(seed)
    dim = train_envs[0][0].shape[1]
    alg = create_algorithm(name, (dim,), 2, len(train_envs), {**COMMON, **hparams}, setting="dg",
                           total_steps=steps)
    sampler = torch.Generator().manual_seed(seed)
    start = time.time()
    for _ in range(steps):
        mbs = []
        for x, y in train_envs:
            idx = torch.randint(n, (batch,), generator=sampler)
            mbs.append((x[idx], y[idx]))
        alg.train_step(mbs)
    train_acc = statistics.mean(accuracy(alg, x, y) for x, y in train_envs)
    return {"algorithm": name, "seed": seed, "train_acc": train_acc,
            "test_acc": accuracy(alg, test_x, test_y), "seconds": round(time.time() - start, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--n", type=int, default=25000, help="examples per environment")
    parser.add_argument("--batch", type=int, default=256, help="examples per domain per step")
    parser.add_argument("--algorithms", nargs="+", default=list(DEFAULT_HPARAMS))
    parser.add_argument("--hparams", default="{}", help="JSON {algorithm: {hparam: value}} overrides")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = json.loads(args.hparams)
    results: dict[str, list[dict]] = {}
    for name in args.algorithms:
        hp = {**DEFAULT_HPARAMS.get(name, {}), **overrides.get(name, {})}
        for seed in args.seeds:
            r = run(name, seed, args.steps, args.n, args.batch, hp)
            r["hparams"] = hp
            print(json.dumps(r), flush=True)
            results.setdefault(name, []).append(r)
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s), {args.steps} steps, seeds {args.seeds}")
    print("| algorithm | test acc (e=0.9) mean +- std | train acc | per seed (test) |")
    print("|---|---|---|---|")
    for name, rs in results.items():
        test = [r["test_acc"] for r in rs]
        std = statistics.stdev(test) if len(test) > 1 else 0.0
        train = statistics.mean(r["train_acc"] for r in rs)
        print(f"| {name} | {100 * statistics.mean(test):.1f} +- {100 * std:.1f} | {100 * train:.1f} | "
              + ", ".join(f"{100 * t:.1f}" for t in test) + " |")


if __name__ == "__main__":
    main()
