"""When a phased algorithm's adaptation begins, read from its records (no algorithm import).

Algorithms with a source phase before their adaptation phase (SHOT, ADDA, GAM, CBST, CRST,
TPLD and their segmentation forms: every class that declares `PHASES`, a `PhaseSchedule`)
record `adaptation_start` at each checkpoint: the first training step of the adaptation phase
(`Algorithm.adaptation_start`). A checkpoint is the adapted algorithm's model when it comes
from *after* that step (`step > adaptation_start`); the checkpoint at `adaptation_start` holds
the source model after a single adaptation update, and earlier ones are the source model.
Selection rules consider only adapted checkpoints of such runs (`results.selection`), so a
number printed under SHOT comes from a SHOT model; the source model is the source-only arm's
row (ERM). Records without the key (algorithms without phases, records written before it was
recorded, DomainBed's) put no constraint on selection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

ADAPTATION_START = "adaptation_start"


def adaptation_start(record: dict[str, Any]) -> int | None:
    """The first step of the record's adaptation phase, or None (no phases recorded)."""
    value = record.get(ADAPTATION_START)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value)


def is_adapted(record: dict[str, Any]) -> bool:
    """Whether the checkpoint is a candidate model of its algorithm: always for algorithms
    without phases, after the first adaptation step for phased ones."""
    start = adaptation_start(record)
    return start is None or record["step"] > start


def adapted_only(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checkpoints selection may choose from (see the module docstring)."""
    return [r for r in records if is_adapted(r)]
