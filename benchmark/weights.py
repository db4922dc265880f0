"""Backbone weights from a local file (`--weights`, the `weights` hparam), loaded strictly.

`read_weights(path)` reads a state dict without running code from the file: safetensors, or
`torch.load(weights_only=True)` (a pickle holding anything but tensors is refused). A checkpoint
that wraps its weights (`{"state_dict": ...}`, `{"model": ...}`) is unwrapped, and a `module.`
prefix on every key (DistributedDataParallel) is removed.

`load_backbone(network, state, head, label)` then requires the file to cover the backbone: every
parameter and buffer of `network` must be in it with its shape, and the file may hold nothing
else, except the classifier (`head`, e.g. `fc` for torchvision ResNets, timm's
`pretrained_cfg["classifier"]`), which is dropped because the algorithm puts its own head on the
features. A mismatch is a `ShiftbenchError` naming the missing, unexpected and wrong-shaped keys
(BatchNorm's `num_batches_tracked` counters may be absent, as in torchvision's own files).

`shiftbench.networks.check_weights(hparams, input_shape)` builds the featurizer on the `meta`
device (no memory, no computation) and loads the file into it, so `shiftbench.trial.normalize`
refuses a bad file before a trial writes anything. The file's content hash (`file_sha256`) is
part of the trial identity (`TrialSpec.weights_sha256`).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from shiftbench.errors import ShiftbenchError

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
SHOWN = 8  # key names shown per kind of mismatch


def read_weights(path: str | os.PathLike, label: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, keyed by name (see the module docstring)."""
    label = label or f"--weights {path}"
    if not os.path.isfile(path):
        raise ShiftbenchError(f"{label}: no such file")
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True,
                               mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        raise ShiftbenchError(f"{label}: refused, the file holds more than tensors (only plain "
                              f"state dicts load; {str(e).splitlines()[0][:200]})") from None
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, ImportError) as e:
        raise ShiftbenchError(f"{label}: not a readable weights file, truncated or of another "
                              f"format ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    for key in WRAPPER_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise ShiftbenchError(f"{label}: holds a {type(state).__name__}, not a state dict "
                              "(a mapping of parameter names to tensors)")
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ShiftbenchError(f"{label}: entries that are not tensors: {_names(not_tensors)}")
    state = {str(k): v for k, v in state.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _names(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def is_head_key(key: str, head: Iterable[str]) -> bool:
    return any(key == h or key.startswith(h + ".") for h in head)


def load_backbone(network: nn.Module, state: Mapping[str, torch.Tensor], head: Iterable[str],
                  label: str) -> None:
    """Load `state` into `network`, which it must cover exactly, the classifier `head` excepted."""
    head = tuple(head)
    expected = {k: v for k, v in network.state_dict().items() if not is_head_key(k, head)}
    given = {k: v for k, v in state.items() if not is_head_key(k, head)}
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in given and given[k].shape != v.shape]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {_names(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {_names(unexpected)}")
        if shapes:
            problems.append(f"{len(shapes)} wrong shape(s) (file != backbone): {_names(shapes)}")
        hint = ""
        if missing and unexpected:
            hint = (f"; e.g. the backbone has {sorted(missing)[0]!r} where the file has "
                    f"{sorted(unexpected)[0]!r}: weights of another architecture, or keys "
                    "under another prefix")
        raise ShiftbenchError(
            f"{label}: the file does not match the backbone ({'; '.join(problems)}{hint}). "
            f"A weights file must hold every backbone weight; the classifier "
            f"({', '.join(head) or 'none'}) is ignored")
    if not any(t.is_meta for t in network.state_dict().values()):  # meta: only checked
        network.load_state_dict(given, strict=False)
