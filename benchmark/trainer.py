"""One trial, composed from its parts (this module only re-exports them):

* `shiftbench.trial_record`: `TrialSpec` (here also `TrainArgs`), identity, directory layout;
* `shiftbench.trial`: `normalize` (validate once) and `build_trial`;
* `shiftbench.loop`: `train`, the training loop (resume, callbacks, failure markers);
* `shiftbench.evaluation`: `evaluate` (by task type; test-time adaptation; label-free scores);
* `shiftbench.checkpoints`: `CheckpointStore` (here also `TrialStore`), `save_model`;
* `shiftbench.reporting`: loop callbacks, the log table, `summarize`.

See docs/architecture.md for the data flow.
"""

from __future__ import annotations

from shiftbench.checkpoints import CheckpointStore, save_model
from shiftbench.evaluation import SND_MAX_EXAMPLES, evaluate, register_evaluator
from shiftbench.loop import TIMING_KEYS, train
from shiftbench.reporting import environment_report, summarize
from shiftbench.splits import make_splits
from shiftbench.trial import Trial, autocast, build_trial, check_dataset, normalize, pick_device
from shiftbench.trial_record import TrialSpec, identity

TrainArgs = TrialSpec
TrialStore = CheckpointStore


def validate_args(args: TrialSpec) -> TrialSpec:
    """`normalize(args)`: the checked, canonical copy of a spec."""
    return normalize(args)


__all__ = [
    "SND_MAX_EXAMPLES", "TIMING_KEYS",
    "CheckpointStore", "Trial", "TrainArgs", "TrialSpec", "TrialStore", "autocast", "build_trial",
    "check_dataset", "environment_report", "evaluate", "identity", "make_splits", "normalize",
    "pick_device", "register_evaluator", "save_model", "summarize", "train", "validate_args",
]
