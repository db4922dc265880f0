"""Choice lists of the training options, importable without torch (the CLI parses with them)."""

EVAL_SPLIT_CHOICES = ("selection", "all")
TTA_MODES = ("continual", "episodic")
PRECISIONS = ("fp32", "bf16")
TASK_ALIASES = {"domain_generalization": "dg", "domain_adaptation": "uda"}
