"""The `shiftbench` command line (also `python -m shiftbench`).

This file defines `train` and `list`; the other subcommands live in the modules of `COMMANDS`,
each adding its own through a `register(subparsers)` function. Only the module of the chosen
command is imported (the others appear in `--help` by name), and `train`/`list` check names
against `shiftbench.catalog` first, so that help, listings and input errors answer without
importing torch. Flags use dashes; DomainBed's underscore spellings (`--test_envs`, ...) are
accepted as aliases.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from shiftbench.errors import ShiftbenchError, UnknownNameError
from shiftbench.options import add_flags, flag_names
from shiftbench.setting import ALIASES as TASK_ALIASES
from shiftbench.setting import check_supports, setting_names
from shiftbench.trial_record import TrialSpec, trial_options

# Subcommand -> (module that registers it, one-line help shown by `shiftbench --help`).
COMMANDS = {
    "sweep": ("shiftbench.sweeps.cli", "launch and manage sweeps of trials"),
    "collect": ("shiftbench.results.cli", "model selection and result tables for a sweep directory"),
    "data": ("shiftbench.datasets.cli", "datasets present under --data-dir; download them; build "
                                        "image caches"),
    "demo": ("shiftbench.demo", "a small real sweep on the built-in digits, with report"),
    "compare": ("shiftbench.sweeps.compare_cli", "compare an algorithm with baselines on a suite "
                                                 "at an identical budget"),
}
COMMAND_MODULES = tuple(dict.fromkeys(module for module, _ in COMMANDS.values()))
SETTINGS_ORDER = setting_names()


def flag(name: str) -> list[str]:
    """`--test-envs` plus DomainBed's `--test_envs` when the two differ."""
    return flag_names(name)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per `TrialSpec` option (generated from its declaration), then the flags that
    only say how to build or run it."""
    add_flags(p, [o for o in trial_options().values() if o.declaration.flag])
    p.add_argument(*flag("hparams_preset"), default=None, metavar="NAME",
                   help="a named protocol (network + hparams) under --hparams, e.g. dann_digits "
                        "(the DANN paper's MNIST network and SGD schedule); see shiftbench.presets")
    p.add_argument(*flag("backbone"), default=None, metavar="NAME",
                   help="featurizer for large images (the `backbone` hparam): resnet50, "
                        "resnet18 or any timm model, e.g. vit_small_patch16_224, convnext_tiny")
    p.add_argument(*flag("weights"), default=None, metavar="PATH",
                   help="load the backbone's weights from this local file (the `weights` hparam)")
    p.add_argument(*flag("threads"), type=int, default=None, help="torch CPU threads")
    p.add_argument(*flag("progress"), action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    p.add_argument(*flag("logger"), dest="loggers", nargs="+", action="extend", default=[],
                   choices=("csv", "tensorboard", "wandb", "mlflow"), metavar="LOGGER",
                   help="experiment loggers, several at once: csv, tensorboard, wandb (offline "
                        "unless WANDB_MODE says otherwise), mlflow; files go in --output-dir")
    p.add_argument(*flag("import"), dest="imports", action="append", default=[],
                   metavar="MODULE", help="import a module that registers algorithms/datasets")


def spec_from_flags(ns: argparse.Namespace, **values: Any) -> TrialSpec:
    """The `TrialSpec` of parsed `train` flags (`values` replace some)."""
    given = {name: getattr(ns, name) for name, o in trial_options().items() if o.declaration.flag}
    return TrialSpec(**{**given, **values})


def import_user_modules(modules: Sequence[str]) -> None:
    """Import each module, finding it in the current folder first (as `python -m` does)."""
    if modules:
        here = os.getcwd()
        if here not in sys.path and "" not in sys.path:
            sys.path.insert(0, here)
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            where = ""
            if isinstance(e, ModuleNotFoundError) and e.name in (name, name.split(".")[0]):
                searched = [p or os.getcwd() for p in sys.path if not p.endswith(".zip")]
                where = f"; searched the current folder and the Python path: {', '.join(searched)}"
            raise ShiftbenchError(f"--import {name}: cannot import it ({e}){where}") from e


def check_names(algorithm: str | None = None, dataset: str | None = None, task: str | None = None,
                imports: Sequence[str] = (), test_envs: Sequence[str] = ()) -> None:
    """Refuse an unknown algorithm, dataset or held-out environment, or a setting the algorithm
    lacks, from the index (no torch import). Names the index cannot know (plug-ins) are left to
    the real registries."""
    from shiftbench import catalog
    from shiftbench.datasets.lookup import environment_index

    if dataset is not None and not catalog.needs_import("datasets", dataset, imports):
        if dataset not in catalog.dataset_index():
            raise UnknownNameError("dataset", dataset, catalog.dataset_index())
        for env in test_envs:
            environment_index(dataset, catalog.dataset_index()[dataset].environments, env)
    if algorithm is None or catalog.needs_import("algorithms", algorithm, imports):
        return
    index = catalog.algorithm_index()
    if algorithm not in index:
        raise UnknownNameError("algorithm", algorithm, index)
    if task is not None and task in SETTINGS_ORDER:
        check_supports(algorithm, index[algorithm].settings, task)


def cmd_train(ns: argparse.Namespace) -> int:
    task = TASK_ALIASES.get(ns.task, ns.task)
    check_names(ns.algorithm, ns.dataset, task, ns.imports, ns.test_envs)
    if ns.hparams:
        from shiftbench.hparams import parse_overrides

        parse_overrides(ns.hparams)  # malformed JSON is reported before torch loads

    import torch

    from shiftbench.backbones import merge_backbone_flags
    from shiftbench.trainer import summarize, train

    import_user_modules(ns.imports)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    hparams = ns.hparams
    if ns.hparams_preset:
        from shiftbench.hparams import parse_overrides
        from shiftbench.presets import PRESETS, with_preset

        hparams = json.dumps(with_preset(ns.hparams_preset, ns.algorithm, ns.dataset,
                                         parse_overrides(ns.hparams)), sort_keys=True)
        if ns.steps is None:  # the paper's iterations, unless --steps says otherwise
            ns.steps = PRESETS[ns.hparams_preset].steps
    args = spec_from_flags(ns, task=task,
                           hparams=merge_backbone_flags(hparams, ns.backbone, ns.weights))
    if args.da_mode is None:  # the preset's mode (dann_digits: transductive)
        from shiftbench.presets import default_da_mode

        args.da_mode = default_da_mode(ns.hparams_preset, task)
    from shiftbench.loggers import make_loggers

    records = train(args, progress=ns.progress,
                    callbacks=make_loggers(getattr(ns, "loggers", []), args.output_dir))
    print(textwrap.fill("final: " + summarize(records, args.test_envs), 80,
                        subsequent_indent="  "), flush=True)
    return 0


def terminal_width() -> int:
    """The terminal's columns (COLUMNS when set), 80 when not a terminal."""
    import shutil

    return max(40, shutil.get_terminal_size((80, 24)).columns)


def fit_table(rows: list[dict], wrap: Sequence[str], width: int) -> str:
    """`rows` as a table no wider than `width` where possible, wrapping the columns `wrap`."""
    from tabulate import tabulate

    if not rows:
        return "(none)"
    keys = list(rows[0])
    limits = {k: max(len(str(k)), *(len(str(r[k])) for r in rows)) for k in wrap}
    while True:
        text = tabulate(rows, headers="keys", tablefmt="simple", disable_numparse=True,
                        maxcolwidths=[limits.get(k) for k in keys])
        excess = max(len(line) for line in text.splitlines()) - width
        widest = max(limits, key=limits.get)
        if excess <= 0 or limits[widest] <= 12:
            return text
        limits[widest] = max(12, limits[widest] - excess)


def _algorithm_blocks(ns: argparse.Namespace) -> tuple[list[dict], str]:
    """Rows with hparams, from the imported classes (resolved for --dataset), and their text: one
    block per algorithm, one line per hyperparameter."""
    import textwrap

    from shiftbench.algorithms import Algorithm, get_algorithm_class, list_algorithms
    from shiftbench.hparams import DatasetInfo, dataset_info

    ds = dataset_info(ns.dataset) if ns.dataset else DatasetInfo("RotatedMNIST", (1, 28, 28), 10)
    base_keys = set(Algorithm.hparam_space(ds))
    rows, lines = [], [f"hyperparameters resolved for {ds.name}: name = default  (search space)"]
    for name in list_algorithms(ns.pattern):
        cls = get_algorithm_class(name)
        space = cls.hparam_space(ds)
        own = {k: hp for k, hp in space.items() if k not in base_keys or ns.all_hparams}
        rows.append({"algorithm": name, "settings": ",".join(cls.SETTINGS), "paper": cls.PAPER,
                     "hparams": {k: hp.describe() for k, hp in own.items()}})
        lines += ["", f"{name} ({', '.join(cls.SETTINGS)})"]
        lines += textwrap.wrap(cls.PAPER, terminal_width() - 2, initial_indent="  ",
                               subsequent_indent="  ")
        for k, hp in own.items():
            default, _, search = hp.describe().partition(" / ")
            lines.append(f"    {k} = {default}" + (f"  ({search})" if search else ""))
    return rows, "\n".join(lines)


def cmd_list(ns: argparse.Namespace) -> int:
    import fnmatch

    from shiftbench import catalog

    import_user_modules(ns.imports)
    kind = ns.what
    if kind == "suites":
        from shiftbench.sweeps.suites import list_suites

        rows = [r for r in list_suites() if fnmatch.fnmatchcase(r["suite"], ns.pattern)]
        if ns.format == "json":
            print(json.dumps(rows, indent=1))
            return 0
        print(fit_table([{k: v for k, v in r.items() if k != "description"} for r in rows],
                        ["datasets", "rules"], terminal_width()))
        print("\n" + "\n".join(f"{r['suite']}: {r['description']}" for r in rows))
        print("\nrun one: shiftbench compare --algorithm NAME --against ERM --suite SUITE")
        return 0
    plugins = bool(ns.imports or catalog.plugin_entry_points(kind))
    if kind == "algorithms" and (ns.all_hparams or ns.dataset):
        rows, text = _algorithm_blocks(ns)
        print(json.dumps(rows, indent=1) if ns.format == "json" else text)
        return 0
    if kind == "algorithms":
        if plugins:
            from shiftbench.algorithms import get_algorithm_class, list_algorithms

            entries = [(n, get_algorithm_class(n)) for n in list_algorithms(ns.pattern)]
            rows = [{"algorithm": n, "settings": ",".join(c.SETTINGS), "paper": c.PAPER}
                    for n, c in entries]
        else:
            rows = [{"algorithm": e.name, "settings": ",".join(e.settings), "paper": e.paper}
                    for e in catalog.algorithm_index().values()
                    if fnmatch.fnmatchcase(e.name, ns.pattern)]
        wrap, hint = ["paper"], ("hyperparameters (defaults, search spaces): --all-hparams, or\n"
                                 "--dataset NAME for their values on one dataset")
    else:
        if plugins:
            from shiftbench.datasets import get_dataset_class, list_datasets

            entries = [(n, get_dataset_class(n)) for n in list_datasets(ns.pattern)]
            rows = [{"dataset": n, "environments": ", ".join(map(str, c.ENVIRONMENTS)),
                     "input_shape": "x".join(map(str, c.INPUT_SHAPE)), "classes": c.NUM_CLASSES,
                     "steps": c.N_STEPS, "source": c.SOURCE} for n, c in entries]
        else:
            rows = [{"dataset": e.name, "environments": ", ".join(e.environments),
                     "input_shape": "x".join(map(str, e.input_shape)), "classes": e.num_classes,
                     "steps": e.n_steps, "source": e.source}
                    for e in catalog.dataset_index().values()
                    if fnmatch.fnmatchcase(e.name, ns.pattern)]
        wrap, hint = ["environments"], ("where each dataset comes from and whether it is present: "
                                        "shiftbench data list")
    if ns.format == "json":
        print(json.dumps(rows, indent=1))
        return 0
    if kind == "datasets":
        rows = [{k: v for k, v in r.items() if k != "source"} for r in rows]
    print(fit_table(rows, wrap, terminal_width()))
    print("\n" + hint)
    return 0


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand word of `argv` (the first argument that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _available(module: str) -> bool:
    """Whether a command module is installed, found without importing its package."""
    parent = module.rsplit(".", 1)[0]
    try:
        return importlib.util.find_spec(module if parent == "shiftbench" else parent) is not None
    except ModuleNotFoundError:
        return False


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with `argv`, only the chosen command's module is imported (the other commands
    get a placeholder with their help line). Without it, every command is built."""
    import shiftbench

    parser = argparse.ArgumentParser(
        prog="shiftbench", description="Domain generalization and adaptation benchmark suite")
    parser.add_argument("--version", action="version", version=shiftbench.__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="run one trial")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("list", help="list registered algorithms, datasets or comparison "
                                    "suites (--all-hparams: with hyperparameters)")
    p.add_argument("what", choices=("algorithms", "datasets", "suites"))
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'C*'")
    p.add_argument("--dataset", default=None, help="show hparams as resolved for this dataset")
    p.add_argument("--all-hparams", action="store_true",
                   help="show every hyperparameter (default and search space)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument(*flag("import"), dest="imports", action="append", default=[],
                   metavar="MODULE")
    p.set_defaults(func=cmd_list)

    chosen = None if argv is None else _command_of(argv)
    for name, (module_name, help_text) in COMMANDS.items():
        if name in sub.choices or not _available(module_name):
            continue
        if argv is None or name == chosen:
            importlib.import_module(module_name).register(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
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
