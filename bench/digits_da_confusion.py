"""Why a source-only digits model over-predicts one class on mnist_m (docs/reproductions.md, Part I).

For one trained run (a sweep job directory with its `model.pkl`, e.g. source-only ERM on
mnist -> mnist_m) prints, on the whole mnist_m domain:

* the confusion matrix (rows: true class, columns: predicted class, counts) with each class's
  recall and precision and its share of the predictions;
* the predictions on the photo crops alone: each mnist_m image is |crop - digit| for a random
  crop of a scikit-image photo (datasets/digits.py); the crops are re-drawn here with the same
  generator draws (and checked to rebuild every mnist_m image exactly), then predicted with no
  digit in them;
* the share predicted as the most predicted class, and the accuracy, per background photo and
  per quartile of the crop's texture (mean absolute difference between neighbouring pixels);
* the share predicted as the most predicted class, and the accuracy, per quartile of the crop's
  mean brightness (|crop - digit| turns a bright crop's strokes dark: inverted polarity);
* the accuracy on the same digits without a background (the mnist domain holds the same 5,000
  digits in another order) and on them inverted (255 - x, black strokes on white).

    python bench/digits_da_confusion.py RUN_DIR
"""

from __future__ import annotations

import argparse

import torch
from digits_da_predictions import load  # bench/, the directory of this script

from shiftbench.datasets.digits import SIZE, build_digits, mnist_source, photo_source


def photo_crops(n: int) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
    """The digits' order, the crops (uint8 N x 3 x 28 x 28), the photo names and each image's
    photo index, re-drawn as datasets.digits.make_mnist_m draws them (generator seed 2)."""
    photos = photo_source()
    g = torch.Generator().manual_seed(2)
    order = torch.randperm(n, generator=g)
    which = torch.randint(len(photos), (n,), generator=g)
    u = torch.rand(n, 2, generator=g)
    crops = torch.empty((n, 3, SIZE, SIZE), dtype=torch.uint8)
    for i in range(n):
        photo = photos[int(which[i])][1]
        h, w = photo.shape[:2]
        top, left = int(u[i, 0] * (h - SIZE + 1)), int(u[i, 1] * (w - SIZE + 1))
        crops[i] = torch.from_numpy(photo[top:top + SIZE, left:left + SIZE]).permute(2, 0, 1)
    return order, crops, [name for name, _ in photos], which


def predict(algorithm, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([algorithm.predict(x[i:i + 500].float() / 255).argmax(1)
                          for i in range(0, len(x), 500)])


def pct(a: torch.Tensor) -> str:
    return f"{100 * a.float().mean():.1f}" if a.numel() else "-"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    ns = p.parse_args(argv)
    torch.set_num_threads(1)
    name, algorithm = load(ns.run)
    domains = build_digits()
    xm, ym = domains["mnist_m"]
    digits, labels = mnist_source()
    order, crops, photo_names, which = photo_crops(len(ym))
    rebuilt = (crops.to(torch.int16) - torch.from_numpy(digits)[order].to(torch.int16)[:, None]
               ).abs().to(torch.uint8)
    if not torch.equal(rebuilt, xm) or not torch.equal(torch.from_numpy(labels)[order], ym):
        raise SystemExit("the re-drawn crops do not rebuild mnist_m: datasets/digits.py changed")
    k = int(ym.max()) + 1
    pred = predict(algorithm, xm)
    print(f"## {name}: mnist_m, accuracy {pct(pred == ym)} %\n")
    conf = torch.zeros(k, k, dtype=torch.long)
    conf.index_put_((ym, pred), torch.ones_like(ym), accumulate=True)
    print("| true \\ predicted | " + " | ".join(map(str, range(k))) + " | recall |")
    print("|---" * (k + 2) + "|")
    for c in range(k):
        print(f"| {c} | " + " | ".join(str(int(v)) for v in conf[c])
              + f" | {100 * conf[c, c] / conf[c].sum():.1f} |")
    share = conf.sum(0).float() / len(ym)
    precision = conf.diag().float() / conf.sum(0).clamp_min(1)
    print("| share predicted | " + " | ".join(f"{100 * s:.1f}" for s in share) + " | |")
    print("| precision | " + " | ".join(f"{100 * s:.1f}" for s in precision) + " | |")
    top = int(share.argmax())

    bg = predict(algorithm, crops)
    bg_share = torch.bincount(bg, minlength=k).float() / len(bg)
    print("\nPhoto crops alone (no digit), share of predictions per class: "
          + ", ".join(f"{c}: {100 * s:.1f}" for c, s in enumerate(bg_share)))
    xs, ys = domains["mnist"]
    clean, inverted = predict(algorithm, xs), predict(algorithm, 255 - xs)
    print(f"Same digits on black (mnist domain, partly the model's training images): accuracy "
          f"{pct(clean == ys)} %; inverted (255 - x, black on white): accuracy "
          f"{pct(inverted == ys)} %, share per predicted class: "
          + ", ".join(f"{c}: {100 * s:.1f}" for c, s in enumerate(
              torch.bincount(inverted, minlength=k).float() / len(ys))))

    texture = (crops.float().diff(dim=-1).abs().mean((1, 2, 3))
               + crops.float().diff(dim=-2).abs().mean((1, 2, 3))) / 2
    print(f"\n| background | images | predicted {top} | crop alone predicted {top} | accuracy |")
    print("|---|---|---|---|---|")
    for j, photo in enumerate(photo_names):
        m = which == j
        if m.any():
            print(f"| photo {photo} | {int(m.sum())} | {pct(pred[m] == top)} | "
                  f"{pct(bg[m] == top)} | {pct(pred[m] == ym[m])} |")
    brightness = crops.float().mean((1, 2, 3))
    for label, value in (("texture", texture), ("brightness", brightness)):
        bins = torch.bucketize(value, torch.quantile(value, torch.tensor([0.25, 0.5, 0.75])))
        for q in range(4):
            m = bins == q
            lo, hi = float(value[m].min()), float(value[m].max())
            print(f"| {label} quartile {q + 1} ({lo:.1f}-{hi:.1f}) | {int(m.sum())} | "
                  f"{pct(pred[m] == top)} | {pct(bg[m] == top)} | {pct(pred[m] == ym[m])} |")


if __name__ == "__main__":
    main()
