"""The trial directory with its resumable state: checkpoints and saved models (torch files).

`CheckpointStore` is a `shiftbench.trial_dir.TrialDir` (records and markers) that also writes
`checkpoint.pt`: everything needed to resume (the algorithm with its optimizers, every RNG
state, the step, the number of records written and the trial's identity). The previous
checkpoint is kept as `checkpoint.prev.pt`; a SHA-256 of each is kept beside it (`*.sha256`), so
a torn or corrupted checkpoint is detected and the previous one used instead. Checkpoints are
loaded with `weights_only=True`: one holding any other pickled object is refused.
"""

from __future__ import annotations

import io
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from shiftbench.paths import atomic_write_bytes, sha256_bytes
from shiftbench.trial import Trial
from shiftbench.trial_dir import TrialDir


class CheckpointStore(TrialDir):
    """The files of one trial directory, written crash-safely."""

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        if self.checkpoint.exists():
            os.replace(self.checkpoint, self.prev_checkpoint)
            sha = self.checkpoint.with_suffix(".sha256")
            if sha.exists():
                os.replace(sha, self.prev_checkpoint.with_suffix(".sha256"))
        atomic_write_bytes(self.checkpoint, data)
        atomic_write_bytes(self.checkpoint.with_suffix(".sha256"),
                           sha256_bytes(data).encode("ascii"))

    def load_checkpoint(self, log) -> dict[str, Any] | None:
        """The newest intact checkpoint, falling back to the previous one; None if neither."""
        for path in (self.checkpoint, self.prev_checkpoint):
            if not path.exists():
                continue
            data = path.read_bytes()
            sha_path = path.with_suffix(".sha256")
            expected = sha_path.read_text().strip() if sha_path.exists() else None
            if expected != sha256_bytes(data):
                log(f"checkpoint {path.name} is corrupted or incomplete (checksum mismatch); "
                    "ignoring it")
                continue
            try:  # weights_only: a checkpoint holding any other pickled object is refused
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except Exception as e:  # pickle.UnpicklingError for a forbidden global
                log(f"checkpoint {path.name} refused: it holds something other than tensors and "
                    f"plain data ({type(e).__name__}: {str(e).splitlines()[0][:200]}); ignoring it")
        return None

    def remove_checkpoints(self) -> None:
        for path in (self.checkpoint, self.prev_checkpoint):
            for p in (path, path.with_suffix(".sha256")):
                if p.exists():
                    p.unlink()


def save_model(trial: Trial, path: Path) -> None:
    """The trained model in DomainBed's `model.pkl` layout."""
    buffer = io.BytesIO()
    torch.save({
        "args": asdict(trial.args), "model_input_shape": list(trial.dataset.input_shape),
        "model_num_classes": trial.dataset.num_classes,
        "model_num_domains": len(trial.train_envs), "model_hparams": trial.hparams,
        "model_dict": trial.algorithm.state_dict(),
    }, buffer)
    atomic_write_bytes(path, buffer.getvalue())
