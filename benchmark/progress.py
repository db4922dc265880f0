"""Progress of one trial, as a training-loop callback: a bar with ETA on a terminal, else a plain
line at most every `interval` seconds; both say when evaluation runs.

The loop calls `start(spec, hparams)` once, `step(step, losses)` after every training step,
`checkpoint(record)` after each evaluation and `end(summary)` at the end (the callback shape the
loggers share). A step after which the loop evaluates (every `checkpoint_freq` steps and the
last) is announced as "evaluating" before the evaluation starts. Lines the loop prints go
through `write`, so that they do not tear the bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix} [{elapsed}<{remaining}]"
BAR_LABEL = 40  # characters of the bar's label, so that the loss and times fit in 80 columns


def bar_columns() -> int:
    """The width of progress bars: the terminal's, at most 80 columns."""
    import shutil

    return min(80, shutil.get_terminal_size((80, 24)).columns)


def fit(text: str, indent: str = "  ", width: int = 80) -> str:
    """`text` wrapped to `width` columns, continuation lines indented."""
    import textwrap

    return textwrap.fill(text, width, subsequent_indent=indent)


def duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class ProgressReporter:
    """Shows one trial's progress on `stream` (default stderr)."""

    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None,
                 interval: float = 30.0, total_steps: int | None = None,
                 checkpoint_freq: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream or sys.stderr
        self.interactive = (self.stream.isatty() if interactive is None else interactive)
        self.interval = interval
        self.total = total_steps
        self.checkpoint_freq = checkpoint_freq
        self.clock = clock
        self.label = "trial"
        self.bar: Any = None
        self.first_step: int | None = None
        self.t_start = self.t0 = 0.0  # start(); the end of the first step seen (speed counts from it)
        self.last_line = -float("inf")
        self.steps_seen = 0  # steps reported in this run
        self.since_t0 = 0  # steps after the first one

    # ---- the callback interface -------------------------------------------------------------
    def start(self, spec: Any, hparams: Mapping[str, Any] | None = None) -> None:
        self.total = self.total or _first(spec, "n_steps", "total_steps", "steps")
        self.checkpoint_freq = self.checkpoint_freq or _first(spec, "checkpoint_freq")
        parts = [str(_first(spec, "algorithm") or "trial")]
        dataset, test_envs = _first(spec, "dataset"), _first(spec, "test_envs")
        if dataset:
            parts.append(f"on {dataset}")
        if test_envs is not None:
            parts.append(f"held out {','.join(map(str, test_envs))}")
        self.label = " ".join(parts)
        self.t_start = self.t0 = self.clock()
        if not self.interactive:
            every = f", evaluating every {self.checkpoint_freq}" if self.checkpoint_freq else ""
            self._line(f"training {self.label}: {self.total or '?'} steps{every}")

    def step(self, step: int, losses: Mapping[str, float] | None = None) -> None:
        if self.first_step is None:
            self.first_step = step
            self.t0 = self.clock()
        else:
            self.since_t0 += 1
        self.steps_seen += 1
        done = step + 1
        loss = _loss_text(losses)
        evaluating = self._evaluates_after(step)
        if self.interactive:
            self._bar_update(done, loss, evaluating)
            return
        now = self.clock()
        if evaluating:
            self._line(f"evaluating at step {step} ...")
            self.last_line = now
        elif self.since_t0 and now - self.last_line >= self.interval:
            self._line(f"step {done}/{self.total or '?'}{self._percent(done)}, {self._speed(now)}"
                       f"{self._eta(done, now)}{', ' + loss if loss else ''}")
            self.last_line = now

    def checkpoint(self, record: Mapping[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_description_str(self._bar_label(), refresh=True)

    def end(self, summary: Any = None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.first_step is not None:
            self._line(f"finished {self.label}: {self.steps_seen} steps in "
                       f"{duration(self.clock() - self.t_start)}")

    # ---- output -----------------------------------------------------------------------------
    def write(self, line: str) -> None:
        """Print a line of the loop's own output without tearing the bar (the trainer's log)."""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=sys.stdout, flush=True)

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(fit(text), file=self.stream, flush=True)

    def _bar_update(self, done: int, loss: str, evaluating: bool) -> None:
        if self.bar is None:
            from tqdm import tqdm

            # at most 80 columns, the loss before the times (what gets cut when space runs out)
            self.bar = tqdm(total=self.total, initial=done - 1, desc=self._bar_label(), unit="step",
                            file=self.stream, ncols=bar_columns(), leave=False, bar_format=BAR_FORMAT)
        self.bar.update(done - self.bar.n)
        if loss:
            self.bar.set_postfix_str(loss, refresh=False)
        if evaluating:
            self.bar.set_description_str(self._bar_label("evaluating"), refresh=True)

    def _bar_label(self, suffix: str = "") -> str:
        room = BAR_LABEL - len(suffix) - (2 if suffix else 0)
        label = self.label if len(self.label) <= room else self.label[:room - 1] + "~"
        return f"{label}: {suffix}" if suffix else label

    def _evaluates_after(self, step: int) -> bool:
        last = self.total is not None and step == self.total - 1
        return last or bool(self.checkpoint_freq and step % self.checkpoint_freq == 0)

    def _percent(self, done: int) -> str:
        return f" ({100 * done / self.total:.0f}%)" if self.total else ""

    def _speed(self, now: float) -> str:
        elapsed = now - self.t0
        rate = self.since_t0 / elapsed if elapsed > 0 else 0.0
        return f"{rate:.2f} steps/s" if rate < 10 else f"{rate:.0f} steps/s"

    def _eta(self, done: int, now: float) -> str:
        elapsed = now - self.t0
        if not self.total or elapsed <= 0 or self.since_t0 == 0:
            return ""
        return f", ETA {duration((self.total - done) * elapsed / self.since_t0)}"


def _first(spec: Any, *names: str) -> Any:
    for name in names:
        value = spec.get(name) if isinstance(spec, Mapping) else getattr(spec, name, None)
        if value is not None:
            return value
    return None


def _loss_text(losses: Mapping[str, float] | None) -> str:
    if not losses:
        return ""
    key = "loss" if "loss" in losses else next(iter(losses))
    try:
        return f"{key} {float(losses[key]):.4g}"
    except (TypeError, ValueError):
        return ""


class JobLines:
    """A sweep's progress as plain lines (output that is not a terminal): the tqdm calls the
    launchers use (`update`, `set_postfix`, `write`, `close`), one line at most every `interval`
    seconds and at the end."""

    def __init__(self, total: int, desc: str, stream: TextIO | None = None, interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.n = total, desc, 0
        self.stream, self.interval, self.clock = stream or sys.stderr, interval, clock
        self.t0 = self.last = clock()
        self.postfix: dict[str, Any] = {}

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if self.n >= self.total or now - self.last >= self.interval:
            self.last = now
            elapsed = now - self.t0
            eta = (f", ETA {duration(elapsed * (self.total - self.n) / self.n)}"
                   if 0 < self.n < self.total else "")
            extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
            self.write(f"{self.desc}: {self.n}/{self.total} jobs ended in {duration(elapsed)}"
                       f"{eta}{extra}")

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix = values

    def write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        pass

    def __enter__(self) -> JobLines:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def jobs_progress(total: int, desc: str, enabled: bool = True, stream: TextIO | None = None) -> Any:
    """A bar of jobs (at most 80 columns) on a terminal, plain `JobLines` otherwise; a silent
    bar when not `enabled` (its `write` still prints)."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    if enabled and not stream.isatty():
        return JobLines(total, desc, stream)
    return tqdm(total=total, desc=desc, unit="job", disable=not enabled, ncols=bar_columns(),
                file=stream)
