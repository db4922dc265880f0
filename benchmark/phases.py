"""When a phased algorithm's adaptation begins, read from its records (no algorithm import).

Algorithms with a source phase before their adaptation phase (SHOT, ADDA, GAM, CBST, CRST, TPLD
and their segmentation forms: every class that declares `PHASES`, a `PhaseSchedule`) record
`adaptation_start` at each checkpoint: the first training step of the adaptation phase
(`Algorithm.adaptation_start`). A checkpoint is the adapted algorithm's model when it comes from
*after* that step (`step > adaptation_start`); the checkpoint at `adaptation_start` holds the
source model after a single adaptation update, and earlier ones (`source_phase`) are the source
model. Records written before the key existed get it from the algorithm's declaration as the
torch-free catalog reads it (`catalog.AlgorithmEntry.phases`) and the record's own hparams and
budget (`declared_start`); records of algorithms without phases (DomainBed's among them) have
no phases.

The engine's health checks (`shiftbench.health`: "not learning" is judged at the end of the
source phase) and the collector (`results.selection` considers adapted checkpoints only;
`results.phases` turns the source phase into a row of its own) read phases here, so both agree
on which checkpoints are before adaptation. Imports no torch and nothing of `shiftbench.results`.
"""


from __future__ import annotations

import functools
import math
import sys
from collections.abc import Iterable
from typing import Any

ADAPTATION_START = "adaptation_start"


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def adaptation_start(record: dict[str, Any]) -> int | None:
    """The first step of the record's adaptation phase: recorded, else `declared_start`; None
    for an algorithm without phases."""
    if ADAPTATION_START in record:
        value = record[ADAPTATION_START]
        return int(value) if _number(value) else None
    return declared_start(record)


def declared_start(record: dict[str, Any]) -> int | None:
    """What `Algorithm.adaptation_start` gives for the record's algorithm, hparams and budget
    (`n_steps`, else `args.steps`), from the catalog's reading of its `PHASES`; None when the
    algorithm has no phases or something is unknown."""
    phases = _catalog_phases(record["args"]["algorithm"])
    if phases is None:
        return None
    fraction_key, _, by_progress = phases
    fraction = (record.get("hparams") or {}).get(fraction_key)
    total = record.get("n_steps", record["args"].get("steps"))
    if not (isinstance(fraction_key, str) and _number(fraction) and _number(total)):
        return None
    if by_progress:
        return progress_start(int(total), float(fraction))
    return int(round(float(fraction) * int(total)))


def progress_start(total_steps: int, fraction: float) -> int:
    """The first step t whose progress min(1, t / total) reaches `fraction` (as
    `algorithms.components.progress_start`, without torch; tests hold them equal)."""
    if total_steps <= 0 or fraction > 1:
        return 0 if fraction <= 0 else sys.maxsize
    t = max(0, math.ceil(fraction * total_steps))
    while t > 0 and (t - 1) / total_steps >= fraction:
        t -= 1
    while min(1.0, t / total_steps) < fraction:
        t += 1
    return t


@functools.cache
def _catalog_phases(algorithm: str) -> tuple | None:
    try:
        from shiftbench.catalog import algorithm_index
        from shiftbench.source_reader import UNKNOWN

        entry = algorithm_index().get(algorithm)
    except Exception:  # noqa: BLE001 - no catalog: no declared phases
        return None
    phases = getattr(entry, "phases", None)
    return None if phases is None or phases is UNKNOWN or UNKNOWN in phases else tuple(phases)


def is_adapted(record: dict[str, Any]) -> bool:
    """Whether the checkpoint is a candidate model of its algorithm: always for algorithms
    without phases, after the first adaptation step for phased ones."""
    start = adaptation_start(record)
    return start is None or record["step"] > start


def adapted_only(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checkpoints selection may choose from (see the module docstring)."""
    return [r for r in records if is_adapted(r)]


def source_phase(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checkpoints of a phased run's source model, after training started
    (0 < step < adaptation_start), in the given order; [] for a run without phases."""
    out = []
    for r in records:
        start = adaptation_start(r)
        if start is not None and 0 < r["step"] < start:
            out.append(r)
    return out
