"""Why source-only training stalled at chance on Digits' coloured domains (issue 22, item 5a).

Trains the `dann_digits` network (5x5 conv 32/48, head 100-100-10) with the DANN paper's SGD
protocol (momentum 0.9, lr0 / (1 + 10 p)^0.75, batches of 64) on one Digits domain, 80 % of it,
and prints the training loss (mean of the last 50 steps) and the accuracy on the other 20 % four
times during training, for one variant of initialisation and input scaling:

* `torch`: PyTorch's default initialisation, inputs in [0, 1] (the network before the fix);
* `center`: inputs mapped to [-1, 1]; `he`: He's ReLU initialisation, zero biases;
* `he_center`: both (what the `dann_digits` preset now sets: network_init=he, input_center);
* `imgstd`: per-image standardisation, PyTorch's initialisation (a data-side alternative);
* `--lr`: the initial learning rate (0.01, the paper's; 0.05 also escapes the plateau).

    python bench/digits_erm_plateau.py --domain synth --variant torch --steps 1000 --seed 0

Numbers from this script are in docs/reproductions.md ("ERM on synth"). bfloat16 autocast, one
thread; no evaluation-time augmentation.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from shiftbench.datasets.digits import build_digits
from shiftbench.networks import Classifier, DANNDigitsCNN

VARIANTS = ("torch", "center", "he", "he_center", "imgstd")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--domain", default="synth", choices=("mnist", "mnist_m", "synth", "lowres"))
    p.add_argument("--variant", default="torch", choices=VARIANTS)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.01)
    ns = p.parse_args(argv)
    torch.set_num_threads(1)
    x, y = build_digits()[ns.domain]
    g = torch.Generator().manual_seed(ns.seed)
    perm = torch.randperm(len(y), generator=g)
    n_val = len(y) // 5
    val, train = perm[:n_val], perm[n_val:]
    torch.manual_seed(ns.seed)
    init = "he" if ns.variant in ("he", "he_center") else "torch"
    featurizer = DANNDigitsCNN((3, 28, 28), init=init, center=ns.variant in ("center", "he_center"))
    model = nn.Sequential(featurizer, Classifier(featurizer.n_outputs, 10, hidden=(100, 100),
                                                 init=init))
    opt = torch.optim.SGD(model.parameters(), lr=ns.lr, momentum=0.9)

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.float() / 255
        if ns.variant == "imgstd":
            mean = batch.mean((1, 2, 3), keepdim=True)
            batch = (batch - mean) / batch.std((1, 2, 3), keepdim=True).clamp_min(1e-3)
        return batch

    def accuracy() -> float:
        model.eval()
        correct = 0
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            for i in range(0, n_val, 500):
                idx = val[i:i + 500]
                correct += (model(prepare(x[idx])).argmax(1) == y[idx]).sum().item()
        model.train()
        return 100 * correct / n_val

    start, losses = time.time(), []
    for step in range(ns.steps):
        for group in opt.param_groups:
            group["lr"] = ns.lr / (1 + 10 * step / ns.steps) ** 0.75
        idx = train[torch.randint(len(train), (64,), generator=g)]
        with torch.autocast("cpu", torch.bfloat16):
            loss = F.cross_entropy(model(prepare(x[idx])).float(), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % max(1, ns.steps // 4) == 0:
            print(f"{ns.domain} {ns.variant} lr={ns.lr} seed={ns.seed} step {step + 1}: loss "
                  f"{sum(losses[-50:]) / len(losses[-50:]):.3f}, validation {accuracy():.1f} % "
                  f"({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
