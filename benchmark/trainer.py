"""One trial: train an algorithm on a dataset's training environments and record accuracies.

Output directory layout (DomainBed-compatible):
* `results.jsonl` — one JSON record per checkpoint (DomainBed's keys plus ours);
* `done` — written last, containing "done";
* `checkpoint.pt` (+ `checkpoint.prev.pt`) — everything needed to resume: the algorithm with its
  optimizers, every RNG state, the step and the number of records written; a SHA-256 of each
  file is kept beside it (`*.sha256`) so a torn or corrupted checkpoint is detected;
* `failed` — JSON describing why a trial stopped (removed when it is resumed successfully).

A trial started again with the same command continues from its last checkpoint: records written
after that checkpoint are dropped first, so the finished file equals an uninterrupted run's.
"""

from __future__ import annotations

import copy
import errno
import io
import json
import math
import os
import platform
import resource
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import shiftbench
from shiftbench.algorithms import Algorithm, get_algorithm_class
from shiftbench.data import BatchStream, accuracy_counts, eval_batches
from shiftbench.datasets import get_dataset_class
from shiftbench.datasets.base import MultiDomainDataset
from shiftbench.datasets.segmentation import task_type_of
from shiftbench.dev_validation import dev_score
from shiftbench.errors import ShiftbenchError, StorageError, TrainingDiverged
from shiftbench.hparams_registry import DatasetInfo, check_protocol, resolve_hparams
from shiftbench.options import EVAL_SPLIT_CHOICES, PRECISIONS, TTA_MODES
from shiftbench.paths import atomic_write_bytes, sha256_bytes
from shiftbench.seeds import rng_state, seed_everything, set_rng_state
from shiftbench.setting import Setting, get_setting
from shiftbench.splits import EnvSplits, make_splits

TIMING_KEYS = ("step_time", "eval_time", "mem_gb", "wall_time", "cpu_time")


@dataclass
class TrainArgs:
    """The arguments of one trial (the `args` of every record)."""

    dataset: str = "RotatedMNIST"
    algorithm: str = "ERM"
    test_envs: list[int] = field(default_factory=lambda: [0])
    task: str = "dg"
    hparams: str | None = None
    hparams_seed: int = 0
    trial_seed: int = 0
    seed: int = 0
    steps: int | None = None
    checkpoint_freq: int | None = None
    holdout_fraction: float = 0.2
    uda_holdout_fraction: float | None = None
    target_shots: int = 3
    tta_mode: str = "continual"
    eval_splits: str = "selection"
    precision: str = "fp32"
    output_dir: str = "train_output"
    data_dir: str | None = None
    device: str | None = None
    skip_model_save: bool = False
    save_model_every_checkpoint: bool = False
    protocol: str = "shiftbench"
    source_envs: list[int] | None = None  # None: every environment not in test_envs

    @property
    def setting(self) -> Setting:
        return get_setting(self.task)

    def resolved_uda_fraction(self) -> float:
        if self.uda_holdout_fraction is not None:
            return self.uda_holdout_fraction
        return self.setting.default_uda_fraction


# Arguments that do not change a trial's result (excluded from its identity).
NON_RESULT_ARGS = ("output_dir", "data_dir", "device")
# Arguments added after trials were first recorded, with the default that reproduces the old
# behaviour: left out of an identity at that default, so older checkpoints stay resumable.
ADDED_ARGS = {"protocol": "shiftbench", "source_envs": None}


def trial_identity(args: TrainArgs) -> dict[str, Any]:
    d = asdict(args)
    for key in NON_RESULT_ARGS:
        d.pop(key)
    for key, default in ADDED_ARGS.items():
        if d[key] == default:
            d.pop(key)
    return d


@dataclass
class Trial:
    """Everything built for one run, before the training loop."""

    args: TrainArgs
    dataset: MultiDomainDataset
    splits: list[EnvSplits]
    hparams: dict[str, Any]
    algorithm: Algorithm
    device: torch.device
    n_steps: int
    checkpoint_freq: int
    train_envs: list[int]  # the source environments, the only ones trained on
    unused_envs: list[int]  # neither source nor test: evaluated and recorded, never trained on

    @property
    def setting(self) -> Setting:
        return self.args.setting


def validate_args(args: TrainArgs) -> tuple[type, type]:
    """Check every argument that can be checked without loading data; raise a clear error."""
    dataset_cls = get_dataset_class(args.dataset)
    algorithm_cls = get_algorithm_class(args.algorithm)
    args.task = get_setting(args.task).name
    args.protocol = check_protocol(args.protocol)
    if args.task not in algorithm_cls.SETTINGS:
        raise ShiftbenchError(
            f"algorithm {args.algorithm} does not support --task {args.task}; it supports: "
            f"{', '.join(algorithm_cls.SETTINGS)}. Algorithms for {args.task}: "
            + ", ".join(_algorithms_for(args.task))
        )
    task_type = task_type_of(dataset_cls)
    if task_type not in algorithm_cls.TASK_TYPES:
        from shiftbench.algorithms import list_algorithms

        raise ShiftbenchError(
            f"algorithm {args.algorithm} trains on {'/'.join(algorithm_cls.TASK_TYPES)} datasets, but "
            f"{args.dataset} is a {task_type} dataset; algorithms for it: "
            + ", ".join(list_algorithms(setting=args.task, task_type=task_type)))
    if not args.test_envs:
        raise ShiftbenchError("--test-envs needs at least one environment")
    args.test_envs = sorted({dataset_cls.env_index(e) for e in args.test_envs})
    n_envs = len(dataset_cls.ENVIRONMENTS)
    if len(args.test_envs) >= n_envs:
        raise ShiftbenchError(
            f"--test-envs {args.test_envs} leaves no training environment; {args.dataset} has "
            f"{n_envs}")
    if args.source_envs is not None:
        if not args.source_envs:
            raise ShiftbenchError("--source-envs needs at least one environment (or none given: "
                                  "every environment not in --test-envs)")
        args.source_envs = sorted({dataset_cls.env_index(e) for e in args.source_envs})
        both = sorted(set(args.source_envs) & set(args.test_envs))
        if both:
            names = ", ".join(f"{i} ({dataset_cls.ENVIRONMENTS[i]})" for i in both)
            raise ShiftbenchError(f"environment(s) {names} given in both --source-envs "
                                  f"{args.source_envs} and --test-envs {args.test_envs}")
    if args.steps is not None and args.steps < 1:
        raise ShiftbenchError(f"--steps must be >= 1, got {args.steps}")
    if args.checkpoint_freq is not None and args.checkpoint_freq < 1:
        raise ShiftbenchError(f"--checkpoint-freq must be >= 1, got {args.checkpoint_freq}")
    for name in ("hparams_seed", "trial_seed", "seed"):
        if getattr(args, name) < 0:
            raise ShiftbenchError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.eval_splits not in EVAL_SPLIT_CHOICES:
        raise ShiftbenchError(
            f"--eval-splits {args.eval_splits!r} is not one of {', '.join(EVAL_SPLIT_CHOICES)}")
    if args.tta_mode not in TTA_MODES:
        raise ShiftbenchError(f"--tta-mode {args.tta_mode!r} is not one of {', '.join(TTA_MODES)}")
    if args.precision not in PRECISIONS:
        raise ShiftbenchError(
            f"--precision {args.precision!r} is not one of {', '.join(PRECISIONS)}")
    resolve_hparams(args.algorithm, _info(args.dataset, dataset_cls), args.hparams_seed, args.hparams,
                    protocol=args.protocol)
    return dataset_cls, algorithm_cls


def _info(name: str, dataset_cls: type) -> DatasetInfo:
    return DatasetInfo(name, tuple(dataset_cls.INPUT_SHAPE), int(dataset_cls.NUM_CLASSES))


def _algorithms_for(task: str) -> list[str]:
    from shiftbench.algorithms import list_algorithms

    return list_algorithms(setting=task)


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(trial: Trial):
    """Mixed precision for every forward pass of the trial: bfloat16 autocast with
    `--precision bf16` (as AMP on GPUs; parameters and optimizer state stay float32)."""
    return torch.autocast(trial.device.type, dtype=torch.bfloat16,
                          enabled=trial.args.precision == "bf16")


def build_trial(args: TrainArgs) -> Trial:
    dataset_cls, _ = validate_args(args)
    hparams = resolve_hparams(args.algorithm, _info(args.dataset, dataset_cls), args.hparams_seed,
                              args.hparams, protocol=args.protocol)
    seed_everything(args.seed)
    dataset = dataset_cls(args.data_dir, args.test_envs, hparams)
    check_dataset(dataset, args.dataset)
    env_labels = [_labels_of(env) for env in dataset.datasets]
    splits = make_splits(env_labels, args.test_envs, args.trial_seed, args.holdout_fraction,
                         args.setting, args.resolved_uda_fraction(), args.target_shots,
                         dataset.num_classes)
    train_envs = (list(args.source_envs) if args.source_envs is not None
                  else [i for i in range(len(dataset)) if i not in args.test_envs])
    unused_envs = [i for i in range(len(dataset)) if i not in train_envs and i not in args.test_envs]
    for i in train_envs:
        if len(splits[i].in_) == 0:
            raise ShiftbenchError(f"training environment {i} ({dataset.environments[i]}) is empty")
    device = pick_device(args.device)
    n_steps = args.steps or dataset.N_STEPS
    algorithm = get_algorithm_class(args.algorithm)(
        dataset.input_shape, dataset.num_classes, len(train_envs), hparams, setting=args.task,
        total_steps=n_steps).to(device)
    return Trial(args, dataset, splits, hparams, algorithm, device, n_steps,
                 args.checkpoint_freq or dataset.CHECKPOINT_FREQ, train_envs, unused_envs)


def _labels_of(env) -> torch.Tensor:
    if hasattr(env, "y"):
        return env.y
    if hasattr(env, "targets"):
        return torch.as_tensor(env.targets, dtype=torch.long)
    return torch.as_tensor([int(env[i][1]) for i in range(len(env))], dtype=torch.long)


def check_dataset(dataset: MultiDomainDataset, name: str) -> None:
    if len(dataset.datasets) != len(dataset.ENVIRONMENTS):
        raise ShiftbenchError(
            f"dataset {name} built {len(dataset.datasets)} environments but declares "
            f"{len(dataset.ENVIRONMENTS)} ({', '.join(dataset.ENVIRONMENTS)})")
    for env, env_name in zip(dataset.datasets, dataset.ENVIRONMENTS):
        if len(env) == 0:
            raise ShiftbenchError(f"environment {env_name!r} of dataset {name} is empty")


# --------------------------------------------------------------------------------------------
# Evaluation


# Evaluators of the non-classification task types (dataset `TASK_TYPE`), as "module:function".
TASK_EVALUATORS = {"segmentation": "shiftbench.seg_evaluation:evaluate_segmentation"}


def evaluate(trial: Trial) -> dict[str, float]:
    """Accuracy on every split model selection can use (all splits with --eval-splits all);
    datasets of another task type are scored by their task type's evaluator."""
    evaluator = TASK_EVALUATORS.get(task_type_of(trial.dataset))
    if evaluator is not None:
        import importlib

        module, function = evaluator.split(":")
        return getattr(importlib.import_module(module), function)(trial)
    algorithm, args = trial.algorithm, trial.args
    accs: dict[str, float] = {}
    was_training = algorithm.training
    algorithm.eval()
    # On CPUs, batches of ~128 keep the activations of small CNNs in cache (512 is slower).
    bs = 128 if trial.device.type == "cpu" else 1024
    for i, env in enumerate(trial.dataset.datasets):
        is_test = i in args.test_envs
        is_source = i in trial.train_envs
        for split_name, idx in trial.splits[i].named().items():
            if len(idx) == 0:
                continue
            if split_name == "in" and is_source and args.eval_splits == "selection":
                continue  # no selection rule reads a training domain's training split
            if is_test and trial.setting.adapts_at_test and split_name in ("in", "out"):
                accs[f"env{i}_{split_name}_acc"] = _tta_accuracy(trial, env, idx, i, split_name)
                continue
            correct, kept = 0, []
            keep_logits = is_test and split_name == "uda"
            with torch.inference_mode(), autocast(trial):
                for x, y in eval_batches(env, idx, bs):
                    logits = algorithm.predict(x.to(trial.device, non_blocking=True))
                    correct += accuracy_counts(logits, y.to(trial.device))
                    if keep_logits:
                        kept.append(logits.float().cpu())
            accs[f"env{i}_{split_name}_acc"] = correct / len(idx)
            if kept:
                accs.update(_unsupervised_scores(trial, i, torch.cat(kept)))
                with torch.inference_mode(), autocast(trial):  # the `dev` rule's risk
                    accs.update(dev_score(algorithm, trial.dataset.datasets, trial.splits,
                                          trial.train_envs, i, args.trial_seed, trial.device, bs))
    algorithm.train(was_training)
    return accs


SND_MAX_EXAMPLES = 2000


def _unsupervised_scores(trial: Trial, env_i: int, logits: torch.Tensor) -> dict[str, float]:
    """Label-free scores of the predictions on the unlabeled target split (for the `entropy`,
    `im` and `snd` selection rules). Entropies use every example; SND compares all pairs, so it
    sees at most `SND_MAX_EXAMPLES`, the same subset at every checkpoint of a trial."""
    from shiftbench.results.validators import marginal_entropy, prediction_entropy, validator_scores
    from shiftbench.seeds import seed_hash

    subset = logits
    if len(logits) > SND_MAX_EXAMPLES:
        g = torch.Generator().manual_seed(seed_hash(trial.args.trial_seed, env_i, "snd"))
        subset = logits[torch.randperm(len(logits), generator=g)[:SND_MAX_EXAMPLES]]
    scores = validator_scores(env_i, subset)
    scores[f"env{env_i}_uda_entropy"] = prediction_entropy(logits)
    scores[f"env{env_i}_uda_marginal_entropy"] = marginal_entropy(logits)
    return scores


def _tta_accuracy(trial: Trial, env, idx: torch.Tensor, env_i: int, split_name: str) -> float:
    """Adapt a copy of the model on the test stream (shuffled once per trial seed)."""
    from shiftbench.seeds import seed_hash

    adapted = copy.deepcopy(trial.algorithm)
    g = torch.Generator().manual_seed(seed_hash(trial.args.trial_seed, env_i, split_name, "tta"))
    stream = idx[torch.randperm(len(idx), generator=g)]
    correct = 0
    for x, y in eval_batches(env, stream, int(trial.hparams["batch_size"])):
        with autocast(trial):
            logits = adapted.adapt(x.to(trial.device))
        correct += accuracy_counts(logits.detach(), y.to(trial.device))
        if trial.args.tta_mode == "episodic":
            adapted.reset_adaptation()
    return correct / len(idx)


# --------------------------------------------------------------------------------------------
# Checkpoints and records


class TrialStore:
    """The files of one trial directory, written crash-safely."""

    def __init__(self, output_dir: str | os.PathLike):
        self.dir = Path(output_dir)
        self.results = self.dir / "results.jsonl"
        self.done = self.dir / "done"
        self.failed = self.dir / "failed"
        self.checkpoint = self.dir / "checkpoint.pt"
        self.prev_checkpoint = self.dir / "checkpoint.prev.pt"

    def append_record(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        try:
            with open(self.results, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a part of the line may be on disk: resume truncates it
            raise StorageError(self.results, e) from e

    def read_records(self) -> list[dict[str, Any]]:
        if not self.results.exists():
            return []
        records = []
        for line in self.results.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line
        return records

    def truncate_records(self, n: int) -> None:
        """Keep the first n complete records (drop what a killed run wrote after its checkpoint)."""
        if not self.results.exists():
            return
        lines = self.results.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [ln for ln in lines[:n] if ln.endswith("\n")]
        if len(kept) != len(lines):
            atomic_write_bytes(self.results, "".join(kept).encode("utf-8"))

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        if self.checkpoint.exists():
            os.replace(self.checkpoint, self.prev_checkpoint)
            sha = self.checkpoint.with_suffix(".sha256")
            if sha.exists():
                os.replace(sha, self.prev_checkpoint.with_suffix(".sha256"))
        atomic_write_bytes(self.checkpoint, data)
        atomic_write_bytes(self.checkpoint.with_suffix(".sha256"),
                           sha256_bytes(data).encode("ascii"))

    def load_checkpoint(self, log) -> dict[str, Any] | None:
        """The newest intact checkpoint, falling back to the previous one; None if neither."""
        for path in (self.checkpoint, self.prev_checkpoint):
            if not path.exists():
                continue
            data = path.read_bytes()
            sha_path = path.with_suffix(".sha256")
            expected = sha_path.read_text().strip() if sha_path.exists() else None
            if expected != sha256_bytes(data):
                log(f"checkpoint {path.name} is corrupted or incomplete (checksum mismatch); "
                    "ignoring it")
                continue
            try:  # weights_only: a checkpoint holding any other pickled object is refused
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except Exception as e:  # pickle.UnpicklingError for a forbidden global
                log(f"checkpoint {path.name} refused: it holds something other than tensors and "
                    f"plain data ({type(e).__name__}: {str(e).splitlines()[0][:200]}); ignoring it")
        return None

    def remove_checkpoints(self) -> None:
        for path in (self.checkpoint, self.prev_checkpoint):
            for p in (path, path.with_suffix(".sha256")):
                if p.exists():
                    p.unlink()


def _mem_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kb / 2**20


def _is_finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# --------------------------------------------------------------------------------------------
# The loop


def train(args: TrainArgs, log=None, progress: bool | None = None,
          callbacks: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Run (or resume, or skip if done) one trial; returns its records.

    `callbacks`: objects with `start(spec, hparams)`, `step(step, losses)`, `checkpoint(record)`
    and `end(summary)` (any may be missing), called at those points of the loop."""
    log = log or (lambda msg: print(msg, flush=True))
    validate_args(args)  # fail on bad input before anything is written
    store = TrialStore(args.output_dir)
    if store.done.exists():
        log(f"{args.output_dir}: already done; nothing to do")
        return store.read_records()
    created = not store.dir.exists()
    try:
        store.dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(store.dir, e) from e
    try:
        return _train(args, store, log, progress, callbacks)
    except (TrainingDiverged, StorageError, KeyboardInterrupt):
        raise  # diverged: `failed` already written; storage / Ctrl-C: resumable, not failed
    except ShiftbenchError as e:
        # Bad input found while building the trial (a missing data directory...): leave no
        # trace in a directory this call created; elsewhere (a sweep's job) mark the job failed.
        if created and not any(store.dir.iterdir()):
            store.dir.rmdir()
        else:
            _mark_failed(store, e)
        raise
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise StorageError(e.filename or store.dir, e) from e
        _mark_failed(store, e)
        raise
    except Exception as e:
        _mark_failed(store, e)
        raise


STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _mark_failed(store: TrialStore, e: BaseException) -> None:
    """Write the `failed` marker if the disk lets us; the original error is what matters."""
    try:
        atomic_write_bytes(store.failed, json.dumps({
            "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
            "time": time.time()}, indent=1).encode())
    except ShiftbenchError:
        pass


def _notify(callbacks: Sequence[Any], event: str, *values: Any) -> None:
    for callback in callbacks:
        method = getattr(callback, event, None)
        if method is not None:
            method(*values)


def _train(args: TrainArgs, store: TrialStore, log, progress: bool | None, callbacks: Sequence[Any]):
    wall_start, cpu_start = time.time(), time.process_time()
    trial = build_trial(args)
    algorithm, device = trial.algorithm, trial.device
    identity = trial_identity(args)
    start_step, n_records = 0, 0
    state = store.load_checkpoint(log)
    if state is not None:
        if state["identity"] != identity:
            raise ShiftbenchError(
                f"{args.output_dir} holds a checkpoint of a different trial; use another "
                "--output-dir or delete that directory")
        algorithm.load_full_state(state["algorithm"])
        set_rng_state(state["rng"])
        start_step, n_records = state["step"] + 1, state["n_records"]
        log(f"resuming from the checkpoint at step {state['step']} ({n_records} records kept)")
    elif store.results.exists():
        log("no usable checkpoint; starting over")
    store.truncate_records(n_records)
    if start_step == 0 and store.results.exists():
        store.results.unlink()
    if store.failed.exists():
        store.failed.unlink()

    hp = trial.hparams
    batch_size = int(hp["batch_size"])
    streams = [BatchStream(trial.dataset[i], trial.splits[i].in_, batch_size, args.seed, "train",
                           i, start_step) for i in trial.train_envs]
    lab_streams = [BatchStream(trial.dataset[i], trial.splits[i].lab, batch_size, args.seed,
                               "lab", i, start_step)
                   for i in args.test_envs if trial.setting.few_shot_target]
    uda_streams = [BatchStream(trial.dataset[i], trial.splits[i].uda, batch_size, args.seed, "uda",
                               i, start_step)
                   for i in args.test_envs if trial.setting.unlabeled_target]
    steps_per_epoch = min(len(trial.splits[i].in_) / batch_size for i in trial.train_envs)
    round_every = algorithm.round_interval()

    window: dict[str, list[float]] = defaultdict(list)
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=trial.n_steps, initial=start_step, desc=f"{args.algorithm}",
                   unit="step", dynamic_ncols=True, leave=False)
    last_header = None
    _notify(callbacks, "start", args, trial.hparams)
    for step in range(start_step, trial.n_steps):
        step_start = time.time()
        if round_every and step % round_every == 0:
            with autocast(trial):
                round_values = algorithm.on_round(lambda: _target_batches(trial, batch_size))
            for k, v in round_values.items():
                window[k].append(v)
        minibatches = [tuple(t.to(device, non_blocking=True) for t in s.next())
                       for s in streams + lab_streams]
        unlabeled = [s.next()[0].to(device, non_blocking=True) for s in uda_streams] or None
        with autocast(trial):
            values = algorithm.train_step(minibatches, unlabeled)
        bad = {k: v for k, v in values.items() if not _is_finite(v)}
        if bad:
            atomic_write_bytes(store.failed, json.dumps({
                "error": "non-finite loss", "step": step, "values": {k: str(v) for k, v in
                                                                      values.items()},
                "time": time.time()}, indent=1).encode())
            raise TrainingDiverged(
                f"training diverged at step {step}: " + ", ".join(f"{k}={v}" for k, v in bad.items())
                + f"; recorded in {store.failed}")
        for k, v in values.items():
            window[k].append(float(v))
        window["step_time"].append(time.time() - step_start)
        _notify(callbacks, "step", step, values)
        if bar is not None:
            bar.update(1)
        if step % trial.checkpoint_freq == 0 or step == trial.n_steps - 1:
            eval_start = time.time()
            accs = evaluate(trial)
            record: dict[str, Any] = {
                "args": asdict(args), "hparams": trial.hparams, "step": step,
                "epoch": step / steps_per_epoch,
            }
            record.update(accs)
            for k, v in window.items():
                record[k] = sum(v) / len(v)
            record.update({
                "eval_time": time.time() - eval_start, "mem_gb": _mem_gb(device),
                "wall_time": time.time() - wall_start,
                # this process's CPU seconds (all threads) since this attempt started: the
                # trial's own cost even when the machine is shared
                "cpu_time": time.process_time() - cpu_start,
                "schema_version": shiftbench.SCHEMA_VERSION,
                "shiftbench_version": shiftbench.__version__,
                "label_sources": trial.setting.label_sources,
                "n_steps": trial.n_steps, "environments": trial.dataset.environments,
            })
            if trial.unused_envs:
                record["unused_envs"] = trial.unused_envs
            if trial.setting.reads_tta_mode:
                record["tta_mode"] = args.tta_mode
            store.append_record(record)
            n_records += 1
            window.clear()
            last_header = _log_record(record, log, last_header, bar)
            _notify(callbacks, "checkpoint", record)
            store.save_checkpoint({
                "identity": identity, "step": step, "n_records": n_records,
                "algorithm": algorithm.full_state(), "rng": rng_state(),
            })
            if args.save_model_every_checkpoint:
                _save_model(trial, store.dir / f"model_step{step}.pkl")
    if bar is not None:
        bar.close()
    if not args.skip_model_save:
        _save_model(trial, store.dir / "model.pkl")
    atomic_write_bytes(store.done, b"done")
    store.remove_checkpoints()
    records = store.read_records()
    _notify(callbacks, "end", records)
    return records


def _target_batches(trial: Trial, batch_size: int):
    """Every unlabeled target example, in order, as x batches (for round hooks)."""
    for i in trial.args.test_envs:
        for x, _ in eval_batches(trial.dataset[i], trial.splits[i].uda, max(256, batch_size)):
            yield x.to(trial.device)


def _save_model(trial: Trial, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save({
        "args": asdict(trial.args), "model_input_shape": list(trial.dataset.input_shape),
        "model_num_classes": trial.dataset.num_classes,
        "model_num_domains": len(trial.train_envs), "model_hparams": trial.hparams,
        "model_dict": trial.algorithm.state_dict(),
    }, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _log_record(record: dict[str, Any], log, last_header, bar):
    def main(k: str) -> bool:
        return k.endswith(("_acc", "_miou"))

    keys = ["step"] + sorted(k for k in record if main(k)) + sorted(
        k for k, v in record.items() if isinstance(v, float) and not main(k) and "_iou_" not in k
        and k not in ("epoch", "wall_time", "cpu_time", "mem_gb"))
    header = "  ".join(f"{k:>12.12}" for k in keys)
    row = "  ".join(f"{record[k]:>12.4f}" if isinstance(record[k], float) else f"{record[k]:>12}"
                    for k in keys)
    lines = ([header] if header != last_header else []) + [row]
    for line in lines:
        if bar is not None:
            bar.write(line)
        else:
            log(line)
    return header


def environment_report() -> dict[str, str]:
    import numpy

    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "shiftbench": shiftbench.__version__,
            "cuda": str(torch.cuda.is_available())}


def summarize(records: Sequence[dict[str, Any]], test_envs: Sequence[int]) -> str:
    """A one-paragraph summary of a finished trial: the last checkpoint's accuracies."""
    if not records:
        return "no records"
    last = records[-1]
    parts = [f"step {last['step']}"]
    for key in sorted(k for k in last if k.endswith(("_acc", "_miou"))):
        env = int(key[3:].split("_")[0])
        tag = " (test)" if env in test_envs else ""
        parts.append(f"{key}{tag}={last[key]:.4f}")
    return "; ".join(parts)
