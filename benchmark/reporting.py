"""What a trial tells the world while it runs: loop callbacks, the log table, the progress bar,
the final summary.

**Callbacks.** The training loop reports through objects with any of these methods (missing ones
are skipped); loggers (tensorboard, csv, wandb, ...) and progress bars plug in here::

    start(spec, hparams)   once, before the first step run by this call (spec: the TrialSpec;
                           hparams: the resolved dict)
    step(step, losses)     after every training step (losses: the floats `train_step` returned)
    checkpoint(record)     after every record is written to results.jsonl (the record itself)
    end(summary)           when the trial finishes (summary: its list of records)

`TableLog` (the per-checkpoint table on the log) and `ProgressBar` (tqdm) are callbacks too.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class LoopCallback(Protocol):
    """The shape of a loop callback (every method optional)."""

    def start(self, spec: Any, hparams: dict[str, Any]) -> None: ...

    def step(self, step: int, losses: dict[str, float]) -> None: ...

    def checkpoint(self, record: dict[str, Any]) -> None: ...

    def end(self, summary: list[dict[str, Any]]) -> None: ...


def notify(callbacks: Sequence[Any], event: str, *values: Any) -> None:
    """Call `event` on every callback that defines it."""
    for callback in callbacks:
        method = getattr(callback, event, None)
        if method is not None:
            method(*values)


class ProgressBar:
    """A tqdm bar over the trial's steps (from the step it resumes at)."""

    def __init__(self, total: int, initial: int, desc: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                        leave=False)

    def step(self, step: int, losses: dict[str, float]) -> None:
        self.bar.update(1)

    def write(self, line: str) -> None:
        self.bar.write(line)

    def end(self, summary: Any) -> None:
        self.bar.close()


class TableLog:
    """One row per checkpoint (accuracies first), with a header whenever the columns change;
    written through the progress bar when there is one."""

    def __init__(self, log: Callable[[str], None], bar: ProgressBar | None = None):
        self.log, self.bar, self.last_header = log, bar, None

    def checkpoint(self, record: dict[str, Any]) -> None:
        def main(k: str) -> bool:
            return k.endswith(("_acc", "_miou"))

        keys = ["step"] + sorted(k for k in record if main(k)) + sorted(
            k for k, v in record.items() if isinstance(v, float) and not main(k)
            and "_iou_" not in k and k not in ("epoch", "wall_time", "cpu_time", "mem_gb"))
        header = "  ".join(f"{k:>12.12}" for k in keys)
        row = "  ".join(f"{record[k]:>12.4f}" if isinstance(record[k], float)
                        else f"{record[k]:>12}" for k in keys)
        for line in ([header] if header != self.last_header else []) + [row]:
            if self.bar is not None:
                self.bar.write(line)
            else:
                self.log(line)
        self.last_header = header


def default_callbacks(spec: Any, n_steps: int, start_step: int, log: Callable[[str], None],
                      progress: bool | None) -> list[Any]:
    """The progress bar (when asked, or when stderr is a terminal) and the log table."""
    show = sys.stderr.isatty() if progress is None else progress
    bar = ProgressBar(n_steps, start_step, spec.algorithm) if show else None
    return ([bar] if bar is not None else []) + [TableLog(log, bar)]


def environment_report() -> dict[str, str]:
    import numpy
    import torch

    import shiftbench

    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "shiftbench": shiftbench.__version__,
            "cuda": str(torch.cuda.is_available())}


def summarize(records: Sequence[dict[str, Any]], test_envs: Sequence[int]) -> str:
    """A one-paragraph summary of a finished trial: the last checkpoint's scores."""
    if not records:
        return "no records"
    last = records[-1]
    parts = [f"step {last['step']}"]
    for key in sorted(k for k in last if k.endswith(("_acc", "_miou"))):
        env = int(key[3:].split("_")[0])
        tag = " (test)" if env in test_envs else ""
        parts.append(f"{key}{tag}={last[key]:.4f}")
    return "; ".join(parts)
