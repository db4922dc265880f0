"""Source-only ERM on the built-in Digits dataset, each domain held out in turn.

Runs `shiftbench train --dataset Digits --algorithm ERM --test-envs <i>` for every domain and
every seed, then prints a markdown table of the held-out domain's accuracy (its `in` and `out`
splits pooled, i.e. the whole domain) next to the in-domain validation accuracy (the training
domains' `out` splits). Used for the table in docs/datasets.md:

    OMP_NUM_THREADS=1 python bench/digits_erm.py --steps 200 --seeds 0 1 \
        --hparams '{"batch_size": 32}' --out /tmp/digits_erm
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from shiftbench.cli import main as cli_main
from shiftbench.datasets import get_dataset_class


def finished(trial: Path, steps: int) -> dict | None:
    """The last record of a trial that reached its last step, else None."""
    results = trial / "results.jsonl"
    if not results.is_file():
        return None
    last = json.loads(results.read_text().splitlines()[-1])
    return last if last["step"] == steps - 1 else None


def run(out: Path, test_env: int, seed: int, steps: int, dataset: str, freq: int,
        hparams: str | None, precision: str = "fp32") -> dict:
    """Train one trial (or reuse a finished one) and return its last record."""
    trial = out / f"env{test_env}_seed{seed}"
    results = trial / "results.jsonl"
    if finished(trial, steps) is None:
        argv = ["train", "--dataset", dataset, "--algorithm", "ERM", "--test-envs", str(test_env),
                "--steps", str(steps), "--checkpoint-freq", str(freq),
                "--trial-seed", str(seed), "--seed", str(seed), "--threads", "1",
                "--output-dir", str(trial), "--skip-model-save", "--no-progress",
                "--precision", precision]
        if hparams:
            argv += ["--hparams", hparams]
        t0 = time.time()
        if cli_main(argv) != 0:
            raise SystemExit(f"trial failed: {' '.join(argv)}")
        print(f"# env {test_env} seed {seed}: {time.time() - t0:.0f} s", flush=True)
    return json.loads(results.read_text().splitlines()[-1])


def held_out_accuracy(record: dict, env: int, sizes: dict[str, int]) -> float:
    """Accuracy over the whole held-out domain (in and out splits, weighted by size)."""
    a_in, a_out = record[f"env{env}_in_acc"], record[f"env{env}_out_acc"]
    return (a_in * sizes["in"] + a_out * sizes["out"]) / (sizes["in"] + sizes["out"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="Digits")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", default="/tmp/shiftbench_digits_erm")
    p.add_argument("--checkpoint-freq", type=int, default=None,
                   help="evaluation interval (default: --steps, i.e. first and last step only)")
    p.add_argument("--hparams", default=None, help="JSON hparams override, e.g. a smaller batch")
    p.add_argument("--envs", type=int, nargs="+", default=None,
                   help="only these held-out domains (to split the runs over processes)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--no-table", action="store_true", help="train only, print no table")
    p.add_argument("--report-only", action="store_true",
                   help="print the table from finished trials only (train nothing)")
    ns = p.parse_args()
    cls = get_dataset_class(ns.dataset)
    ds = cls(None, [], {})
    out = Path(ns.out)
    rows = []
    for env, name in enumerate(cls.ENVIRONMENTS):
        if ns.envs is not None and env not in ns.envs:
            continue
        n = len(ds[env])
        sizes = {"out": int(n * 0.2), "in": n - int(n * 0.2)}
        held, within = [], []
        for seed in ns.seeds:
            if ns.report_only:
                rec = finished(out / f"env{env}_seed{seed}", ns.steps)
                if rec is None:
                    continue
            else:
                rec = run(out, env, seed, ns.steps, ns.dataset, ns.checkpoint_freq or ns.steps,
                          ns.hparams, ns.precision)
            held.append(held_out_accuracy(rec, env, sizes))
            within.append(statistics.mean(rec[f"env{j}_out_acc"] for j in range(len(ds))
                                          if j != env))
        rows.append((name, held, within))
    if ns.no_table:
        return
    print("| held-out domain | held-out accuracy (per seed) | mean | in-domain validation "
          "accuracy (mean over seeds) |")
    print("| --- | --- | --- | --- |")
    for name, held, within in rows:
        if not held:
            print(f"| `{name}` | (not run) | - | - |")
            continue
        print(f"| `{name}` | {', '.join(f'{a:.3f}' for a in held)} | {statistics.mean(held):.3f} "
              f"| {statistics.mean(within):.3f} |")


if __name__ == "__main__":
    main()
