"""shiftbench: a benchmark suite for domain generalization and domain adaptation."""

__version__ = "0.1.0"

SCHEMA_VERSION = 1
