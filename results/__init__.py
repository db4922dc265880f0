"""Results: reading records, model selection rules, tables and reports.

    from shiftbench.results import collect, leaderboard, load_records, read_sweep, render
    frame = load_records("sweep_output")            # one row per record (pandas)
    board = leaderboard("sweep_output")             # one row per setting and algorithm (pandas)
    print(render(collect(read_sweep("sweep_output")), "markdown"))
    report = sweep_health(read_sweep("sweep_output").records)  # run health (results.health)
"""

from shiftbench.results.formats import FORMATS, render
from shiftbench.results.headline import leaderboard
from shiftbench.results.health import run_health, sweep_health
from shiftbench.results.reading import load_records, read_sweep
from shiftbench.results.selection import (
    SELECTION_RULES,
    SelectionRule,
    get_selection_rule,
    list_selection_rules,
    register_selection_rule,
    select,
)
from shiftbench.results.tables import collect, domainbed_format

__all__ = [
    "FORMATS",
    "SELECTION_RULES",
    "SelectionRule",
    "collect",
    "domainbed_format",
    "get_selection_rule",
    "leaderboard",
    "list_selection_rules",
    "load_records",
    "read_sweep",
    "register_selection_rule",
    "render",
    "run_health",
    "select",
    "sweep_health",
]
