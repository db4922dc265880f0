"""The trial progress reporter: plain lines off a terminal, a bar on one, evaluation announced."""

from __future__ import annotations

import io

from shiftbench.progress import ProgressReporter, duration

SPEC = {"algorithm": "ERM", "dataset": "Digits", "test_envs": [1], "steps": 10, "checkpoint_freq": 4}


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_plain_lines_with_eta_and_evaluation():
    out, clock = io.StringIO(), Clock()
    p = ProgressReporter(out, interactive=False, interval=2, clock=clock)
    p.start(SPEC, {})
    for step in range(10):
        clock.t += 1.0  # one second per step
        p.step(step, {"loss": 0.5, "penalty": 2})
        if step % 4 == 0 or step == 9:
            p.checkpoint({"step": step})
    p.end()
    lines = out.getvalue().splitlines()
    assert lines[0] == "training ERM on Digits held out 1: 10 steps, evaluating every 4"
    assert "evaluating at step 0 ..." in lines and "evaluating at step 4 ..." in lines
    assert "evaluating at step 9 ..." in lines
    periodic = [line for line in lines if "ETA" in line]
    assert periodic and all("loss 0.5" in line for line in periodic)
    # 7 steps done at 1 step/s: 3 steps left -> ETA 3 s
    assert any(line.startswith("step 7/10 (70%)") and "ETA 3 s" in line for line in lines), lines
    assert lines[-1] == "finished ERM on Digits held out 1: 10 steps in 10 s"


def test_interval_limits_the_lines():
    out, clock = io.StringIO(), Clock()
    p = ProgressReporter(out, interactive=False, interval=1000, clock=clock,
                         total_steps=1000, checkpoint_freq=500)
    p.start({"algorithm": "ERM"})
    for step in range(1, 1000):
        clock.t += 0.1
        p.step(step, {"loss": 1.0})
    lines = out.getvalue().splitlines()
    assert len(lines) <= 5  # start, one periodic, two evaluations, no flood


def test_bar_on_a_terminal_says_evaluating():
    out = io.StringIO()
    p = ProgressReporter(out, interactive=True, clock=Clock())
    p.start(SPEC)
    p.step(0, {"loss": 1.0})
    assert "evaluating" in p.bar.desc and p.bar.total == 10
    p.checkpoint({})
    assert "evaluating" not in p.bar.desc
    p.step(1, {"loss": 1.0})
    assert p.bar.n == 2
    p.write("a record row")
    p.end()
    assert "a record row" in out.getvalue() and "finished ERM" in out.getvalue()
    assert p.bar is None


def test_resume_starts_counting_from_the_first_step_seen():
    out, clock = io.StringIO(), Clock()
    p = ProgressReporter(out, interactive=False, interval=0, clock=clock)
    p.start(SPEC)
    for step in (6, 7):
        clock.t += 2.0
        p.step(step, None)
    assert "step 8/10 (80%), 0.50 steps/s, ETA 4 s" in out.getvalue()


def test_duration():
    assert duration(42.4) == "42 s" and duration(185) == "3 min 05 s"
    assert duration(3720) == "1 h 02 min"
