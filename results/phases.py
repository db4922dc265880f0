"""A phased run's source model as a row of its own (`collect --source-models`).

Selection considers only a phased algorithm's adapted checkpoints (`shiftbench.phases`, which
also says when adaptation begins), so a number printed under SHOT comes from a SHOT model. The
source model is reachable two ways: the source-only arm's row (ERM, same paired seeds), and the
method's own source phase: the trainer also checkpoints the last step before adaptation
(`adaptation_start - 1`), and `source_model_records` turns a run's source-phase checkpoints into
the run of a row named `"<algorithm> (source)"`, selected by the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shiftbench.phases import (  # noqa: F401 - re-exported: the collector's readers of phases
    ADAPTATION_START,
    adaptation_start,
    adapted_only,
    declared_start,
    is_adapted,
    progress_start,
    source_phase,
)

SOURCE_SUFFIX = " (source)"


def source_model_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each phased run's checkpoints from before its adaptation (`step < adaptation_start`),
    re-labelled as the run of the algorithm `"<name> (source)"` with no phases of its own, so
    every selection rule picks among the method's source models. Step 0 (the untrained network)
    is left out; runs with no other source checkpoint contribute nothing."""
    out = []
    for r in source_phase(records):
        copy = {k: v for k, v in r.items() if k not in (ADAPTATION_START, "health")}
        copy["args"] = {**r["args"], "algorithm": r["args"]["algorithm"] + SOURCE_SUFFIX}
        copy[ADAPTATION_START] = None  # recorded as "no phases": never looked up in the catalog
        out.append(copy)
    return out
