"""Hand-built records and sweep directories for the results tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def make_record(step: int, hparams_seed: int, test_envs: list[int], *, trial_seed: int = 0,
                algorithm: str = "ERM", dataset: str = "DebugVector", task: str = "dg",
                n_envs: int = 3, acc: float = 0.5, **keys: Any) -> dict[str, Any]:
    """A record whose every accuracy is `acc` unless given in `keys` (e.g. env0_in_acc=0.9)."""
    record: dict[str, Any] = {
        "args": {"dataset": dataset, "algorithm": algorithm, "test_envs": list(test_envs),
                 "hparams_seed": hparams_seed, "trial_seed": trial_seed, "seed": 0, "task": task,
                 "holdout_fraction": 0.2},
        "hparams": {"lr": 10.0 ** -(hparams_seed + 2), "batch_size": 32}, "step": step,
        "epoch": step / 10, "loss": 1.0 / (step + 1),
    }
    for i in range(n_envs):
        record[f"env{i}_in_acc"] = acc
        record[f"env{i}_out_acc"] = acc
    record.update(keys)
    return record


def write_trial(root: Path, name: str, records: list[dict[str, Any]], status: str = "done") -> Path:
    """A trial directory with results.jsonl and the marker for `status` (done/failed/incomplete)."""
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "results.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    if status == "done":
        (path / "done").write_text("done")
    elif status == "failed":
        (path / "failed").write_text(json.dumps({"error": "boom"}))
    return path
