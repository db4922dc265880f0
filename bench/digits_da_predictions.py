"""What trained DA models predict on a whole Digits target domain (docs/reproductions.md, Part I).

For each trial directory given (a sweep job with its `model.pkl`), rebuilds the algorithm, predicts
every image of the target domain and prints: accuracy, mean confidence and entropy, accuracy of
the more and of the less confident half, the share of predictions in the most and least
predicted class, the most predicted class's precision, and the agreement with the first
directory's model (e.g. source-only ERM).

    python bench/digits_da_predictions.py --target mnist_m RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from shiftbench.algorithms import get_algorithm_class
from shiftbench.datasets.digits import build_digits


def load(run_dir: str):
    state = torch.load(f"{run_dir}/model.pkl", weights_only=False, map_location="cpu")
    args = state["args"]
    algorithm = get_algorithm_class(args["algorithm"])(
        tuple(state["model_input_shape"]), state["model_num_classes"], state["model_num_domains"],
        state["model_hparams"], setting=args["task"], total_steps=args["steps"])
    algorithm.load_state_dict(state["model_dict"])
    return f"{args['algorithm']} (seed {args['trial_seed']})", algorithm.eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", default="mnist_m", choices=("mnist", "mnist_m", "synth", "lowres"))
    p.add_argument("runs", nargs="+")
    ns = p.parse_args(argv)
    torch.set_num_threads(1)
    x, y = build_digits()[ns.target]
    x = x.float() / 255
    first = None
    print("| model | acc. | mean conf. | entropy | acc. confident half | acc. other half | "
          "most predicted class: share, precision | least predicted share | agrees with first |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in ns.runs:
        name, algorithm = load(run)
        with torch.no_grad():
            logits = torch.cat([algorithm.predict(x[i:i + 500]) for i in range(0, len(x), 500)])
        p_ = F.softmax(logits.float(), dim=1)
        conf, pred = p_.max(dim=1)
        entropy = -(p_ * p_.clamp_min(1e-12).log()).sum(dim=1)
        order = conf.argsort(descending=True)
        top, rest = order[: len(order) // 2], order[len(order) // 2:]
        share = torch.bincount(pred, minlength=p_.shape[1]).float() / len(pred)
        c = int(share.argmax())
        precision = (y[pred == c] == c).float().mean()
        first = pred if first is None else first
        print(f"| {name} | {100 * (pred == y).float().mean():.1f} | {conf.mean():.3f} | "
              f"{entropy.mean():.3f} | {100 * (pred[top] == y[top]).float().mean():.1f} | "
              f"{100 * (pred[rest] == y[rest]).float().mean():.1f} | class {c}: "
              f"{100 * share[c]:.1f} %, {100 * precision:.1f} % | {100 * share.min():.1f} % | "
              f"{100 * (pred == first).float().mean():.1f} % |")


if __name__ == "__main__":
    main()
