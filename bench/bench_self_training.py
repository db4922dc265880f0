"""Effect of the self-training / source-free / test-time methods (run once; results in docs/adaptation.md).

Three experiments:

1. `uda`: Digits, target `mnist_m` (sources mnist, synth, lowres), `--task uda`, through the
   trainer, each algorithm vs ERM (source only) on the same splits and seeds. Prints one JSON line
   per trial (target accuracies of the last checkpoint) to `--out`.
2. `tta`: the photometric variant of methods.md DGP-C: 3x16x16 images of four shapes (disc,
   square, triangle, plus) on coloured backgrounds; test images are `clip(a_c x + b_c)` per channel
   with a_c in [0.3, 0.6], b_c in [0.3, 0.5]. A BatchNorm CNN is trained on the clean source
   (BNAdapt's training, which is ERM), then evaluated without adaptation, with BNAdapt and with
   Tent (episodic and continual), paired over seeds.
3. `dgpe`: methods.md DGP-E "class-dependent confidence collapse" (3 Gaussian classes in 2-D;
   in the target, class 2 moves towards class 1 and becomes unconfident): ERM (source only),
   CBST, and the same algorithm with one *global* threshold (top q of all target examples),
   4 rounds with q = 0.2 -> 0.35, paired over seeds. Mean per-class recall and class-2 recall.

Usage:
  python bench/bench_self_training.py uda --algorithms ERM DACS --seeds 0 1 --steps 300 --out uda.jsonl
  python bench/bench_self_training.py tta --seeds 0 1 2 --out tta.jsonl
  python bench/bench_self_training.py dgpe --seeds 0 1 2 3 4 --out dgpe.jsonl
  python bench/bench_self_training.py report uda.jsonl tta.jsonl dgpe.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from collections import defaultdict

import torch

UDA_ALGORITHMS = ["ERM", "PseudoLabel", "FixMatch", "MeanTeacher", "DACS", "CBST", "CRST", "TPLD", "SHOT"]


def run_uda(args) -> None:
    from shiftbench.trainer import TrainArgs, train

    for seed in args.seeds:
        for name in args.algorithms:
            start = time.time()
            with tempfile.TemporaryDirectory() as tmp:
                records = train(TrainArgs(
                    dataset="Digits", algorithm=name, test_envs=[1], task="uda", steps=args.steps,
                    checkpoint_freq=args.steps, trial_seed=seed, seed=seed, output_dir=tmp,
                    hparams=json.dumps({"batch_size": args.batch_size}), skip_model_save=True),
                    log=lambda m: None, progress=False)
            last = records[-1]
            row = {"experiment": "uda", "algorithm": name, "seed": seed, "steps": args.steps,
                   "target_in": last["env1_in_acc"], "target_out": last["env1_out_acc"],
                   "target_uda": last["env1_uda_acc"], "source_out": last["env0_out_acc"],
                   "seconds": round(time.time() - start, 1)}
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


# ---- DGP-C photometric variant ----------------------------------------------------------------

def shapes(n: int, g: torch.Generator, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (3, size, size) in [0, 1] of 4 filled shapes at random position/size/colours."""
    y = torch.randint(4, (n,), generator=g)
    r = 3 + 3 * torch.rand(n, generator=g)
    cy = r + (size - 2 * r) * torch.rand(n, generator=g)
    cx = r + (size - 2 * r) * torch.rand(n, generator=g)
    yy = torch.arange(size).view(1, size, 1).float() - cy.view(n, 1, 1)
    xx = torch.arange(size).view(1, 1, size).float() - cx.view(n, 1, 1)
    rr = r.view(n, 1, 1)
    disc = yy ** 2 + xx ** 2 <= rr ** 2
    square = (yy.abs() <= rr * 0.8) & (xx.abs() <= rr * 0.8)
    triangle = (yy <= rr * 0.8) & (yy >= -rr) & (xx.abs() <= (yy + rr) / 2)
    plus = ((yy.abs() <= rr / 3) & (xx.abs() <= rr)) | ((xx.abs() <= rr / 3) & (yy.abs() <= rr))
    mask = torch.stack([disc, square, triangle, plus], 1)[torch.arange(n), y].float().unsqueeze(1)
    fg, bg = torch.rand(n, 3, 1, 1, generator=g), torch.rand(n, 3, 1, 1, generator=g)
    x = mask * fg + (1 - mask) * bg
    x = x + 0.05 * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1), y


def photometric(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    a = 0.3 + 0.3 * torch.rand(1, 3, 1, 1, generator=g)
    b = 0.3 + 0.2 * torch.rand(1, 3, 1, 1, generator=g)
    return (a * x + b).clamp(0, 1)


def run_tta(args) -> None:
    from shiftbench.algorithms import create_algorithm
    from shiftbench.hparams_registry import DatasetInfo

    ds = DatasetInfo("Shapes16", (3, 16, 16), 4)
    for seed in args.seeds:
        g = torch.Generator().manual_seed(seed)
        xs, ys = shapes(4000, g)
        xt, yt = shapes(2000, g)
        xt = photometric(xt, g)
        torch.manual_seed(seed)
        source = create_algorithm("BNAdapt", ds.input_shape, 4, 1, {"batch_size": 64}, dataset=ds,
                                  setting="tta", total_steps=args.tta_steps)
        for _ in range(args.tta_steps):
            idx = torch.randint(len(xs), (64,), generator=g)
            source.train_step([(xs[idx], ys[idx])])
        source.eval()
        row = {"experiment": "tta", "seed": seed, "steps": args.tta_steps}
        with torch.no_grad():
            row["source_acc_clean"] = (source.predict(xs[:2000]).argmax(1) == ys[:2000]).float().mean().item()
            row["no_adaptation"] = (source.predict(xt).argmax(1) == yt).float().mean().item()
        order = torch.randperm(len(xt), generator=torch.Generator().manual_seed(seed + 100))
        batches = [order[i:i + 64] for i in range(0, len(order), 64)]
        row["BNAdapt"] = _stream(source, xt, yt, batches, episodic=True)
        tent = create_algorithm("Tent", ds.input_shape, 4, 1, {"batch_size": 64}, dataset=ds)
        tent.load_state_dict(source.state_dict(), strict=False)
        tent.eval()
        for mode in ("episodic", "continual"):
            row[f"Tent_{mode}"] = _stream(copy.deepcopy(tent), xt, yt, batches, mode == "episodic")
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


def _stream(alg, x, y, batches, episodic: bool) -> float:
    correct = 0
    for idx in batches:
        correct += int((alg.adapt(x[idx]).argmax(1) == y[idx]).sum())
        if episodic:
            alg.reset_adaptation()
    return correct / len(x)


# ---- DGP-E ----------------------------------------------------------------------------------

def dgpe(n: int, g: torch.Generator, target: bool) -> tuple[torch.Tensor, torch.Tensor]:
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
    std = torch.full((3,), 0.5 ** 0.5)
    if target:
        means = means + torch.tensor([[0.3, 0.3], [0.3, 0.3], [0.0, 0.0]])
        means[2] = torch.tensor([0.8, 1.0])
        std[2] = 0.8 ** 0.5
    y = torch.arange(3).repeat_interleave(n)
    return means[y] + std[y, None] * torch.randn(3 * n, 2, generator=g), y


def run_dgpe(args) -> None:
    from shiftbench.algorithms import create_algorithm
    from shiftbench.algorithms.round_self_training import CBST
    from shiftbench.hparams_registry import DatasetInfo

    class GlobalThreshold(CBST):
        """CBST's schedule with one threshold for all classes: the top q of all target examples."""

        def fit_thresholds(self, conf, pred, q):
            rank = max(1, int(math.floor(q * len(conf))))
            return torch.full((self.num_classes,), float(conf.sort(descending=True).values[rank - 1]))

    ds = DatasetInfo("DGPE", (2,), 3)
    hp = {"mlp_width": 32, "mlp_depth": 3, "batch_size": 64, "cbst_rounds": 4, "cbst_q0": 0.2,
          "cbst_dq": 0.05, "cbst_source_fraction": 0.4}
    for seed in args.seeds:
        g = torch.Generator().manual_seed(seed)
        xs, ys = dgpe(300, g, False)
        pool, _ = dgpe(300, g, True)
        xt, yt = dgpe(300, g, True)
        row = {"experiment": "dgpe", "seed": seed, "steps": args.dgpe_steps}
        for name in ("ERM", "CBST", "global"):
            torch.manual_seed(seed)
            alg = create_algorithm("CBST" if name == "global" else name, (2,), 3, 1, hp, dataset=ds,
                                   setting="uda", total_steps=args.dgpe_steps)
            if name == "global":
                alg = GlobalThreshold((2,), 3, 1, alg.hparams, setting="uda", total_steps=args.dgpe_steps)
            bg = torch.Generator().manual_seed(seed + 1)
            batches = pool.split(256)
            for _ in range(args.dgpe_steps):
                alg.on_round(lambda b=batches: iter(b))
                i = torch.randint(len(xs), (64,), generator=bg)
                j = torch.randint(len(pool), (64,), generator=bg)
                alg.train_step([(xs[i], ys[i])], [pool[j]])
            alg.eval()
            with torch.no_grad():
                pred = alg.predict(xt).argmax(1)
            recall = [(pred[yt == c] == c).float().mean().item() for c in range(3)]
            row[name] = sum(recall) / 3
            row[f"{name}_class2"] = recall[2]
            if name != "ERM":  # mechanism: class 2's share of the last round's pseudo-labels
                from shiftbench.algorithms.round_self_training import cbst_select

                with torch.no_grad():
                    probs = torch.softmax(alg.snapshot(pool), 1)
                labels, mask = cbst_select(probs, alg.thresholds)
                row[f"{name}_pl_share2"] = (labels[mask] == 2).float().mean().item()
                row[f"{name}_pred_share2"] = (probs.argmax(1) == 2).float().mean().item()
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


# ---- report ---------------------------------------------------------------------------------

def _mean_sd(values):
    m = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{100 * m:.1f} ± {100 * sd:.1f}" if not math.isnan(sd) else f"{100 * m:.1f}"


def report(paths) -> None:
    rows = [json.loads(line) for p in paths for line in open(p) if line.strip()]
    uda = [r for r in rows if r["experiment"] == "uda"]
    if uda:
        by = defaultdict(dict)
        for r in uda:
            by[r["algorithm"]][r["seed"]] = r
        erm = by.get("ERM", {})
        print("| algorithm | target in-split acc (%) | target uda-split acc (%) | paired Δ vs ERM (in) "
              "| seeds | s/trial |")
        print("|---|---|---|---|---|---|")
        for name, per_seed in by.items():
            seeds = sorted(per_seed)
            deltas = [per_seed[s]["target_in"] - erm[s]["target_in"] for s in seeds if s in erm]
            delta = _mean_sd(deltas) if deltas and name != "ERM" else "—"
            print(f"| {name} | {_mean_sd([per_seed[s]['target_in'] for s in seeds])} | "
                  f"{_mean_sd([per_seed[s]['target_uda'] for s in seeds])} | {delta} | "
                  f"{len(seeds)} | {statistics.mean(per_seed[s]['seconds'] for s in seeds):.0f} |")
    tta = [r for r in rows if r["experiment"] == "tta"]
    if tta:
        print("\n| evaluation | accuracy on shifted test (%) | paired Δ vs no adaptation | seeds |")
        print("|---|---|---|---|")
        for key in ("source_acc_clean", "no_adaptation", "BNAdapt", "Tent_episodic", "Tent_continual"):
            deltas = [r[key] - r["no_adaptation"] for r in tta]
            delta = "—" if key in ("source_acc_clean", "no_adaptation") else _mean_sd(deltas)
            print(f"| {key} | {_mean_sd([r[key] for r in tta])} | {delta} | {len(tta)} |")
    rows_e = [r for r in rows if r["experiment"] == "dgpe"]
    if rows_e:
        print("\n| method | mean per-class recall (%) | class-2 recall (%) | paired Δ vs global "
              "(mean recall) | wins vs global | seeds |")
        print("|---|---|---|---|---|---|")
        for key in ("ERM", "global", "CBST"):
            deltas = [r[key] - r["global"] for r in rows_e]
            wins = sum(d > 0 for d in deltas)
            print(f"| {key} | {_mean_sd([r[key] for r in rows_e])} | "
                  f"{_mean_sd([r[key + '_class2'] for r in rows_e])} | "
                  f"{'—' if key == 'global' else _mean_sd(deltas)} | "
                  f"{'—' if key == 'global' else f'{wins}/{len(rows_e)}'} | {len(rows_e)} |")
        if "CBST_pl_share2" in rows_e[0]:
            for key in ("global", "CBST"):
                pred = _mean_sd([r[key + "_pred_share2"] for r in rows_e])
                chosen = _mean_sd([r[key + "_pl_share2"] for r in rows_e])
                print(f"\n{key}: class 2 is {pred}% of the snapshot's predictions on the pool and "
                      f"{chosen}% of the last round's selected pseudo-labels")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("uda")
    p.add_argument("--algorithms", nargs="+", default=UDA_ALGORITHMS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default="bench_self_training_uda.jsonl")
    p = sub.add_parser("tta")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--tta-steps", type=int, default=400)
    p.add_argument("--out", default="bench_self_training_tta.jsonl")
    p = sub.add_parser("dgpe")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--dgpe-steps", type=int, default=1000)
    p.add_argument("--out", default="bench_self_training_dgpe.jsonl")
    p = sub.add_parser("report")
    p.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    {"uda": run_uda, "tta": run_tta, "dgpe": run_dgpe, "report": lambda a: report(a.paths)}[args.cmd](args)


if __name__ == "__main__":
    main(sys.argv[1:])
