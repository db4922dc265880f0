"""The training loop of one trial: run, resume from the last checkpoint, or skip when done.

Each step draws one batch per source domain (then, when the setting has them, one batch of the
few labeled target examples and one unlabeled target batch per target domain), calls the
algorithm's `train_step`, and every `checkpoint_freq` steps evaluates, appends a record, saves a
checkpoint and reports to the callbacks (`shiftbench.reporting`). A trial started again with the
same spec continues from its last checkpoint: records written after it are dropped first, so the
finished file equals an uninterrupted run's. A directory holding another trial is refused.
"""

from __future__ import annotations

import errno
import math
import resource
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch

import shiftbench
from shiftbench import trial as trial_module
from shiftbench.checkpoints import CheckpointStore, save_model
from shiftbench.data import BatchStream, eval_batches
from shiftbench.errors import ShiftbenchError, StorageError, TrainingDiverged
from shiftbench.evaluation import evaluate
from shiftbench.progress import fit
from shiftbench.reporting import default_callbacks, notify
from shiftbench.seeds import rng_state, set_rng_state
from shiftbench.splits import UNLABELED_SPLIT
from shiftbench.trial import Trial, autocast, normalize
from shiftbench.trial_record import (
    MODEL_FILE,
    TrialSpec,
    differing_fields,
    identity,
    recorded_options,
    same_identity,
)

TIMING_KEYS = ("step_time", "eval_time", "mem_gb", "wall_time", "cpu_time")
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def train(spec: TrialSpec, log: Callable[[str], None] | None = None, progress: bool | None = None,
          callbacks: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Run (or resume, or skip if done) one trial; returns its records. `callbacks` receive
    start/step/checkpoint/end (see `shiftbench.reporting`)."""
    log = log or (lambda msg: print(msg, flush=True))
    spec = normalize(spec)  # fail on bad input before anything is written
    store = CheckpointStore(spec.output_dir)
    store.check_same_trial(spec)
    if store.done.exists():
        log(f"{spec.output_dir}: already done; nothing to do")
        return store.read_records()
    created = not store.dir.exists()
    try:
        store.dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(store.dir, e) from e
    try:
        return _run(spec, store, log, progress, callbacks)
    except (TrainingDiverged, StorageError, KeyboardInterrupt, BrokenPipeError):
        # diverged: `failed` already written; storage / Ctrl-C / a closed stdout (`| head`):
        # resumable, not failed
        raise
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


def _mark_failed(store: CheckpointStore, e: BaseException) -> None:
    """Write the `failed` marker if the disk lets us; the original error is what matters."""
    try:
        store.mark_failed({"error": f"{type(e).__name__}: {e}",
                           "traceback": traceback.format_exc(), "time": time.time()})
    except ShiftbenchError:
        pass


def _resume(spec: TrialSpec, trial: Trial, store: CheckpointStore, log) -> tuple[int, int]:
    """Load the last intact checkpoint (if any) into the trial; `(start step, records kept)`."""
    start_step, n_records = 0, 0
    state = store.load_checkpoint(log)
    if state is not None:
        if not same_identity(state["identity"], spec):
            raise ShiftbenchError(
                f"{spec.output_dir} holds a checkpoint of a different trial ("
                + "; ".join(differing_fields(state["identity"], spec.to_dict()))
                + "; saved != requested); use another --output-dir or delete that directory")
        trial.algorithm.load_full_state(state["algorithm"])
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
    return start_step, n_records


def _run(spec: TrialSpec, store: CheckpointStore, log, progress: bool | None,
         callbacks: Sequence[Any]) -> list[dict[str, Any]]:
    wall_start, cpu_start = time.time(), time.process_time()
    trial = trial_module.build_trial(spec)
    algorithm, device, setting = trial.algorithm, trial.device, trial.setting
    start_step, n_records = _resume(spec, trial, store, log)
    callbacks = default_callbacks(spec, trial.n_steps, start_step, log, progress,
                                  trial.checkpoint_freq) + list(callbacks)
    batch_size = int(trial.hparams["batch_size"])

    def stream(i: int, split: torch.Tensor, role: str) -> BatchStream:
        return BatchStream(trial.dataset[i], split, batch_size, spec.seed, role, i, start_step)

    labeled = [stream(i, trial.splits[i].in_, "train") for i in trial.train_envs]
    if setting.few_shot_target:
        labeled += [stream(i, trial.splits[i].lab, "lab") for i in spec.test_envs]
    unlabeled_streams = ([stream(i, trial.splits[i].uda, UNLABELED_SPLIT) for i in spec.test_envs]
                         if setting.unlabeled_target else [])
    steps_per_epoch = min(len(trial.splits[i].in_) / batch_size for i in trial.train_envs)
    round_every = algorithm.round_interval()
    # A phased method also checkpoints its source model: the last step before adaptation begins
    # (`collect --source-models` reports it as the method's own source row).
    adaptation_start = algorithm.adaptation_start()
    source_end = adaptation_start - 1 if adaptation_start else None
    ckpt_identity = identity(spec)
    window: dict[str, list[float]] = defaultdict(list)
    notify(callbacks, "start", spec, trial.hparams)
    for step in range(start_step, trial.n_steps):
        step_start = time.time()
        if round_every and step % round_every == 0:
            with autocast(trial):
                round_values = algorithm.on_round(lambda: _target_batches(trial, batch_size))
            for k, v in round_values.items():
                window[k].append(v)
        minibatches = [tuple(t.to(device, non_blocking=True) for t in s.next()) for s in labeled]
        unlabeled = [s.next()[0].to(device, non_blocking=True) for s in unlabeled_streams] or None
        try:
            with autocast(trial):
                values = algorithm.train_step(minibatches, unlabeled)
        except RuntimeError as e:  # a float64 scalar (lr x ...) past float32's range
            if "overflow" not in str(e):
                raise
            store.mark_failed({"error": f"numeric overflow: {e}", "step": step,
                               "time": time.time()})
            raise TrainingDiverged(f"training diverged at step {step}: {e} (an hparam such as "
                                   "lr too large for float32?); recorded in "
                                   f"{store.failed}") from None
        bad = {k: v for k, v in values.items() if not _is_finite(v)}
        if bad:
            store.mark_failed({"error": "non-finite loss", "step": step,
                               "health": {"flags": ["diverged"]},
                               "values": {k: str(v) for k, v in values.items()},
                               "time": time.time()})
            raise TrainingDiverged(
                f"training diverged at step {step}: " + ", ".join(f"{k}={v}" for k, v in bad.items())
                + f"; recorded in {store.failed}")
        for k, v in values.items():
            window[k].append(float(v))
        window["step_time"].append(time.time() - step_start)
        notify(callbacks, "step", step, values)
        if step % trial.checkpoint_freq == 0 or step == trial.n_steps - 1 or step == source_end:
            eval_start = time.time()
            record: dict[str, Any] = {"args": asdict(spec), "hparams": trial.hparams, "step": step,
                                      "epoch": step / steps_per_epoch}
            record.update(evaluate(trial))
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
                "label_sources": setting.label_sources,
                "n_steps": trial.n_steps, "environments": trial.dataset.environments,
                "num_classes": trial.dataset.num_classes,
            })
            if adaptation_start is not None:  # a phased method (shiftbench.phases)
                record["adaptation_start"] = adaptation_start
            if trial.unused_envs:
                record["unused_envs"] = trial.unused_envs
            if step == trial.n_steps - 1:  # the run's health, as the collector will judge it
                record["health"] = _health_summary(store.read_records() + [record])
            record.update(recorded_options(spec))
            store.append_record(record)
            n_records += 1
            window.clear()
            notify(callbacks, "checkpoint", record)
            store.save_checkpoint({"identity": ckpt_identity, "step": step, "n_records": n_records,
                                   "algorithm": algorithm.full_state(), "rng": rng_state()})
            if spec.save_model_every_checkpoint:
                save_model(trial, store.dir / f"model_step{step}.pkl")
    if not spec.skip_model_save:
        save_model(trial, store.dir / MODEL_FILE)
    store.mark_done()
    store.remove_checkpoints()
    records = store.read_records()
    _log_health(records, log)
    notify(callbacks, "end", records)
    return records


def _health_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """`{"flags": [...], "details": {flag: what tripped it}}` of a finished run's records
    (shiftbench.health; `collect` recomputes it, so later thresholds apply to old runs)."""
    from shiftbench.health import check_run

    health = check_run(records, status="done")
    return {"flags": list(health.flags), "details": dict(health.details)}


def _log_health(records: list[dict[str, Any]], log) -> None:
    """Say so when the finished run is flagged unhealthy."""
    if records and isinstance(records[-1].get("health"), dict):
        for flag, detail in records[-1]["health"].get("details", {}).items():
            log(fit(f"warning: run health: {flag}: {detail}"))


def _target_batches(trial: Trial, batch_size: int):
    """Every unlabeled target example, in order, as x batches (for round hooks)."""
    for i in trial.args.test_envs:
        for x, _ in eval_batches(trial.dataset[i], trial.splits[i].uda, max(256, batch_size)):
            yield x.to(trial.device)


def _mem_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _is_finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
