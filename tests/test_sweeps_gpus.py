"""`--gpus N` (a count) and `--gpu-ids 0,3` (devices) are checked against the visible devices
before anything is written; a job launched for a GPU fails when it gets none. On CPU, with
mocked device counts."""

from __future__ import annotations

import pytest
import torch

from shiftbench.cli import main
from shiftbench.errors import ShiftbenchError
from shiftbench.sweeps import gpus
from shiftbench.sweeps.gpus import parse_gpu_count, parse_gpu_ids, resolve_gpus
from shiftbench.trial import pick_device

SWEEP = ["sweep", "launch", "--datasets", "DebugVector", "--algorithms", "ERM",
         "--single-test-envs", "--n-trials", "1", "--steps", "2", "--skip-confirmation",
         "--no-progress"]


def _four(monkeypatch, visible: str | None = None):
    monkeypatch.setattr(gpus, "cuda_device_count", lambda: 4)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


def test_count_and_ids_resolve_against_the_visible_devices(monkeypatch):
    _four(monkeypatch)
    assert resolve_gpus("multi_gpu", None, None) == ["0", "1", "2", "3"]
    assert resolve_gpus("multi_gpu", 2, None) == ["0", "1"]  # a count: the first two
    assert resolve_gpus("multi_gpu", None, ["2"]) == ["2"]  # an id: device 2
    with pytest.raises(ShiftbenchError, match=r"--gpus 5: only 4 GPU\(s\) visible \(0, 1, 2, 3\)"):
        resolve_gpus("multi_gpu", 5, None)
    with pytest.raises(ShiftbenchError, match=r"device\(s\) 7 not visible; visible: 0, 1, 2, 3"):
        resolve_gpus("multi_gpu", None, ["1", "7"])
    with pytest.raises(ShiftbenchError, match="not both"):
        resolve_gpus("multi_gpu", 1, ["1"])
    _four(monkeypatch, visible="4,6,7,9")  # ids are CUDA_VISIBLE_DEVICES's
    assert resolve_gpus("multi_gpu", 2, None) == ["4", "6"]
    with pytest.raises(ShiftbenchError, match="visible: 4, 6, 7, 9"):
        resolve_gpus("multi_gpu", None, ["0"])


def test_flag_values_are_parsed_with_one_meaning_each():
    assert parse_gpu_count("2") == 2 and parse_gpu_count(None) is None
    with pytest.raises(ShiftbenchError, match="use --gpu-ids 0,1"):
        parse_gpu_count("0,1")
    with pytest.raises(ShiftbenchError, match="expected a number of GPUs"):
        parse_gpu_count("0")
    assert parse_gpu_ids("0, 3") == ["0", "3"]
    with pytest.raises(ShiftbenchError, match="1 given twice"):
        parse_gpu_ids("1,1")


@pytest.mark.parametrize("flags, message", [
    (["--launcher", "multi_gpu", "--gpu-ids", "1,9"], "device(s) 9 not visible; visible: 0, 1"),
    (["--launcher", "multi_gpu", "--gpus", "3"], "--gpus 3: only 2 GPU(s) visible"),
    (["--launcher", "multi_gpu", "--gpus", "0,1"], "to name devices use --gpu-ids 0,1"),
    (["--launcher", "local", "--gpus", "1"], "the local launcher does not hand out GPUs"),
    (["--launcher", "slurm", "--gpu-ids", "0"], "slurm tasks get GPUs with --slurm-gpus N"),
])
def test_bad_gpu_requests_are_refused_before_anything_is_written(tmp_path, capsys, monkeypatch,
                                                                 flags, message):
    monkeypatch.setattr(gpus, "cuda_device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = tmp_path / "s"
    assert main([*SWEEP, "--output-dir", str(out), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_slurm_missing_is_refused_before_job_files_are_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # no sbatch
    out = tmp_path / "s"
    assert main([*SWEEP, "--output-dir", str(out), "--launcher", "slurm"]) == 2
    assert "the slurm launcher needs" in capsys.readouterr().err
    assert not list(out.rglob("job.json"))


def test_a_job_launched_for_a_gpu_fails_when_it_gets_none(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv("SHIFTBENCH_DEVICE", "cuda")
    with pytest.raises(ShiftbenchError, match="set by the launcher that asked for a GPU"):
        pick_device(None)
    assert pick_device("cpu").type == "cpu"  # an explicit --device still wins
    monkeypatch.setenv("SHIFTBENCH_DEVICE", "gpu0")
    with pytest.raises(ShiftbenchError, match="valid: cpu, cuda, cuda:N"):
        pick_device(None)
    monkeypatch.delenv("SHIFTBENCH_DEVICE")
    assert pick_device(None).type == "cpu"


def test_a_slurm_task_asked_for_gpus_requires_one(tmp_path):
    pytest.importorskip("submitit")
    import sys

    from shiftbench.sweeps.slurm_task import SweepTask

    probe = [sys.executable, "-c", "import os, sys; sys.exit(os.environ['SHIFTBENCH_DEVICE'] != 'cuda')"]
    assert SweepTask(probe, str(tmp_path), {"SHIFTBENCH_DEVICE": "cuda"})() == 0
