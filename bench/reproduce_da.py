"""Published unsupervised-DA effects reproduced on the offline digits (docs/reproductions.md).

Every trial goes through the trainer (`shiftbench.trainer.train`). The default task, mnist ->
mnist_m, runs on `DigitsMnistM`: the Digits domains `mnist` (index 0) and `mnist_m` (index 1)
only, 3x28x28 RGB, 5,000 images each. Its splits are those of `Digits` with source mnist and
target mnist_m (a split depends only on the trial seed and the domain's index, which are the
same), so `Digits --source-envs 0 --test-envs 1` runs the same task. The other pairs of the
`digits` task suite (`--task mnist:lowres` etc.) run on `Digits` itself with `source_envs` = the
source and `test_envs` = the target. Every trial uses the `dann_digits` preset (the DANN paper's
MNIST network, SGD with momentum 0.9, lr 0.01 / (1 + 10 p)^0.75, batches of 64 source + 64
target). Trial seed = seed: every arm of an effect sees identical splits and batches at a seed
(paired comparison).

Effects (each arm is one trial per seed; arms shared between effects run once):

* `dann`: source-only (ERM, task uda: it ignores the target batches), DANN, and train-on-target
  (ERM trained on the target's labeled training split, task dg with the source held out).
* `cdan`: CDAN+E vs DANN; `cdan_wide`: the same two with a 1024-1024 domain classifier.
* `self_training`: CBST and CRST vs source-only.
* `shot`: SHOT (source-free target phase) vs source-only.  * `adabn`: AdaBN vs source-only.
* `mcc`, `mcd`: MCC and MCD vs source-only.
* `adabn_clean`: AdaBN vs the same BatchNorm network, trained identically, evaluated with its
  source statistics (`AdaBN` with `eval_statistics=source`: the paper's baseline).

Reported per trial (last checkpoint, as the papers report the end of training): accuracy on the
target's held-out split (`env1_in`, inductive), on its unlabeled split (`env1_uda`, what DA papers
report: transductive), on its validation split (`env1_out`, the split train-on-target is measured
on because it trains on the others) and on the source validation split (`env0_out`); on `Digits`
the indices are the domains' (e.g. `env3_*` for lowres).

Usage (2 jobs at a time, one torch thread each):

    nice -n 10 python bench/reproduce_da.py run --effects dann --seeds 0 1 2 --steps 1000 \
        --out DIR --jobs 2
    python bench/reproduce_da.py report --out DIR
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import torch

from shiftbench.datasets import register_dataset
from shiftbench.datasets.base import DATASETS, MultiDomainDataset, TensorDomain
from shiftbench.datasets.digits import Digits, build_digits

PRESET = "dann_digits"


class DigitsMnistM(MultiDomainDataset):
    """Digits' `mnist` and `mnist_m` (indices 0 and 1, as in Digits), 3x28x28."""

    ENVIRONMENTS = ("mnist", "mnist_m")
    INPUT_SHAPE = Digits.INPUT_SHAPE
    NUM_CLASSES = 10
    CLASSES = Digits.CLASSES
    N_STEPS = 1000
    CHECKPOINT_FREQ = 250
    SOURCE = "Digits (mnist, mnist_m)"

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        envs = build_digits()
        self.datasets = [TensorDomain(*envs[name], name=name) for name in self.ENVIRONMENTS]


if "DigitsMnistM" not in DATASETS:
    register_dataset(DigitsMnistM)

# arm -> (algorithm, task): uda arms train on the source and adapt to the target; the dg arm
# (train-on-target) trains on the target's labels with the source held out
ARMS = {
    "source_only": ("ERM", "uda"),
    "dann": ("DANN", "uda"),
    "target_only": ("ERM", "dg"),
    "cdan_e": ("CDANE", "uda"),
    "cbst": ("CBST", "uda"),
    "crst": ("CRST", "uda"),
    "shot": ("SHOT", "uda"),
    "adabn": ("AdaBN", "uda"),
    "adabn_source": ("AdaBN", "uda"),
    # CDAN+E with the exact multilinear map (768 x 10 = 7,680 dims) instead of the randomized one
    "cdan_e_exact": ("CDANE", "uda"),
    "dann_wide": ("DANN", "uda"),
    "cdan_e_wide": ("CDANE", "uda"),
    "mcc": ("MCC", "uda"),
    "mcd": ("MCD", "uda"),
}
# CDAN's domain classifier (Long et al. 2018): two hidden layers of 1,024 (the preset's has one of 100)
WIDE_DISCRIMINATOR = {"disc_width": 1024, "disc_depth": 3}
# hparams an arm sets on top of the preset
ARM_HPARAMS = {
    "cdan_e_exact": {"multilinear_max": 8192},
    "adabn_source": {"eval_statistics": "source"},
    "dann_wide": WIDE_DISCRIMINATOR,
    "cdan_e_wide": WIDE_DISCRIMINATOR,
}
EFFECTS = {
    "dann": ["source_only", "dann", "target_only"],
    "cdan": ["dann", "cdan_e", "cdan_e_exact"],
    "cdan_wide": ["dann_wide", "cdan_e_wide"],
    "self_training": ["source_only", "cbst", "crst"],
    "shot": ["source_only", "shot"],
    "adabn": ["source_only", "adabn"],
    "adabn_clean": ["adabn_source", "adabn"],
    "mcc": ["source_only", "mcc"],
    "mcd": ["source_only", "mcd"],
}
# source:target pairs of the `digits` task suite (sweeps/tasks.py); mnist:mnist_m runs on DigitsMnistM
DEFAULT_TASK = "mnist:mnist_m"
TASKS = ("mnist:mnist_m", "synth:mnist", "mnist:lowres", "lowres:mnist")


def task_setup(task: str) -> tuple[str, int, int]:
    """(dataset, source index, target index) of a `source:target` task."""
    if task == DEFAULT_TASK:
        return "DigitsMnistM", 0, 1
    source, target = task.split(":")
    return "Digits", Digits.ENVIRONMENTS.index(source), Digits.ENVIRONMENTS.index(target)


def trial_dir(out: Path, arm: str, seed: int, steps: int, task: str = DEFAULT_TASK,
              precision: str = "fp32") -> Path:
    """`out/arm_sSEED_STEPS` for mnist:mnist_m, `out/SOURCE-TARGET/...` for the other tasks;
    `_bf16` marks bf16 trials so they are never paired with fp32 ones."""
    name = f"{arm}_s{seed}_{steps}" + ("" if precision == "fp32" else f"_{precision}")
    return out / name if task == DEFAULT_TASK else out / task.replace(":", "-") / name


def run_trial(job: tuple[str, int, int, str, str, str]) -> str:
    """One trial through the trainer (`shiftbench.trainer.train`), in its own process with one
    torch thread; the preset is resolved as `shiftbench train --hparams-preset` does."""
    arm, seed, steps, out, precision, task = job
    from shiftbench.presets import with_preset
    from shiftbench.trainer import TrainArgs, train

    torch.set_num_threads(1)
    algorithm, setting = ARMS[arm]
    dataset, source, target = task_setup(task)
    if setting == "dg":  # train-on-target: the target's labels, the source held out
        source, target = target, source
    # DigitsMnistM has only the two domains: all-but-test-envs is the source already
    source_envs = None if dataset == "DigitsMnistM" else [source]
    d = trial_dir(Path(out), arm, seed, steps, task, precision)
    start = time.time()
    hparams = json.dumps(with_preset(PRESET, algorithm, dataset, ARM_HPARAMS.get(arm)), sort_keys=True)
    try:
        train(TrainArgs(dataset=dataset, algorithm=algorithm, task=setting, source_envs=source_envs,
                        test_envs=[target], hparams=hparams, trial_seed=seed, seed=seed,
                        steps=steps, checkpoint_freq=max(1, steps // 4), precision=precision,
                        output_dir=str(d), skip_model_save=True), log=lambda m: None,
              progress=False)
    except Exception as e:  # reported, the other trials go on
        return f"{task} {arm} seed {seed}: FAILED ({type(e).__name__}: {e})"
    return f"{task} {arm} seed {seed}: done in {time.time() - start:.0f} s"


def cmd_run(ns: argparse.Namespace) -> None:
    arms = ns.arms or list(dict.fromkeys(a for e in ns.effects for a in EFFECTS[e]))
    jobs = [(arm, seed, ns.steps, ns.out, ns.precision, ns.task) for seed in ns.seeds for arm in arms]
    Path(ns.out).mkdir(parents=True, exist_ok=True)
    with multiprocessing.get_context("fork").Pool(ns.jobs, maxtasksperchild=1) as pool:
        for line in pool.imap_unordered(run_trial, jobs):
            print(line, flush=True)


def last_record(d: Path) -> dict | None:
    if not (d / "done").exists():
        return None
    lines = (d / "results.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def _values(records: list[dict], key: str) -> list[float]:
    return [r[key] for r in records if key in r]


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.mean(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    se = 100 * statistics.stdev(values) / len(values) ** 0.5
    return f"{mean:.1f} ± {se:.1f}"


def cmd_report(ns: argparse.Namespace) -> None:
    out = Path(ns.out)
    _, source, target = task_setup(ns.task)
    t_in, t_uda, t_out = (f"env{target}_{split}_acc" for split in ("in", "uda", "out"))
    for effect in ns.effects:
        arms = EFFECTS[effect]
        rows = {}
        for arm in arms:
            for seed in ns.seeds:
                rec = last_record(trial_dir(out, arm, seed, ns.steps, ns.task, ns.precision))
                if rec is not None:
                    rows[(arm, seed)] = rec
        print(f"\n### {effect} on {ns.task} ({ns.steps} steps, {ns.precision}; "
              "mean ± standard error over seeds)\n")
        print("| arm | seeds | target held-out (in) | target unlabeled (uda) | target val (out) "
              "| source val | per seed (uda) | CPU min / trial |")
        print("|---|---|---|---|---|---|---|---|")
        for arm in arms:
            recs = [rows[(arm, s)] for s in ns.seeds if (arm, s) in rows]
            if not recs:
                print(f"| {arm} | 0 | | | | | | |")
                continue
            # source val: train-on-target's training domain is the target
            src = t_out if ARMS[arm][1] == "dg" else f"env{source}_out_acc"
            per_seed = ", ".join(f"{100 * r.get(t_uda, float('nan')):.1f}" for r in recs)
            cpu = statistics.mean(r["cpu_time"] for r in recs) / 60
            cells = [_fmt(_values(recs, k)) for k in (t_in, t_uda, t_out, src)]
            print(f"| {arm} | {len(recs)} | " + " | ".join(cells) + f" | {per_seed} | {cpu:.1f} |")
        base = arms[0]
        for arm in arms[1:]:
            for key in (t_uda, t_in):
                diffs = [rows[(arm, s)][key] - rows[(base, s)][key] for s in ns.seeds
                         if (arm, s) in rows and (base, s) in rows and key in rows[(arm, s)]
                         and key in rows[(base, s)]]
                if diffs:
                    print(f"\n{arm} - {base} on {key}: per seed "
                          + ", ".join(f"{100 * d:+.1f}" for d in diffs)
                          + f"; mean {100 * statistics.mean(diffs):+.1f}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "report"):
        q = sub.add_parser(name)
        q.add_argument("--effects", nargs="+", choices=sorted(EFFECTS), default=["dann"])
        q.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
        q.add_argument("--steps", type=int, default=1000)
        q.add_argument("--out", required=True)
        q.add_argument("--task", choices=TASKS, default=DEFAULT_TASK, help="source:target digits pair")
        q.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
        if name == "run":
            q.add_argument("--jobs", type=int, default=2)
            q.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=None,
                           help="run these arms only (default: every arm of --effects)")
    ns = p.parse_args(argv)
    (cmd_run if ns.cmd == "run" else cmd_report)(ns)


if __name__ == "__main__":
    sys.exit(main())
