"""Choice lists of the training options, importable without torch (the CLI parses with them)."""

EVAL_SPLIT_CHOICES = ("selection", "all")
TTA_MODES = ("continual", "episodic")
PRECISIONS = ("fp32", "bf16")
from shiftbench.setting import ALIASES as TASK_ALIASES  # noqa: E402,F401 (DomainBed's task names)
