"""Which GPUs a sweep runs on, checked before anything is launched or written.

One meaning each, as submitit and DomainBed users expect: `--gpus N` is a *count* (N jobs at
once, on the first N visible devices; submitit's `gpus_per_node` is a count too), `--gpu-ids
0,3` names the devices (the ids `CUDA_VISIBLE_DEVICES` uses). Without either, the multi_gpu
launcher uses every visible device, as DomainBed's does. Both are checked against the devices
this process sees (`CUDA_VISIBLE_DEVICES` when set, else torch's device count): an id that is
not visible, a count larger than the devices, or a machine where torch finds no CUDA device are
refused naming the valid choices. Only the multi_gpu launcher takes them (local runs on this
machine's default device, slurm takes `--slurm-gpus`); another launcher refuses them rather than
ignore them.

Each job then sees only its device (`CUDA_VISIBLE_DEVICES=<id>`) and is told it must use it
(`SHIFTBENCH_DEVICE=cuda`, read by `shiftbench.trial.pick_device`): a job that finds no usable
GPU fails with an error saying so instead of training on the CPU and reporting success.
"""

from __future__ import annotations

import os

from shiftbench.errors import ShiftbenchError

DEVICE_ENV = "SHIFTBENCH_DEVICE"
GPU_LAUNCHERS = ("multi_gpu",)


def cuda_device_count() -> int:
    """CUDA devices this process can use (0 without a CUDA build of torch or a driver)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_gpu_count(value: str | int | None) -> int | None:
    """`--gpus`: a positive count; a comma list is pointed at `--gpu-ids`."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    if "," in text or not text.isdigit() or int(text) < 1:
        hint = f"; to name devices use --gpu-ids {text}" if "," in text else ""
        raise ShiftbenchError(f"--gpus {text!r}: expected a number of GPUs (>= 1){hint}")
    return int(text)


def parse_gpu_ids(value: str | None) -> list[str] | None:
    """`--gpu-ids 0,3`: device ids, no duplicates."""
    if value is None or value == "":
        return None
    ids = [g.strip() for g in str(value).split(",") if g.strip()]
    dupes = sorted({g for g in ids if ids.count(g) > 1})
    if not ids or dupes:
        raise ShiftbenchError(f"--gpu-ids {value!r}: expected distinct device ids such as 0,1,3"
                              + (f" ({', '.join(dupes)} given twice)" if dupes else ""))
    return ids


def visible_gpus(count_fn=None) -> list[str]:
    """The device ids this process may hand out: `CUDA_VISIBLE_DEVICES`'s entries when set (and
    torch sees that many), else 0 .. torch's device count - 1."""
    n = (count_fn or cuda_device_count)()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()][:n]
    return [str(i) for i in range(n)]


def _no_cuda_reason() -> str:
    import torch

    if torch.version.cuda is None:
        return "this torch has no CUDA support"
    return (f"torch (CUDA {torch.version.cuda}) finds no usable GPU: no driver, or "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r} hides them")


def resolve_gpus(launcher: str, count: int | None, ids: list[str] | None,
                 count_fn=None) -> list[str] | None:
    """The device ids the jobs of `launcher` get (None: the launcher uses no GPU); raises a
    `ShiftbenchError` for any request this machine cannot honour."""
    asked = (f"--gpus {count}" if count is not None else "") + \
        (f"--gpu-ids {','.join(ids)}" if ids else "")
    if count is not None and ids:
        raise ShiftbenchError("give either --gpus N (how many) or --gpu-ids 0,1 (which), not both")
    if launcher not in GPU_LAUNCHERS:
        if asked:
            other = ("; slurm tasks get GPUs with --slurm-gpus N" if launcher == "slurm" else "")
            raise ShiftbenchError(f"{asked}: the {launcher} launcher does not hand out GPUs "
                                  f"(use --launcher multi_gpu{other})")
        return None
    visible = visible_gpus(count_fn)
    if not visible:
        raise ShiftbenchError(f"multi_gpu launcher{': ' + asked if asked else ''}: no GPU is "
                              f"visible ({_no_cuda_reason()}); the jobs would run on the CPU. "
                              "Use --launcher local to run on the CPU")
    if ids:
        absent = [g for g in ids if g not in visible]
        if absent:
            raise ShiftbenchError(f"--gpu-ids {','.join(ids)}: device(s) {', '.join(absent)} "
                                  f"not visible; visible: {', '.join(visible)}")
        return list(ids)
    if count is not None:
        if count > len(visible):
            raise ShiftbenchError(f"--gpus {count}: only {len(visible)} GPU(s) visible "
                                  f"({', '.join(visible)})")
        return visible[:count]
    return visible
