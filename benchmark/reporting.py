"""What a trial tells the world while it runs: loop callbacks, the log table, the progress bar,
the final summary.

**Callbacks.** The training loop reports through objects with any of these methods (missing ones
are skipped); loggers (tensorboard, csv, wandb, ...) and progress bars plug in here::

    start(spec, hparams)   once, before the first step run by this call (spec: the TrialSpec;
                           hparams: the resolved dict)
    step(step, losses)     after every training step (losses: the floats `train_step` returned)
    checkpoint(record)     after every record is written to results.jsonl (the record itself)
    end(summary)           when the trial finishes (summary: its list of records)

`TableLog` (the per-checkpoint table on the log) and `shiftbench.progress.ProgressReporter` (a bar
with ETA on a terminal, plain progress lines otherwise) are callbacks too.
"""

from __future__ import annotations

import platform
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


class TableLog:
    """One row per checkpoint (accuracies first), at most `width` columns: the columns that do
    not fit continue on an indented line; the header is repeated whenever the columns change.
    Written through the progress bar when there is one."""

    def __init__(self, log: Callable[[str], None], bar: Any = None, width: int = 80):
        self.log, self.bar, self.width, self.last_header = log, bar, width, None

    def checkpoint(self, record: dict[str, Any]) -> None:
        def main(k: str) -> bool:
            return k.endswith(("_acc", "_miou"))

        keys = ["step"] + sorted(k for k in record if main(k)) + sorted(
            k for k, v in record.items() if isinstance(v, float) and not main(k)
            and "_iou_" not in k and k not in ("epoch", "wall_time", "cpu_time", "mem_gb"))
        names = [column_name(k) for k in keys]
        values = [f"{record[k]:.4f}" if isinstance(record[k], float) else str(record[k])
                  for k in keys]
        widths = [max(len(n), len(v), 6) for n, v in zip(names, values)]
        header, row = band_lines(names, widths, self.width), band_lines(values, widths, self.width)
        lines = row
        if header != self.last_header:
            test_envs = (record.get("args") or {}).get("test_envs")
            legend = ("in<i>/out<i>: accuracy on environment i's in/out split"
                      + (f"; held out: {', '.join(map(str, test_envs))}" if test_envs else ""))
            lines = ([legend] if any(main(k) for k in keys) else []) + header + row
        for line in lines:
            if self.bar is not None:
                self.bar.write(line)
            else:
                self.log(line)
        self.last_header = header


SHORT_NAMES = {"step_time": "s/step", "eval_time": "eval s"}


def column_name(key: str) -> str:
    """`env0_in_acc` -> `in0`, `env2_out_miou` -> `out2 mIoU`, `step_time` -> `s/step`."""
    parts = key.split("_")
    if len(parts) == 3 and parts[0].startswith("env") and parts[0][3:].isdigit():
        return f"{parts[1]}{parts[0][3:]}" + (" mIoU" if parts[2] == "miou" else "")
    return SHORT_NAMES.get(key, key if len(key) <= 12 else key[:11] + "~")


def band_lines(cells: Sequence[str], widths: Sequence[int], width: int) -> list[str]:
    """Right-aligned cells two spaces apart, wrapped into lines of at most `width` columns
    (continuation lines indented by two spaces)."""
    lines, line = [], ""
    for cell, w in zip(cells, widths):
        piece = f"{cell:>{w}}"
        if line and len(line) + 2 + w > width:
            lines.append(line)
            line = "  " + piece
        else:
            line = f"{line}  {piece}" if line else piece
    return lines + [line]


def default_callbacks(spec: Any, n_steps: int, start_step: int, log: Callable[[str], None],
                      progress: bool | None, checkpoint_freq: int | None = None) -> list[Any]:
    """The progress reporter and the log table. `progress`: None (default) = a bar on a terminal,
    plain progress lines on stderr otherwise; True = the bar; False = no progress output."""
    if progress is False:
        return [TableLog(log)]
    from shiftbench.progress import ProgressReporter

    reporter = ProgressReporter(interactive=True if progress else None, total_steps=n_steps,
                                checkpoint_freq=checkpoint_freq)
    # the table goes through the bar (so that it is not torn), else to the caller's log
    return [reporter, TableLog(log, reporter if reporter.interactive else None)]


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
