"""The Python API for notebooks and scripts: run trials and small sweeps in-process, read records,
get leaderboards as pandas DataFrames and plots as matplotlib figures.

    import shiftbench.api as sb

    records = sb.run_trial("ColoredMNIST", "ERM", test_envs=[2], steps=200, output_dir="out/t")
    sweep = sb.run_sweep("out/sweep", datasets=["ColoredMNIST"], algorithms=["ERM", "IRM"],
                         n_trials=2, steps=200, single_test_envs=True)
    frames = sb.leaderboard("out/sweep")          # {title: DataFrame of means}
    fig = sb.plot_curves(sb.load_records("out/t"))

Everything here wraps the command line's own code (`shiftbench train`, `sweep launch`,
`collect`): a trial or sweep run from Python writes the same directories and records.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import textwrap
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from shiftbench.errors import ShiftbenchError
from shiftbench.progress import duration

__all__ = ["run_trial", "run_sweep", "load_records", "records_frame", "tables", "leaderboard",
           "headline", "compare", "plot_curves", "plot_leaderboard"]


def run_trial(dataset: str, algorithm: str = "ERM", *, output_dir: str | os.PathLike,
              test_envs: Sequence[int | str] = (0,), hparams: Mapping[str, Any] | None = None,
              progress: bool | None = None, quiet: bool = True, loggers: Sequence[str] = (),
              callbacks: Sequence[Any] = (), **args: Any) -> list[dict[str, Any]]:
    """Train one trial (as `shiftbench train`) and return its records, one per checkpoint.

    `args` are the other fields of `shiftbench.trainer.TrainArgs` (task, steps, seed,
    trial_seed, hparams_seed, data_dir, checkpoint_freq, precision, image_cache, ...). Rerunning
    with the same arguments resumes or returns the finished trial's records. Progress goes to
    stderr: a bar on a terminal, else (a notebook, a log file) a line every 30 s and one when
    evaluating; `progress=False` turns it off. `quiet=False` also prints the per-checkpoint table
    `shiftbench train` prints. `loggers` as `--logger` (csv, tensorboard,
    wandb, mlflow); `callbacks`: your own objects with any of `start(spec, hparams)`,
    `step(step, losses)`, `checkpoint(record)`, `end(records)`."""
    from shiftbench.loggers import make_loggers
    from shiftbench.trainer import TrainArgs, train

    try:
        targs = TrainArgs(dataset=dataset, algorithm=algorithm, test_envs=list(test_envs),
                          hparams=json.dumps(dict(hparams), sort_keys=True) if hparams else None,
                          output_dir=str(output_dir), **args)
    except TypeError as e:
        from dataclasses import fields

        raise ShiftbenchError(f"run_trial: {e}; valid arguments: "
                              + ", ".join(f.name for f in fields(TrainArgs))) from None
    return train(targs, log=(lambda msg: None) if quiet else None, progress=progress,
                 callbacks=[*make_loggers(loggers, targs.output_dir), *callbacks])


def run_sweep(output_dir: str | os.PathLike, *, datasets: Sequence[str],
              algorithms: Sequence[str] = ("ERM",), data_dir: str | None = None,
              loggers: Sequence[str] = (), progress: bool = True, **spec: Any):
    """Run a sweep in this process, one job after another, and return it read back
    (`shiftbench.results.reading.Sweep`).

    `spec` holds the other fields of `shiftbench.sweeps.spec.SweepSpec` (task, n_trials,
    n_hparams, steps, single_test_envs, hparams, test_envs, ...). Each job runs through the
    sweep worker, as `shiftbench sweep launch` runs it (same directories, hashes, locks and
    attempt logs), so a sweep started here can be resumed or extended from the command line.
    `loggers` as `sweep launch --logger` (files in each job's folder). `progress`: a line on
    stderr as each job starts and ends (the jobs' own output goes to their folders)."""
    from shiftbench.results.reading import read_sweep
    from shiftbench.sweeps import worker
    from shiftbench.sweeps.jobs import enumerate_jobs, resolve_seeding
    from shiftbench.sweeps.spec import SweepSpec
    from shiftbench.trial_record import ERR_FILE, OUT_FILE

    try:
        sweep_spec = SweepSpec(datasets=list(datasets), algorithms=list(algorithms), **spec)
    except TypeError as e:
        from dataclasses import fields

        raise ShiftbenchError(f"run_sweep: {e}; valid arguments: "
                              + ", ".join(f.name for f in fields(SweepSpec))) from None
    sweep_spec.validate()
    seeding, note = resolve_seeding(sweep_spec, output_dir, data_dir)
    if note:
        print(f"note: {note}", file=sys.stderr)
    jobs = enumerate_jobs(sweep_spec, output_dir, data_dir=data_dir, seeding=seeding)
    if loggers:
        import dataclasses

        from shiftbench.loggers import make_loggers

        make_loggers(loggers, output_dir)  # a missing package fails before any job runs
        jobs = [dataclasses.replace(j, loggers=tuple(loggers)) for j in jobs]
    failed = []
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda line: None)
    start = time.monotonic()
    for i, job in enumerate(jobs, 1):
        a = job.args
        say(f"job {i}/{len(jobs)}: {a.algorithm} on {a.dataset} ({a.task}), held out "
            f"{a.test_envs}, trial {a.trial_seed} ...")
        job.prepare()
        # the job's output goes where a launched job's goes: out.txt and err.txt in its folder
        with open(job.dir / OUT_FILE, "a") as out, open(job.dir / ERR_FILE, "a") as err, \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = worker.run(job.worker_args())
        if code == 130:
            raise KeyboardInterrupt
        if code != 0:
            failed.append(f"{job.describe()} (exit {code}, {job.dir})")
        elapsed = time.monotonic() - start
        say(f"job {i}/{len(jobs)} {'done' if code == 0 else f'FAILED (exit {code})'}; "
            f"{duration(elapsed)} so far"
            + (f", ETA {duration(elapsed / i * (len(jobs) - i))}" if i < len(jobs) else ""))
    if failed:
        raise ShiftbenchError(f"{len(failed)} of {len(jobs)} jobs failed:\n" + "\n".join(failed))
    return read_sweep(output_dir)


def load_records(path: str | os.PathLike, *, only_done: bool = False) -> list[dict[str, Any]]:
    """Every record under a trial or sweep directory (`results.jsonl` files)."""
    from shiftbench.results.reading import as_records, read_sweep

    return as_records(read_sweep(path, only_done=only_done, quiet=True))


def records_frame(data: str | os.PathLike | Iterable[dict[str, Any]]):
    """Records as a flat pandas DataFrame (one row per checkpoint)."""
    from shiftbench.results.reading import records_to_frame

    return records_to_frame(_records(data))


def _records(data) -> list[dict[str, Any]]:
    if isinstance(data, (str, os.PathLike)):
        return load_records(Path(data))
    from shiftbench.results.reading import as_records

    return as_records(data)


def tables(data, rules: Sequence[str] | None = None, baseline: str | None = "ERM"):
    """Every leaderboard table (`shiftbench.results.table_model.Table`) of a sweep directory,
    a `Sweep` or records, exactly as `shiftbench collect` builds them."""
    from shiftbench.results.reading import Sweep, read_sweep
    from shiftbench.results.tables import collect

    source = read_sweep(data) if isinstance(data, (str, os.PathLike)) else data
    if not isinstance(source, Sweep):
        source = _records(source)
    return collect(source, rules=rules, baseline=baseline).tables


def leaderboard(data, rules: Sequence[str] | None = None, baseline: str | None = "ERM",
                what: str = "mean") -> dict[str, Any]:
    """Every leaderboard table as a pandas DataFrame, keyed by the table's title.

    `what`: "mean" (accuracies in %), "err" (their standard errors), "n" (trials), "p_value"
    (paired test against `baseline`), "display" (the strings `collect` prints) or "health" (the
    health flags of each cell's trials)."""
    return {t.title: t.to_frame(what) for t in tables(data, rules, baseline)}


def headline(data, task: str | None = None, baseline: str | None = "ERM"):
    """The headline leaderboard `shiftbench collect` prints first, as one tidy DataFrame: a row
    per (setting, algorithm), best first, with per-domain accuracies, average, its standard
    error, trials and the paired difference to `baseline` (`shiftbench.results.leaderboard`)."""
    from shiftbench.results import leaderboard as headline_board
    from shiftbench.results.reading import Sweep, read_sweep

    source = read_sweep(data, quiet=True) if isinstance(data, (str, os.PathLike)) else data
    return headline_board(source if isinstance(source, Sweep) else _records(source),
                          task=task, baseline=baseline)


def compare(algorithm: str, against: Sequence[str] | None = None, suite: str = "digits-dg", *,
            output_dir: str | os.PathLike = "shiftbench_store", quiet: bool = True,
            launcher: str = "local", n_parallel: int | None = None, threads: int | None = None,
            **options: Any) -> dict[str, Any]:
    """`shiftbench compare` from Python: runs what the store lacks and returns the tables as
    DataFrames: `algorithms` (mean and 95 % interval per rule, unit and algorithm),
    `differences` (paired difference to each baseline, interval, p-value, Holm-corrected p,
    verdict, detectable difference at 80 % power, trial seeds needed for `detect`), `verdicts`
    (one per rule and baseline) and `published` (reference rows that apply). `options`: steps,
    n_trials, n_hparams, imports, data_dir, dry_run, detect, alpha, rules, fmt."""
    from shiftbench.sweeps.compare_cli import compare as run_compare
    from shiftbench.sweeps.launchers import LaunchOptions

    result = run_compare(algorithm, against, suite, output_dir=str(output_dir), launcher=launcher,
                         launch_options=LaunchOptions(n_parallel=n_parallel, threads=threads,
                                                      progress=not quiet),
                         echo=(lambda *a: None) if quiet else print, **options)
    return result.frames


def plot_curves(data, metric: str = "acc", split: str = "out", ax=None):
    """Accuracy (%) over training steps: one line per trial and environment
    (`env<i>_<split>_<metric>`), held-out environments drawn solid, training ones dashed.
    Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    records = _records(data)
    if not records:
        raise ShiftbenchError("plot_curves: no records")
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    else:
        fig = ax.figure
    trials: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        a = r["args"]
        key = f"{a['algorithm']} {a['dataset']} test={a['test_envs']} seed={a.get('trial_seed', 0)}"
        trials.setdefault(key, []).append(r)
    suffix = f"_{split}_{metric}"
    for key, rs in trials.items():
        rs = sorted(rs, key=lambda r: r["step"])
        test_envs = set(rs[0]["args"]["test_envs"])
        for name in sorted(k for k in rs[0] if k.startswith("env") and k.endswith(suffix)):
            env = int(name[3:-len(suffix)])
            ax.plot([r["step"] for r in rs],
                    [100 * r[name] if isinstance(r.get(name), (int, float)) else None for r in rs],
                    linestyle="-" if env in test_envs else "--",
                    label=f"{key} env{env}{' (test)' if env in test_envs else ''}")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{split} {'accuracy' if metric == 'acc' else metric} (%)")
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_leaderboard(data, title: str | None = None, rules: Sequence[str] | None = None, ax=None):
    """A bar chart of one leaderboard table (by default the first): one group of bars per
    column, one bar per algorithm, error bars = the table's standard errors. Returns the Figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    found = tables(data, rules)
    if not found:
        raise ShiftbenchError("plot_leaderboard: no tables (no finished records?)")
    titles = [t.title for t in found]
    if title is None:
        table = found[0]
    elif title in titles:
        table = found[titles.index(title)]
    else:
        from shiftbench.errors import UnknownNameError

        raise UnknownNameError("table", title, titles)
    mean, err = table.to_frame("mean"), table.to_frame("err")
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(mean.columns)), 3.5))
    else:
        fig = ax.figure
    x = np.arange(len(mean.columns))
    width = 0.8 / max(1, len(mean.index))
    for i, row in enumerate(mean.index):
        ax.bar(x + i * width, mean.loc[row].to_numpy(dtype=float), width,
               yerr=err.loc[row].to_numpy(dtype=float), label=str(row), capsize=2)
    ax.set_xticks(x + width * (len(mean.index) - 1) / 2, [str(c) for c in mean.columns],
                  rotation=30, ha="right")
    # wrapped to the axes' width, so that a long table title is not cut off
    chars = max(20, int(ax.get_position().width * fig.get_figwidth() * 13))
    ax.set_title(textwrap.fill(table.title, chars), fontsize="small")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig
