"""Experiment loggers (`--logger tensorboard csv wandb mlflow`), as training-loop callbacks.

Each logger receives `start(spec, hparams)` once, `step(step, losses)` after every training
step, `checkpoint(record)` with every record written to `results.jsonl`, and `end(summary)` when
the trial finishes. They write under the trial's output directory:

* `csv`: `metrics/steps.csv` (step, name, value: one row per loss), `metrics/checkpoints.csv`
  (step, name, value: every number of a record: accuracies, label-free scores, timings) and
  `metrics/hparams.csv` (name, value); standard library only;
* `tensorboard`: event files in `tensorboard/` (`loss/<name>` per step, `<name>` per checkpoint,
  the hparams as text and in the HParams plugin); needs `tensorboard`;
* `wandb`: a run in `wandb/` (offline unless `WANDB_MODE` says otherwise); needs `wandb`;
* `mlflow`: a run in `mlflow.db` / `mlruns/` (or `$MLFLOW_TRACKING_URI`); needs `mlflow` (or
  mlflow-skinny).

A resumed trial appends: steps after its last checkpoint are logged again by the resumed run.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shiftbench.errors import ShiftbenchError, UnknownNameError

LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")


def _plain(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    return dict(vars(obj)) if hasattr(obj, "__dict__") else {"spec": str(obj)}


def numbers(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) record, with `/`-joined keys; bools excluded."""
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if key not in ("hparams", "args"):
                out.update(numbers(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value):
            out[name] = float(value)
    return out


def _scalar_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
            for k, v in hparams.items()}


class TrialLogger:
    """The callback interface of the training loop; every method does nothing by default."""

    name = ""

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)

    def start(self, spec: Any, hparams: Mapping[str, Any]) -> None:
        pass

    def step(self, step: int, losses: Mapping[str, float]) -> None:
        pass

    def checkpoint(self, record: Mapping[str, Any]) -> None:
        pass

    def end(self, summary: Any = None) -> None:
        pass


class CSVLogger(TrialLogger):
    name = "csv"

    def start(self, spec: Any, hparams: Mapping[str, Any]) -> None:
        folder = self.output_dir / "metrics"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "hparams.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["name", "value"])
            for k, v in sorted(_scalar_hparams(hparams).items()):
                w.writerow([k, v])
        self._files = {}
        for kind in ("steps", "checkpoints"):
            path = folder / f"{kind}.csv"
            new = not path.is_file() or path.stat().st_size == 0
            f = open(path, "a", newline="")  # noqa: SIM115 - closed in end()
            if new:
                csv.writer(f).writerow(["step", "name", "value"])
            self._files[kind] = f

    def _write(self, kind: str, step: int, values: Mapping[str, float]) -> None:
        w = csv.writer(self._files[kind])
        for k, v in values.items():
            w.writerow([step, k, repr(float(v))])
        self._files[kind].flush()

    def step(self, step: int, losses: Mapping[str, float]) -> None:
        self._write("steps", step, losses)

    def checkpoint(self, record: Mapping[str, Any]) -> None:
        values = numbers(record)
        self._write("checkpoints", int(values.pop("step", -1)), values)

    def end(self, summary: Any = None) -> None:
        for f in getattr(self, "_files", {}).values():
            f.close()
        self._files = {}


class TensorBoardLogger(TrialLogger):
    name = "tensorboard"

    def start(self, spec: Any, hparams: Mapping[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ShiftbenchError("--logger tensorboard needs the tensorboard package: "
                                  "pip install tensorboard (or 'shiftbench[loggers]')") from None
        self.hparams = _scalar_hparams(hparams)
        self.last: dict[str, float] = {}
        self.writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
        self.writer.add_text("hparams", json.dumps(dict(hparams), indent=1, default=str))
        self.writer.add_text("spec", json.dumps(_plain(spec), indent=1, default=str))

    def step(self, step: int, losses: Mapping[str, float]) -> None:
        for k, v in losses.items():
            self.writer.add_scalar(f"loss/{k}", float(v), step)

    def checkpoint(self, record: Mapping[str, Any]) -> None:
        values = numbers(record)
        step = int(values.pop("step", 0))
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.last = {k: v for k, v in values.items() if k.endswith("_acc")}
        self.writer.flush()

    def end(self, summary: Any = None) -> None:
        if self.last:
            self.writer.add_hparams(self.hparams, {f"final/{k}": v for k, v in self.last.items()},
                                    run_name=".")
        self.writer.close()


class WandbLogger(TrialLogger):
    name = "wandb"

    def start(self, spec: Any, hparams: Mapping[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise ShiftbenchError("--logger wandb needs the wandb package: pip install wandb "
                                  "(or 'shiftbench[loggers]')") from None
        self.wandb = wandb
        plain = _plain(spec)
        self.run = wandb.init(dir=str(self.output_dir), mode=os.environ.get("WANDB_MODE",
                                                                             "offline"),
                              project=os.environ.get("WANDB_PROJECT", "shiftbench"),
                              config={**dict(hparams), "spec": plain}, reinit=True,
                              name=f"{plain.get('algorithm', '')}-{plain.get('dataset', '')}")

    def step(self, step: int, losses: Mapping[str, float]) -> None:
        self.run.log({f"loss/{k}": float(v) for k, v in losses.items()}, step=step)

    def checkpoint(self, record: Mapping[str, Any]) -> None:
        values = numbers(record)
        self.run.log(values, step=int(values.pop("step", 0)))

    def end(self, summary: Any = None) -> None:
        self.run.finish()
        self.wandb.teardown()  # waits for wandb's service to write the run out


def mlflow_uri(output_dir: str | os.PathLike) -> str:
    """The trial's own MLflow store: `mlflow.db` (SQLite) when SQLAlchemy is installed, else the
    file store `mlruns/` (which MLflow 3 serves only with `MLFLOW_ALLOW_FILE_STORE=true`,
    set here for this process)."""
    folder = Path(output_dir).resolve()
    if importlib.util.find_spec("sqlalchemy") is None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return (folder / "mlruns").as_uri()
    return f"sqlite:///{folder / 'mlflow.db'}"


class MLflowLogger(TrialLogger):
    name = "mlflow"

    def start(self, spec: Any, hparams: Mapping[str, Any]) -> None:
        try:
            import mlflow
        except ImportError:
            raise ShiftbenchError("--logger mlflow needs the mlflow package: pip install "
                                  "mlflow-skinny (or 'shiftbench[loggers]')") from None
        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri(mlflow_uri(self.output_dir))
        plain = _plain(spec)
        self.run = mlflow.start_run(run_name=f"{plain.get('algorithm', '')}-"
                                             f"{plain.get('dataset', '')}")
        mlflow.log_params({k: str(v)[:500] for k, v in _scalar_hparams(hparams).items()})

    def step(self, step: int, losses: Mapping[str, float]) -> None:
        self.mlflow.log_metrics({f"loss_{k}": float(v) for k, v in losses.items()}, step=step)

    def checkpoint(self, record: Mapping[str, Any]) -> None:
        values = numbers(record)
        step = int(values.pop("step", 0))
        self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=step)

    def end(self, summary: Any = None) -> None:
        self.mlflow.end_run()


LOGGER_CLASSES: dict[str, type[TrialLogger]] = {
    c.name: c for c in (CSVLogger, TensorBoardLogger, WandbLogger, MLflowLogger)}


def check_logger_names(names: Sequence[str]) -> list[str]:
    """The names, each checked against the known loggers (duplicates dropped, order kept)."""
    out: list[str] = []
    for n in names:
        if n not in LOGGER_CLASSES:
            raise UnknownNameError("logger", n, LOGGER_CLASSES)
        if n not in out:
            out.append(n)
    return out


PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow-skinny")}


def make_loggers(names: Sequence[str], output_dir: str | os.PathLike) -> list[TrialLogger]:
    """The loggers named, after checking (before any training) that their packages import."""
    import importlib.util

    names = check_logger_names(names)
    for n in names:
        if n in PACKAGES and importlib.util.find_spec(PACKAGES[n][0]) is None:
            raise ShiftbenchError(f"--logger {n} needs the {PACKAGES[n][0]} package: pip install "
                                  f"{PACKAGES[n][1]} (or pip install 'shiftbench[loggers]')")
    return [LOGGER_CLASSES[n](output_dir) for n in names]
