"""`shiftbench demo`: a small but real sweep on the built-in digits, then leaderboards and a report.

Runs, offline, every algorithm of `DEMO_ALGORITHMS` that is registered (in its setting of
`DEMO_TASKS`, else the first setting it supports in the order dg, uda, ssda, sda, tta), with each
domain held out in turn and 2 trial seeds, on `DigitsDemo` (Digits at 16x16 pixels, 800 images
per domain) with the local launcher; then prints one leaderboard per setting and writes every
table (leaderboard.txt) and an HTML report (report.html). Every algorithm gets the same budget:
the same steps, batch size, learning rate and precision (bfloat16 autocast where the hardware supports it).
Sized to finish in under 5 minutes on 2 idle CPU cores (measurements in docs/sweeps.md); flags
shrink or grow it. A trial's fixed cost is small: the forkserver has torch imported, and the
Digits domains load from their cache without reading the sources
(`shiftbench.datasets.digits.source_fingerprint`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from shiftbench.errors import ShiftbenchError
from shiftbench.progress import fit
from shiftbench.setting import SDA, setting_names
from shiftbench.trial_record import auto_precision

# The demo's algorithms, in table order; the first supported setting of each is used.
DEMO_ALGORITHMS = ("ERM", "DANN", "CORAL", "SagNet", "CCSA", "DeepCORAL")
TASK_ORDER = setting_names()
# Settings other than the first supported one: CCSA in supervised DA, its paper's main setting
# (a few labeled target examples per class), which the demo's tables would otherwise lack.
DEMO_TASKS = {"CCSA": SDA.name}
BASELINE = "ERM"
DEMO_STEPS = 250
DEMO_BATCH_SIZE = 16
DEMO_CNN_WIDTH = 32  # half of DomainBed's small CNN (64-128-128-128): cheaper steps
DEMO_DATASET = "DigitsDemo"
DEMO_MODULE = "shiftbench.demo_data"
# What the defaults cost (measured; figures and machine in docs/benchmarks.md).
DEMO_COST = ("About 4 minutes on 2 idle cores, 7.7 CPU-minutes, the first run on a machine "
             "included (docs/sweeps.md).")


def plan(algorithms: tuple[str, ...] | list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """{task: [algorithms]} for the registered ones, and the names that are missing."""
    from shiftbench.algorithms import ALGORITHM_REGISTRY

    by_task: dict[str, list[str]] = {}
    missing = []
    for name in algorithms:
        if name not in ALGORITHM_REGISTRY:
            missing.append(name)
            continue
        settings = ALGORITHM_REGISTRY.get(name).SETTINGS
        preferred = DEMO_TASKS.get(name)
        task = (preferred if preferred in settings
                else next(t for t in TASK_ORDER if t in settings))
        by_task.setdefault(task, []).append(name)
    # ERM, when asked for, is also the baseline of every other setting (source-only in uda,
    # "S+T" in ssda/sda) so that each table has its paired comparison against ERM.
    if BASELINE in algorithms and BASELINE in ALGORITHM_REGISTRY:
        for task, names in by_task.items():
            if BASELINE not in names and task in ALGORITHM_REGISTRY.get(BASELINE).SETTINGS:
                names.insert(0, BASELINE)
    return {t: by_task[t] for t in TASK_ORDER if t in by_task}, missing


def report(sweep_dir: Path, out: Path) -> str | None:
    """Write every table (leaderboard.txt) and the HTML report (report.html); return the headline
    leaderboards that point to them. None if the results package is not installed."""
    try:
        from shiftbench.results.formats import render
        from shiftbench.results.headline import render_headline
        from shiftbench.results.reading import read_sweep
        from shiftbench.results.tables import collect
    except ModuleNotFoundError:
        return None
    collection = collect(read_sweep(sweep_dir, quiet=True))
    full, html = out / "leaderboard.txt", out / "report.html"
    full.write_text(render(collection, "text"), encoding="utf-8")
    html.write_text(render(collection, "html"), encoding="utf-8")
    return render_headline(collection, full_tables=str(full), report=str(html))


def _git_commit() -> str | None:
    """The commit of the checkout this package runs from, if it is one (else None)."""
    import subprocess

    import shiftbench

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(shiftbench.__file__).parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=Path(shiftbench.__file__).parent, capture_output=True, text=True,
                           timeout=10).stdout.strip()
    return (out.stdout.strip() + ("+modified" if dirty else "")) if out.returncode == 0 else None


def determinism_inputs(precision: str, threads: int) -> dict[str, object]:
    """What a bit-identical rerun must match (docs/sweeps.md): library versions, precision, the
    CPU's instruction set (which kernels run, and whether bf16 is native), threads per trial."""
    import platform

    import numpy
    import torch

    import shiftbench

    flags: list[str] = []
    model = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    break
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return {"shiftbench": shiftbench.__version__, "commit": _git_commit(), "torch": torch.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(),
            "precision": precision, "threads_per_trial": threads, "cpu": model,
            "cpu_simd": simd, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def cmd_demo(ns: argparse.Namespace) -> int:
    import importlib

    from shiftbench.sweeps.jobs import enumerate_jobs
    from shiftbench.sweeps.launchers import LaunchOptions, get_launcher, usable_cores
    from shiftbench.sweeps.spec import SweepSpec
    from shiftbench.sweeps.state import job_state

    importlib.import_module(DEMO_MODULE).ensure_registered()
    from shiftbench.demo_data import DEMO_PER_DOMAIN, DEMO_SIZE

    algorithms = ns.algorithms or list(DEMO_ALGORITHMS)
    by_task, missing = plan(algorithms)
    if missing:
        print(f"not registered in this installation, skipped: {', '.join(missing)}")
    if not by_task:
        raise ShiftbenchError(f"none of the demo algorithms is registered: {', '.join(algorithms)}")
    out = Path(ns.output_dir)
    precision = auto_precision() if ns.precision == "auto" else ns.precision
    hparams: dict = {"batch_size": ns.batch_size, "cnn_width": ns.cnn_width}
    if ns.lr is not None:
        hparams["lr"] = ns.lr
    checkpoint_freq = ns.checkpoint_freq or max(1, ns.steps // 2)
    n_evals = len({*range(0, ns.steps, checkpoint_freq), ns.steps - 1})
    jobs = []
    for task, names in by_task.items():
        spec = SweepSpec(datasets=[DEMO_DATASET], algorithms=names, task=task, n_trials=ns.n_trials,
                         steps=ns.steps, checkpoint_freq=checkpoint_freq, precision=precision,
                         single_test_envs=True, hparams=dict(hparams))
        if ns.held_out:
            spec.test_envs = {DEMO_DATASET: [[e] for e in ns.held_out]}
        spec.validate()
        jobs += enumerate_jobs(spec, out / "sweep", imports=(DEMO_MODULE,))
    envs = ns.held_out or importlib.import_module(DEMO_MODULE).DigitsDemo.ENVIRONMENTS
    cores = usable_cores()
    header = [
        f"shiftbench demo: {len(jobs)} trials = "
        + " + ".join(f"{task}: {', '.join(names)}" for task, names in by_task.items())
        + f" x {len(envs)} held-out domains ({', '.join(envs)}) x {ns.n_trials} trial seeds.",
        f"Data: Digits downsampled to {DEMO_SIZE}x{DEMO_SIZE} px, {DEMO_PER_DOMAIN} images per "
        f"domain. Budget, the same for every algorithm: {ns.steps} steps of batch "
        f"{ns.batch_size} per domain, {n_evals} evaluations per trial, DomainBed's small CNN at "
        f"width {ns.cnn_width} ({ns.cnn_width}-{2 * ns.cnn_width}-{2 * ns.cnn_width}-"
        f"{2 * ns.cnn_width} channels; DomainBed: 64), {precision} precision, default hparams"
        + (f" but lr {ns.lr:g}" if ns.lr is not None else "") + ".",
        f"{cores} CPU core(s), {min(cores, len(jobs))} trials at a time. {DEMO_COST} "
        "--steps, --n-trials, --algorithms and --cnn-width change that.",
        f"Output: {out}"]
    print("\n".join(fit(line) for line in header))
    # The first run on a machine builds the Digits data cache (it says so, and how long it took)
    # here, once, rather than in every parallel trial.
    from shiftbench.datasets.digits import build_digits

    build_digits()
    todo = [j for j in jobs if job_state(j.dir).state in ("not_launched", "incomplete")]
    if len(todo) < len(jobs):
        print(f"{len(jobs) - len(todo)} trial(s) already done or running here; running the rest")
    start = time.time()
    result = get_launcher("local")(todo, LaunchOptions(n_parallel=ns.jobs, progress=ns.progress))
    for line in result.info:
        print(line)
    if result.interrupted:
        print("demo interrupted; run the same command again to resume")
        return 130
    print(f"sweep finished in {time.time() - start:.0f} s: {result.succeeded} trial(s) run, "
          f"{len(result.failed)} failed")
    headline = report(out / "sweep", out)
    if headline is None:
        print("the results package is not installed: no leaderboard or report; the records are in "
              f"{out / 'sweep'}")
        return 1 if result.failed else 0
    print(headline, end="")
    threads = max(1, cores // (ns.jobs or cores))  # as the local launcher
    (out / "demo.json").write_text(json.dumps({
        "algorithms": by_task, "missing": missing, "steps": ns.steps, "n_trials": ns.n_trials,
        "batch_size": ns.batch_size, "lr": ns.lr, "precision": precision,
        "cnn_width": ns.cnn_width, "checkpoint_freq": checkpoint_freq,
        "seconds": time.time() - start, "bit_identical_given": determinism_inputs(precision, threads)},
        indent=1))
    return 1 if result.failed else 0


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="a small real sweep on the built-in digits, with report",
                              description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--output-dir", "--output_dir", dest="output_dir", default="shiftbench_demo")
    p.add_argument("--algorithms", nargs="+", default=None,
                   help=f"default: {' '.join(DEMO_ALGORITHMS)}")
    p.add_argument("--steps", type=int, default=DEMO_STEPS)
    p.add_argument("--n-trials", "--n_trials", dest="n_trials", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=DEMO_BATCH_SIZE,
                   help="examples per domain per step")
    p.add_argument("--cnn-width", type=int, default=DEMO_CNN_WIDTH,
                   help=f"channels of the small CNN's first layer (default {DEMO_CNN_WIDTH}; "
                        "DomainBed: 64)")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate for every algorithm (default: each one's default, 1e-3)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto (default): bf16 where the CPU/GPU computes bfloat16 natively")
    p.add_argument("--checkpoint-freq", type=int, default=None,
                   help="steps between evaluations (default: steps // 2, i.e. 3 evaluations)")
    p.add_argument("--held-out", nargs="+", default=None, metavar="DOMAIN",
                   help="hold out only these domains (default: each in turn)")
    p.add_argument("--jobs", "-j", type=int, default=None, help="trials at once (default: cores)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_demo)
