"""The one-trial trainer: records, determinism, resume after SIGKILL, splits, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from helpers import stable_records

from shiftbench.errors import ShiftbenchError, TrainingDiverged
from shiftbench.splits import make_splits
from shiftbench.trainer import TrainArgs, TrialStore, train

QUIET = {"log": lambda msg: None, "progress": False}


def _args(tmp_path, name="run", **kw) -> TrainArgs:
    base = dict(dataset="DebugVector", algorithm="ERM", test_envs=[0], steps=7,
                checkpoint_freq=2, output_dir=str(tmp_path / name),
                hparams='{"batch_size": 8}')
    base.update(kw)
    return TrainArgs(**base)


def test_records_have_domainbed_keys(tmp_path):
    records = train(_args(tmp_path), **QUIET)
    assert [r["step"] for r in records] == [0, 2, 4, 6]
    r = records[-1]
    for key in ("args", "hparams", "step", "epoch", "env0_in_acc", "env0_out_acc", "env1_out_acc",
                "env2_out_acc", "loss", "step_time", "schema_version", "label_sources"):
        assert key in r, key
    assert r["args"]["test_envs"] == [0] and r["args"]["task"] == "dg"
    for key in ("dataset", "algorithm", "hparams_seed", "trial_seed", "seed", "holdout_fraction"):
        assert key in r["args"]
    assert (tmp_path / "run" / "done").read_text() == "done"
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_same_seeds_same_records(tmp_path):
    train(_args(tmp_path, "a"), **QUIET)
    train(_args(tmp_path, "b"), **QUIET)
    assert stable_records(tmp_path / "a") == stable_records(tmp_path / "b")
    train(_args(tmp_path, "c", seed=1), **QUIET)
    assert stable_records(tmp_path / "a") != stable_records(tmp_path / "c")


def test_done_trial_is_not_rerun(tmp_path):
    train(_args(tmp_path), **QUIET)
    before = (tmp_path / "run" / "results.jsonl").read_bytes()
    train(_args(tmp_path), **QUIET)
    assert (tmp_path / "run" / "results.jsonl").read_bytes() == before


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import shiftbench.trainer as T
    point, count = sys.argv[1], int(sys.argv[2])
    calls = {"n": 0}
    def killer(original):
        def wrapped(*a, **k):
            calls["n"] += 1
            if point == "before" and calls["n"] == count:
                os.kill(os.getpid(), signal.SIGKILL)
            out = original(*a, **k)
            if point == "after" and calls["n"] == count:
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        return wrapped
    target = sys.argv[3]
    if target == "record":
        T.TrialStore.append_record = killer(T.TrialStore.append_record)
    elif target == "checkpoint":
        T.TrialStore.save_checkpoint = killer(T.TrialStore.save_checkpoint)
    elif target == "step":
        from shiftbench.algorithms.base import Algorithm
        Algorithm.train_step = killer(Algorithm.train_step)
    elif target == "eval":
        import shiftbench.loop as L
        L.evaluate = killer(L.evaluate)
    args = T.TrainArgs(dataset="DebugVector", algorithm="ERM", test_envs=[1], steps=9,
                       checkpoint_freq=2, output_dir=sys.argv[4], hparams='{"batch_size": 8}')
    T.train(args, log=lambda m: None, progress=False)
""")


@pytest.mark.parametrize("target,point,count", [
    ("step", "before", 4), ("step", "after", 6), ("eval", "before", 3),
    ("record", "after", 2), ("record", "before", 3), ("checkpoint", "before", 2),
    ("checkpoint", "after", 4),
])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, target, point, count):
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, point, str(count), target, str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (out / "done").exists()
    resumed = train(TrainArgs(dataset="DebugVector", algorithm="ERM", test_envs=[1], steps=9,
                              checkpoint_freq=2, output_dir=str(out), hparams='{"batch_size": 8}'),
                    **QUIET)
    reference = tmp_path / "reference"
    train(TrainArgs(dataset="DebugVector", algorithm="ERM", test_envs=[1], steps=9,
                    checkpoint_freq=2, output_dir=str(reference), hparams='{"batch_size": 8}'),
          **QUIET)
    assert [r["step"] for r in resumed] == [0, 2, 4, 6, 8]
    assert stable_records(out) == stable_records(reference)


def test_corrupted_checkpoint_falls_back(tmp_path):
    out = tmp_path / "c"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, "after", "3", "checkpoint",
                           str(out)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    ckpt = out / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    messages = []
    train(TrainArgs(dataset="DebugVector", algorithm="ERM", test_envs=[1], steps=9,
                    checkpoint_freq=2, output_dir=str(out), hparams='{"batch_size": 8}'),
          log=messages.append, progress=False)
    assert any("corrupted" in m for m in messages)
    assert any("resuming from the checkpoint at step 2" in m for m in messages)
    train(TrainArgs(dataset="DebugVector", algorithm="ERM", test_envs=[1], steps=9,
                    checkpoint_freq=2, output_dir=str(tmp_path / "ref"),
                    hparams='{"batch_size": 8}'), **QUIET)
    assert stable_records(out) == stable_records(tmp_path / "ref")


def test_diverging_trial_is_recorded_as_failed(tmp_path):
    args = _args(tmp_path, hparams='{"batch_size": 8, "lr": 1e30}', steps=50)
    with pytest.raises(TrainingDiverged, match="diverged at step"):
        train(args, **QUIET)
    failed = json.loads((tmp_path / "run" / "failed").read_text())
    assert failed["error"] == "non-finite loss" and isinstance(failed["step"], int)
    assert not (tmp_path / "run" / "done").exists()


def test_bad_input_writes_nothing(tmp_path):
    with pytest.raises(ShiftbenchError, match="out of range"):
        train(_args(tmp_path, test_envs=[5]), **QUIET)
    with pytest.raises(ShiftbenchError, match="does not support --task tta"):
        train(_args(tmp_path, task="tta"), **QUIET)
    assert not (tmp_path / "run").exists()


def test_resume_refuses_a_different_trial(tmp_path):
    out = tmp_path / "x"
    subprocess.run([sys.executable, "-c", KILL_SCRIPT, "after", "2", "checkpoint", str(out)],
                   capture_output=True)
    with pytest.raises(ShiftbenchError, match="different trial"):
        train(TrainArgs(dataset="DebugVector", algorithm="ERM", test_envs=[1], steps=9, seed=5,
                        checkpoint_freq=2, output_dir=str(out), hparams='{"batch_size": 8}'),
              **QUIET)
    assert (out / "results.jsonl").exists()


# ---- splits ----------------------------------------------------------------------------


def _labels(n_envs=3, n=100, classes=4):
    return [torch.arange(n) % classes for _ in range(n_envs)]


def test_splits_disjoint_and_cover():
    for task, shots in (("dg", 0), ("uda", 0), ("ssda", 2), ("sda", 2)):
        splits = make_splits(_labels(), [0], trial_seed=3, holdout_fraction=0.2, task=task,
                             uda_holdout_fraction=0.5 if task in ("uda", "ssda") else 0.0,
                             target_shots=shots, num_classes=4)
        for s in splits:
            parts = [s.in_, s.out, s.uda, s.lab, s.lab_val]
            joined = torch.cat(parts)
            assert len(joined) == len(set(joined.tolist())) == 100
        assert len(splits[0].out) == 20
        if task in ("ssda", "sda"):
            assert torch.bincount(torch.arange(100)[splits[0].lab] % 4).tolist() == [2, 2, 2, 2]
            # the target rule's validation shots: as many per class, disjoint from the training ones
            assert torch.bincount(torch.arange(100)[splits[0].lab_val] % 4).tolist() == [2, 2, 2, 2]
        if task in ("uda", "ssda"):
            assert len(splits[0].uda) == 40
        assert len(splits[1].uda) == len(splits[1].lab) == len(splits[1].lab_val) == 0


def test_splits_depend_only_on_trial_seed():
    a = make_splits(_labels(), [0], 1, 0.2, "uda", 0.5)
    b = make_splits(_labels(), [0], 1, 0.2, "uda", 0.5)
    c = make_splits(_labels(), [0], 2, 0.2, "uda", 0.5)
    assert all(torch.equal(x.in_, y.in_) and torch.equal(x.uda, y.uda) for x, y in zip(a, b))
    assert not torch.equal(a[0].in_, c[0].in_)


def test_trial_splits_identical_across_algorithms(tmp_path, monkeypatch):
    """The trainer hands the same split indices to every algorithm."""
    import shiftbench.trial as T

    seen = []
    original = T.make_splits

    def spy(*a, **k):
        result = original(*a, **k)
        seen.append([s.named() for s in result])
        return result

    monkeypatch.setattr(T, "make_splits", spy)
    from shiftbench.algorithms import list_algorithms

    for alg in list_algorithms(setting="uda", task_type="classification")[:3]:
        T.build_trial(_args(tmp_path, algorithm=alg, task="uda"))
    first = seen[0]
    for other in seen[1:]:
        for e1, e2 in zip(first, other):
            assert all(torch.equal(e1[k], e2[k]) for k in e1)


def test_uda_target_labels_never_reach_the_algorithm(tmp_path, monkeypatch):
    """Permuting the target domain's labels leaves the trained parameters bit-identical."""
    import shiftbench.trial as T

    def run(name, permute):
        original = T.build_trial

        def build(args):
            trial = original(args)
            if permute:
                env = trial.dataset.datasets[0]
                env.y = env.y[torch.randperm(len(env.y), generator=torch.Generator().manual_seed(1))]
            return trial

        monkeypatch.setattr(T, "build_trial", build)
        args = _args(tmp_path, name, task="uda", steps=5)
        train(args, **QUIET)
        monkeypatch.setattr(T, "build_trial", original)
        return torch.load(tmp_path / name / "model.pkl", weights_only=True)["model_dict"]

    a, b = run("a", False), run("b", True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_store_truncates_torn_last_line(tmp_path):
    store = TrialStore(tmp_path)
    store.append_record({"step": 0})
    with open(store.results, "a") as f:
        f.write('{"step": 1, "tor')
    assert [r["step"] for r in store.read_records()] == [0]
    store.truncate_records(1)
    assert store.results.read_text() == '{"step": 0}\n'
    os.remove(store.results)


def test_bf16_precision_is_recorded_deterministic_and_learns(tmp_path):
    a = train(_args(tmp_path, "a", precision="bf16", steps=30, checkpoint_freq=29), **QUIET)
    train(_args(tmp_path, "b", precision="bf16", steps=30, checkpoint_freq=29), **QUIET)
    f = train(_args(tmp_path, "f", steps=30, checkpoint_freq=29), **QUIET)
    assert a[-1]["args"]["precision"] == "bf16" and f[-1]["args"]["precision"] == "fp32"
    assert stable_records(tmp_path / "a") == stable_records(tmp_path / "b")
    assert a[-1]["loss"] != f[-1]["loss"]  # autocast really changed the arithmetic
    assert a[-1]["env1_out_acc"] > 0.5 and abs(a[-1]["env1_out_acc"] - f[-1]["env1_out_acc"]) < 0.2
    with pytest.raises(ShiftbenchError, match="fp16.*bf16, fp32"):
        train(_args(tmp_path, "bad", precision="fp16"), **QUIET)
    assert not (tmp_path / "bad").exists()
