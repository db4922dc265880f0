"""Effect experiments for DANN/CDANN, CCSA, SagNet and MixStyle on small synthetic problems.

Each experiment compares a method with ERM on the same data and seeds (paired) and prints a
markdown table. Run one with e.g. `OMP_NUM_THREADS=1 python bench/bench_dg2_effects.py moons`.

* moons  (uda): rotated two-moons (methods.md section 22.1, DGP-A), source -> target rotated by
  `--angle` degrees; DANN/CDANN (paper scheme) against source-only ERM, target accuracy.
* glyphs (sda): scikit-learn's 8x8 digits split in halves; the target half is rendered inverted
  and rotated; n labeled target examples per class; CCSA against pooled ERM ("S+T").
* shapes (dg): coloured shapes with a class-correlated global colour cast in the training
  domains (DGP-C, style-bias variant) and random casts in the test domain; SagNet, SagNetPooled
  and MixStyle against ERM, test-domain accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch

from shiftbench.algorithms.base import create_algorithm
from shiftbench.hparams_registry import DatasetInfo

# --------------------------------------------------------------------------------------------
# data


def moons(n_per_class: int, angle_deg: float, rs: np.random.RandomState):
    t = rs.uniform(0, math.pi, size=2 * n_per_class)
    y = np.repeat([0, 1], n_per_class)
    x = np.where(y[:, None] == 0, np.stack([np.cos(t), np.sin(t)], 1),
                 np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1))
    x = x + rs.normal(0, 0.1, x.shape) - np.array([0.5, 0.25])
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return torch.tensor(x @ rot.T, dtype=torch.float32), torch.tensor(y)


def glyph_domains(seed: int, shots: int):
    from scipy.ndimage import rotate
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    rs = np.random.RandomState(0)  # fixed source/target halves
    order = rs.permutation(len(y))
    src, tgt = order[: len(y) // 2], order[len(y) // 2:]
    xt = 1.0 - torch.tensor(np.stack([rotate(im, 30, reshape=False, order=1, mode="nearest")
                                      for im in x[tgt].numpy()]), dtype=torch.float32)
    yt = y[tgt]
    rs = np.random.RandomState(seed)
    lab = np.concatenate([rs.choice(np.flatnonzero(yt.numpy() == c), shots, replace=False)
                          for c in range(10)])
    test = np.setdiff1d(np.arange(len(yt)), lab)
    return (x[src][:, None], y[src]), (xt[lab][:, None], yt[lab]), (xt[test][:, None], yt[test])


SHAPES = ("disc", "square", "triangle", "plus")


def shapes_domain(n: int, domain: int, rho: float, rs: np.random.RandomState, size: int = 16):
    """Images of 4 filled shapes; a global colour cast equals the class's with probability rho."""
    yy, xx = np.mgrid[:size, :size]
    x = np.zeros((n, 3, size, size), dtype=np.float32)
    y = rs.randint(4, size=n)
    hues = np.array([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 1.0], [1.0, 1.0, 0.2]])
    grating = 0.1 * np.sin((xx * math.cos(domain) + yy * math.sin(domain)) * (0.5 + 0.3 * domain))
    for i in range(n):
        r = rs.uniform(3, 6) * size / 16
        cx, cy = rs.uniform(r, size - r, size=2)
        dx, dy = xx - cx, yy - cy
        mask = {0: dx ** 2 + dy ** 2 <= r ** 2,
                1: (abs(dx) <= r * 0.8) & (abs(dy) <= r * 0.8),
                2: (dy <= r * 0.8) & (dy >= -r * 0.8) & (abs(dx) <= (dy + r * 0.8) * 0.6),
                3: ((abs(dx) <= r / 3) & (abs(dy) <= r)) | ((abs(dy) <= r / 3) & (abs(dx) <= r))}[y[i]]
        cast = y[i] if rs.rand() < rho else rs.randint(4)
        fg = rs.uniform(0.5, 1.0, size=3)
        bg = 0.6 * hues[cast] * rs.uniform(0.7, 1.0)
        img = bg[:, None, None] * np.ones((3, size, size)) + grating
        img = np.where(mask[None], fg[:, None, None] * 0.5 + 0.5 * hues[cast][:, None, None], img)
        x[i] = img + rs.normal(0, 0.05, img.shape)
    return torch.tensor(x), torch.tensor(y)


# --------------------------------------------------------------------------------------------
# training


def accuracy(alg, x, y) -> float:
    alg.eval()
    with torch.no_grad():
        acc = (alg.predict(x).argmax(1) == y).float().mean().item()
    alg.train()
    return acc


def batch(x, y, n, g):
    idx = torch.randint(len(x), (n,), generator=g)
    return x[idx], y[idx]


MOONS_VARIANTS = [  # (label, algorithm, hparams)
    ("ERM", "ERM", {}),
    ("source-only SGD", "DANN", {"dann_optimizer": "sgd", "lambda": 0.0}),
    ("DANN (Adam)", "DANN", {}),
    ("DANN (SGD)", "DANN", {"dann_optimizer": "sgd"}),
    ("CDANN (Adam)", "CDANN", {}),
    ("CDANN (SGD)", "CDANN", {"dann_optimizer": "sgd"}),
]


def run_moons(args) -> list[dict]:
    """DANN toy: MLP 2 -> 15 -> 15 featurizer; Adam lr 1e-3 or SGD lr 0.05 (annealed)."""
    rows = []
    for seed in range(args.seeds):
        rs = np.random.RandomState(seed)
        xs, ys = moons(500, 0, rs)
        xt, _ = moons(500, args.angle, rs)  # unlabeled target pool
        xe, ye = moons(500, args.angle, rs)  # labeled target test set
        row = {"seed": seed}
        for label, name, extra in MOONS_VARIANTS:
            sgd = extra.get("dann_optimizer") == "sgd"
            hp = {"mlp_width": 15, "mlp_depth": 2, "lr": 1e-3, "disc_width": 15, "disc_depth": 2}
            if name != "ERM":
                hp.update(lr_g=0.05 if sgd else 1e-3, lr_d=0.05 if sgd else 1e-3, **extra)
            else:
                hp = {k: v for k, v in hp.items() if not k.startswith("disc")}
            torch.manual_seed(seed)
            alg = create_algorithm(name, (2,), 2, 1, hp, dataset=DatasetInfo("moons", (2,), 2),
                                   setting="uda", total_steps=args.steps)
            g = torch.Generator().manual_seed(seed)
            for _ in range(args.steps):
                alg.train_step([batch(xs, ys, 64, g)], [xt[torch.randint(len(xt), (64,), generator=g)]])
            row[label] = accuracy(alg, xe, ye)
        rows.append(row)
    return rows


def run_glyphs(args) -> list[dict]:
    rows = []
    for seed in range(args.seeds):
        (xs, ys), (xl, yl), (xe, ye) = glyph_domains(seed, args.shots)
        row = {"seed": seed}
        for name, hp in [("ERM", {}), ("CCSA", {"ccsa_alpha": 0.25})]:
            torch.manual_seed(seed)
            alg = create_algorithm(name, (1, 8, 8), 10, 1, {"lr": 1e-3, **hp},
                                   dataset=DatasetInfo("glyphs", (1, 8, 8), 10),
                                   setting="sda", total_steps=args.steps)
            g = torch.Generator().manual_seed(seed)
            for _ in range(args.steps):
                alg.train_step([batch(xs, ys, 64, g), (xl, yl)])
            row[name] = accuracy(alg, xe, ye)
        rows.append(row)
    return rows


def run_shapes(args) -> list[dict]:
    rows = []
    names = args.methods.split(",")
    shape = (3, args.size, args.size)
    for seed in range(args.seeds):
        rs = np.random.RandomState(seed)
        train = [shapes_domain(400, d, 0.9, rs, args.size) for d in range(3)]
        xe, ye = shapes_domain(600, 3, 0.0, rs, args.size)
        row = {"seed": seed}
        for name in names:
            torch.manual_seed(seed)
            extra = json.loads(args.hparams) if name != "ERM" else {}
            alg = create_algorithm(name, shape, 4, 3, {"lr": 1e-3, **extra},
                                   dataset=DatasetInfo("shapes", shape, 4),
                                   setting="dg", total_steps=args.steps)
            g = torch.Generator().manual_seed(seed)
            for _ in range(args.steps):
                alg.train_step([batch(x, y, args.batch, g) for x, y in train])
            row[name] = accuracy(alg, xe, ye)
        rows.append(row)
    return rows


def report(rows: list[dict], baseline: str = "ERM") -> str:
    names = [k for k in rows[0] if k != "seed"]
    lines = ["| method | mean acc | per seed | mean paired gain vs " + baseline + " | wins |",
             "|---|---|---|---|---|"]
    for n in names:
        accs = [r[n] for r in rows]
        gains = [r[n] - r[baseline] for r in rows]
        wins = sum(gn > 0 for gn in gains)
        lines.append(f"| {n} | {100 * statistics.mean(accs):.1f} | "
                     + " ".join(f"{100 * a:.1f}" for a in accs)
                     + f" | {100 * statistics.mean(gains):+.1f} | {wins}/{len(rows)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", choices=["moons", "glyphs", "shapes"])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--angle", type=float, default=50.0)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--size", type=int, default=12, help="shapes: image side")
    p.add_argument("--batch", type=int, default=16, help="shapes: examples per domain per step")
    p.add_argument("--methods", default="ERM,SagNet,MixStyle,SagNetPooled", help="shapes: methods")
    p.add_argument("--hparams", default="{}", help="shapes: JSON hparams for the non-ERM methods")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    args.steps = args.steps or {"moons": 2000, "glyphs": 600, "shapes": 600}[args.experiment]
    start = time.time()
    rows = {"moons": run_moons, "glyphs": run_glyphs, "shapes": run_shapes}[args.experiment](args)
    print(f"{args.experiment}: {vars(args)}; {time.time() - start:.0f} s")
    print(report(rows))


if __name__ == "__main__":
    main()
