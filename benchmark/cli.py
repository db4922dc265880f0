"""The `shiftbench` command line (also `python -m shiftbench`).

Subcommands are contributed by modules: this file defines `train` and `list`; each module named
in `COMMAND_MODULES` that exists adds its own through a `register(subparsers)` function. Flags
use dashes; DomainBed's underscore spellings (`--test_envs`, ...) are accepted as aliases.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from shiftbench.errors import ShiftbenchError

COMMAND_MODULES = (
    "shiftbench.sweeps.cli",
    "shiftbench.results.cli",
    "shiftbench.datasets.cli",
    "shiftbench.demo",
)


def flag(name: str) -> list[str]:
    """`--test-envs` plus DomainBed's `--test_envs` when the two differ."""
    dashed = "--" + name.replace("_", "-")
    underscored = "--" + name.replace("-", "_")
    return [dashed] if dashed == underscored else [dashed, underscored]


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    from shiftbench.trainer import EVAL_SPLIT_CHOICES, PRECISIONS, TTA_MODES

    p.add_argument(*flag("dataset"), default="RotatedMNIST")
    p.add_argument(*flag("algorithm"), default="ERM")
    p.add_argument(*flag("test_envs"), nargs="+", default=["0"],
                   help="held-out environments, by index or name")
    p.add_argument(*flag("task"), default="dg",
                   help="dg | uda | ssda | sda | tta (DomainBed's domain_generalization and "
                        "domain_adaptation are accepted)")
    p.add_argument(*flag("hparams"), default=None, help="JSON object overriding hparams")
    p.add_argument(*flag("hparams_preset"), default=None, metavar="NAME",
                   help="a named protocol (network + hparams) under --hparams, e.g. dann_digits "
                        "(the DANN paper's MNIST network and SGD schedule); see shiftbench.presets")
    p.add_argument(*flag("backbone"), default=None, metavar="NAME",
                   help="featurizer for large images (the `backbone` hparam): resnet50, "
                        "resnet18 or any timm model, e.g. vit_small_patch16_224, convnext_tiny")
    p.add_argument(*flag("weights"), default=None, metavar="PATH",
                   help="load the backbone's weights from this local file (the `weights` hparam)")
    p.add_argument(*flag("hparams_seed"), type=int, default=0, help="0 = defaults")
    p.add_argument(*flag("trial_seed"), type=int, default=0, help="fixes every split")
    p.add_argument(*flag("seed"), type=int, default=0, help="initialisation and sampling")
    p.add_argument(*flag("steps"), type=int, default=None)
    p.add_argument(*flag("checkpoint_freq"), type=int, default=None)
    p.add_argument(*flag("holdout_fraction"), type=float, default=0.2)
    p.add_argument(*flag("uda_holdout_fraction"), type=float, default=None,
                   help="fraction of a target domain given unlabeled (default 0.5 in uda/ssda)")
    p.add_argument(*flag("target_shots"), type=int, default=3,
                   help="labeled target examples per class in ssda/sda")
    p.add_argument(*flag("tta_mode"), choices=TTA_MODES, default="continual")
    p.add_argument(*flag("eval_splits"), choices=EVAL_SPLIT_CHOICES, default="selection",
                   help="'selection': the splits model selection reads (skips training domains' "
                        "training splits); 'all': every split, as DomainBed")
    p.add_argument(*flag("precision"), choices=PRECISIONS, default="fp32",
                   help="'bf16': bfloat16 autocast of forward passes (much faster on CPUs with "
                        "AVX-512 BF16/AMX and on recent GPUs); weights stay float32")
    p.add_argument(*flag("output_dir"), default="train_output")
    p.add_argument(*flag("data_dir"), default=None)
    p.add_argument(*flag("device"), default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument(*flag("threads"), type=int, default=None, help="torch CPU threads")
    p.add_argument(*flag("skip_model_save"), action="store_true")
    p.add_argument(*flag("save_model_every_checkpoint"), action="store_true")
    p.add_argument(*flag("progress"), action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    p.add_argument(*flag("import"), dest="imports", action="append", default=[],
                   metavar="MODULE", help="import a module that registers algorithms/datasets")


TASK_ALIASES = {"domain_generalization": "dg", "domain_adaptation": "uda"}


def import_user_modules(modules: Sequence[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ShiftbenchError(f"--import {name}: cannot import it ({e})") from e


def cmd_train(ns: argparse.Namespace) -> int:
    import torch

    from shiftbench.backbones import merge_backbone_flags
    from shiftbench.trainer import TrainArgs, summarize, train

    import_user_modules(ns.imports)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    hparams = ns.hparams
    if ns.hparams_preset:
        from shiftbench.hparams_registry import parse_overrides
        from shiftbench.presets import with_preset

        hparams = json.dumps(with_preset(ns.hparams_preset, ns.algorithm, ns.dataset,
                                         parse_overrides(ns.hparams)), sort_keys=True)
    args = TrainArgs(
        dataset=ns.dataset, algorithm=ns.algorithm, test_envs=list(ns.test_envs),
        task=TASK_ALIASES.get(ns.task, ns.task),
        hparams=merge_backbone_flags(hparams, ns.backbone, ns.weights),
        hparams_seed=ns.hparams_seed, trial_seed=ns.trial_seed, seed=ns.seed, steps=ns.steps,
        checkpoint_freq=ns.checkpoint_freq, holdout_fraction=ns.holdout_fraction,
        uda_holdout_fraction=ns.uda_holdout_fraction, target_shots=ns.target_shots,
        tta_mode=ns.tta_mode, eval_splits=ns.eval_splits, precision=ns.precision, output_dir=ns.output_dir,
        data_dir=ns.data_dir, device=ns.device, skip_model_save=ns.skip_model_save,
        save_model_every_checkpoint=ns.save_model_every_checkpoint)
    records = train(args, progress=ns.progress)
    print("final: " + summarize(records, args.test_envs), flush=True)
    return 0


def cmd_list(ns: argparse.Namespace) -> int:
    from tabulate import tabulate

    import_user_modules(ns.imports)
    if ns.what == "algorithms":
        from shiftbench.algorithms import Algorithm, get_algorithm_class, list_algorithms
        from shiftbench.hparams_registry import DatasetInfo

        ds = DatasetInfo(ns.dataset or "RotatedMNIST", (1, 28, 28), 10)
        if ns.dataset:
            from shiftbench.hparams_registry import dataset_info

            ds = dataset_info(ns.dataset)
        base_keys = set(Algorithm.hparam_space(ds))
        rows = []
        for name in list_algorithms(ns.pattern):
            cls = get_algorithm_class(name)
            space = cls.hparam_space(ds)
            own = {k: hp for k, hp in space.items() if k not in base_keys or ns.all_hparams}
            rows.append({"algorithm": name, "settings": ",".join(cls.SETTINGS),
                         "paper": cls.PAPER,
                         "hparams (default / search)": "; ".join(
                             f"{k}={hp.describe()}" for k, hp in own.items())})
    else:
        from shiftbench.datasets import get_dataset_class, list_datasets

        rows = []
        for name in list_datasets(ns.pattern):
            cls = get_dataset_class(name)
            rows.append({"dataset": name, "environments": ",".join(cls.ENVIRONMENTS),
                         "input_shape": "x".join(map(str, cls.INPUT_SHAPE)),
                         "classes": cls.NUM_CLASSES, "steps": cls.N_STEPS,
                         "source": cls.SOURCE})
    if ns.format == "json":
        print(json.dumps(rows, indent=1))
    else:
        print(tabulate(rows, headers="keys", tablefmt="simple", maxcolwidths=60))
    return 0


def build_parser() -> argparse.ArgumentParser:
    import shiftbench

    parser = argparse.ArgumentParser(
        prog="shiftbench", description="Domain generalization and adaptation benchmark suite")
    parser.add_argument("--version", action="version", version=shiftbench.__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="run one trial")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("list", help="list registered algorithms or datasets")
    p.add_argument("what", choices=("algorithms", "datasets"))
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'C*'")
    p.add_argument("--dataset", default=None, help="show hparams as resolved for this dataset")
    p.add_argument("--all-hparams", action="store_true", help="include the generic hparams")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument(*flag("import"), dest="imports", action="append", default=[],
                   metavar="MODULE")
    p.set_defaults(func=cmd_list)

    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if not module_name.startswith(str(e.name)):
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        return int(ns.func(ns) or 0)
    except ShiftbenchError as e:
        print(f"shiftbench: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("shiftbench: interrupted; the run can be resumed with the same command",
              file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _broken_pipe()


def _broken_pipe() -> int:
    """The reader of our output went away (`shiftbench data --json | head`): stop quietly, with
    the status a process killed by SIGPIPE has, and keep Python from complaining at exit when
    it flushes stdout."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141


if __name__ == "__main__":
    raise SystemExit(main())
