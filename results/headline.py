"""The answer first: one leaderboard per setting under its primary selection rule.

`leaderboard` returns it as a pandas DataFrame (one row per setting and algorithm, best first);
`render_headline` prints it, each setting as one short table with the paired difference to the
baseline, followed by one sentence per table that could not be computed and where the full
tables are. Everything comes from the tables of `tables.collect`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shiftbench.errors import ShiftbenchError
from shiftbench.health import marks as health_marks
from shiftbench.results.health import legend as health_legend
from shiftbench.results.reading import read_sweep
from shiftbench.results.renderers import summary_lines, text_table
from shiftbench.results.seg_tables import IOU, MIOU
from shiftbench.results.table_model import Collection, Table
from shiftbench.results.tables import collect
from shiftbench.setting import all_settings

if TYPE_CHECKING:
    import pandas as pd

    from shiftbench.results.reading import Sweep

# Titles and each setting's headline rule come from the settings themselves (benchmark/setting.py).
SETTING_NAMES = {s.name: s.title or s.name for s in all_settings()}
PRIMARY_RULES = {s.name: s.primary_rule for s in all_settings()}
FALLBACK_RULES = ("iid", "target", "oracle")


def headline_tasks(collection: Collection) -> list[str]:
    """The settings with results, in the order dg, uda, ssda, sda, tta (others last)."""
    tasks = {t.task for t in collection.tables if t.kind == "averages"}
    return sorted(tasks, key=lambda t: (list(SETTING_NAMES).index(t) if t in SETTING_NAMES
                                        else len(SETTING_NAMES), t))


def primary_rule(collection: Collection, task: str) -> str | None:
    """The rule of `task`'s headline: its primary rule if collected, else the first collected rule
    (preferring `FALLBACK_RULES`) that produced tables for it."""
    have = [r for r in collection.rules
            if any(t.rule == r and t.task == task and t.kind in ("averages", "da_tasks")
                   for t in collection.tables)]
    preferred = [PRIMARY_RULES.get(task), *FALLBACK_RULES]
    return next((r for r in preferred if r in have), have[0] if have else None)


def _tables(collection: Collection, rule: str, task: str) -> dict[str, list[Table]]:
    out: dict[str, list[Table]] = {}
    for t in collection.tables:
        if t.rule == rule and t.task == task:
            out.setdefault(t.kind, []).append(t)
    return out


def _rows(collection: Collection, task: str) -> list[dict[str, Any]]:
    rule = primary_rule(collection, task)
    if rule is None:
        return []
    tables = _tables(collection, rule, task)
    if "averages" not in tables:  # only source->target tasks: their tables are the headline
        return []
    averages = tables["averages"][0]
    datasets = averages.columns[:-1]
    single = tables["dataset"][0] if len(datasets) == 1 else None
    baseline = next(iter(tables.get("baseline", [])), None)
    rows = []
    for alg in averages.rows:
        avg_row = averages.row(alg)
        row: dict[str, Any] = {"setting": task, "rule": rule, "algorithm": alg}
        if single is not None:  # one dataset: its held-out domains, then their average
            row["dataset"] = datasets[0]
            for col, cell in list(single.row(alg).items())[:-1]:
                row[col] = cell.mean
            avg = avg_row[datasets[0]]
        else:
            for d in datasets:
                row[d] = avg_row[d].mean
            avg = avg_row["Avg"]
        row.update({"avg": avg.mean, "avg_se": avg.err, "n_trials": avg.n,
                    "health": ", ".join(avg.health)})
        diff = baseline.row(alg)["Avg"] if baseline is not None and alg in baseline.rows else None
        row.update({"diff": None if diff is None else diff.mean,
                    "diff_se": None if diff is None else diff.err,
                    "p_value": None if diff is None else diff.p_value,
                    "n_pairs": 0 if diff is None else diff.n})
        rows.append(row)
    return sorted(rows, key=lambda r: -r["avg"] if r["avg"] is not None else float("inf"))


def leaderboard(data: Collection | Sweep | str | Path | Iterable[dict[str, Any]],
                task: str | None = None, baseline: str | None = "ERM") -> pd.DataFrame:
    """One row per (setting, algorithm), best average first within a setting: accuracy (%) per
    held-out domain (one dataset) or per dataset, `avg` +/- `avg_se` over `n_trials` trials, and
    `diff` (points) to `baseline` with its paired t-test `p_value` over `n_pairs` trials,
    `health` the health flags of the trials behind `avg` (`results.health`); `rule`
    is the selection rule used (see `PRIMARY_RULES`). `data`: a Collection, a Sweep, records or a
    sweep directory."""
    import pandas as pd

    collection = _as_collection(data, baseline)
    tasks = [task] if task else headline_tasks(collection)
    rows = [r for t in tasks for r in _rows(collection, t)]
    if task and not rows:
        raise ShiftbenchError(f"no results for setting {task!r}; the records have: "
                              f"{', '.join(sorted({t.task for t in collection.tables})) or '(none)'}")
    frame = pd.DataFrame(rows)
    if "diff" in frame:
        frame = frame.rename(columns={"diff": f"diff_vs_{collection.baseline}"})
    return frame


def _as_collection(data: Any, baseline: str | None) -> Collection:
    if isinstance(data, Collection):
        return data
    if isinstance(data, (str, Path)):
        data = read_sweep(data, quiet=True)
    return collect(data, baseline=baseline)


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def headline_table(collection: Collection, task: str) -> list[str]:
    """One setting's leaderboard as text lines (title, table, what the numbers are)."""
    found = headline_grid(collection, task)
    if found is None:
        return []
    title, headers, grid = found
    return ["", *textwrap.wrap(title, 80, break_on_hyphens=False), *text_grid(headers, grid)]


def text_grid(headers: list[str], grid: list[list[str]], width: int = 80) -> list[str]:
    """A table in at most `width` columns: the first column left-aligned, the others right-
    aligned, two spaces apart; columns that do not fit go to further tables below, each
    repeating the first column."""
    widths = [max([len(h), *(len(row[i]) for row in grid)]) for i, h in enumerate(headers)]
    bands, band = [], [0]
    for i in range(1, len(headers)):
        if len(band) > 1 and sum(widths[j] + 2 for j in band) + widths[i] > width:
            bands.append(band)
            band = [0]
        band.append(i)
    bands.append(band)

    def line(cells: list[str], band: list[int]) -> str:
        return "  ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j])
                         for j, c in zip(band, cells)).rstrip()

    out: list[str] = []
    for band in bands:
        out += ([""] if out else []) + [line([headers[j] for j in band], band),
                                        "  ".join("-" * widths[j] for j in band)]
        out += [line([row[j] for j in band], band) for row in grid]
    return out


def headline_grid(collection: Collection, task: str) -> tuple[str, list[str], list[list[str]]] | None:
    """One setting's leaderboard as (title, column headers, rows of cell strings): what the
    terminal and the HTML report both show. None when the setting has no headline."""
    rows = _rows(collection, task)
    if not rows:
        return None
    rule = rows[0]["rule"]
    fixed = {"setting", "rule", "algorithm", "dataset", "avg", "avg_se", "n_trials", "diff",
             "p_value", "n_pairs", "health", "diff_se"}
    columns = [k for k in rows[0] if k not in fixed]
    base = collection.baseline
    grid = []
    for r in rows:
        avg = _fmt(r["avg"]) + ("" if r["avg_se"] is None
                                else f" ± {_fmt(r['avg_se'])}")
        if r["avg_se"] is None and r["n_trials"] == 1:
            avg += " (n=1)"
        avg += "" if not r["health"] else " " + health_marks(r["health"].split(", "))
        if r["algorithm"] == base:
            versus = "(baseline)"
        elif r["diff"] is None:
            versus = "-"
        else:
            p = "" if r["p_value"] is None else f", p={r['p_value']:.2g}"
            se = "" if r["diff_se"] is None else f" ± {r['diff_se']:.1f}"
            versus = f"{r['diff']:+.1f}{se}{p}"
        grid.append([r["algorithm"], *[_fmt(r[c]) for c in columns], avg]
                    + ([versus] if base else []))
    trials = max(r["n_trials"] for r in rows)
    on = f" on {rows[0]['dataset']}" if "dataset" in rows[0] else ""
    title = (f"{SETTING_NAMES.get(task, task)} ({task}){on}, {trials} trial(s); model selection: "
             f"{collection.titles.get(rule, rule)}")
    headers = ["Algorithm", *columns, "Avg"] + ([f"vs {base}"] if base else [])
    return title, headers, grid


def legend(collection: Collection) -> str:
    """What the headline's numbers are."""
    one = {t.dataset for t in collection.tables if t.kind == "dataset"}
    cells = ("test accuracy (%) on each held-out domain" if len(one) == 1
             else "test accuracy (%) per dataset, averaged over its held-out domains")
    text = (f"Cells: {cells}; Avg: mean ± sample standard error over trials (n=1: a single "
            "trial, no error)")
    if collection.baseline:
        text += (f"; vs {collection.baseline}: mean paired difference to {collection.baseline} in "
                 "points over the same trials ± its sample standard error, with the paired t-test "
                 "p-value")
    text += "."
    flags = {f for task in headline_tasks(collection) for r in _rows(collection, task)
             for f in (r["health"].split(", ") if r["health"] else [])}
    return text + (" " + health_legend(flags) if flags else "")


def omitted(collection: Collection) -> list[str]:
    """One plain sentence per kind of table that could not be computed."""
    lines = []
    loo_blocked = [t for t in collection.tables if t.rule == "loo" and t.kind == "dataset"
                   and t.notes and all(c.mean is None for row in t.cells for c in row)]
    if loo_blocked:
        lines.append("Leave-one-domain-out selection is left out: it needs runs held out on pairs "
                     "of domains (a sweep without --single-test-envs).")
    from shiftbench.results.selection import get_selection_rule

    tasks = {r["args"]["task"] for r in collection.records}
    missing = []
    for name in ("target", "entropy", "im", "snd", "dev"):
        rule = get_selection_rule(name)
        where = sorted(tasks & set(rule.TASKS))
        if where and name not in collection.rules:
            missing.append(f"{rule.TITLE.replace(' (unsupervised)', '')} ({', '.join(where)})")
    if missing:
        lines.append("Selection rules left out because the records hold no scores for them: "
                     + "; ".join(missing) + ".")
    return lines


def task_tables(collection: Collection) -> list[str]:
    """The source->target task tables (algorithms x tasks + Avg, results/da_tables.py) of each
    setting under its headline rule, as text lines; none when no run had explicit sources."""
    out = []
    for table in collection.tables:
        if table.kind == "da_tasks" and table.rule == primary_rule(collection, table.task):
            out += text_table(table)
    return out


def render_headline(collection: Collection, full_tables: str | None = None,
                    report: str | None = None, width: int = 80) -> str:
    """The headline leaderboards, what was left out, and where the rest is."""
    s = collection.summary
    first = summary_lines(collection)[0] if "jobs" not in s else summary_lines(collection)[1]
    out = textwrap.wrap(first, width, break_on_hyphens=False)
    if collection.health is not None:
        out += textwrap.wrap(collection.health.summary_line(), width, break_on_hyphens=False)
    for table in collection.tables:
        if table.kind == "health":
            out += text_table(table)
    tasks = headline_tasks(collection)
    for task in tasks:
        out += headline_table(collection, task)
    segmentation = seg_headline_lines(collection)
    if not tasks and not segmentation and not any(t.kind == "da_tasks" for t in collection.tables):
        out.append("No setting has results under any selection rule.")
    out += task_tables(collection)
    out += segmentation
    prose = [legend(collection)] if tasks else []
    skipped = omitted(collection)
    prose += skipped
    prose.append("Every table (each selection rule, per-domain mean ± SE, ranks, paired tests, "
                 "search budgets): " + (full_tables or "add --all-tables") + ".")
    prose.append("HTML report with plots: " + (report or "--format html --output report.html") + ".")
    out.append("")
    for paragraph in prose:
        out += textwrap.wrap(paragraph, width, break_on_hyphens=False, break_long_words=False)
    return "\n".join(out) + "\n"


def seg_headline_lines(collection: Collection) -> list[str]:
    """The mIoU and per-class IoU tables of each setting under its headline rule, as text."""
    return [line for t in headline_seg_tables(collection) for line in text_table(t)]


def headline_seg_tables(collection: Collection) -> list[Table]:
    """The mIoU and per-class IoU tables of each setting under its headline rule (the
    `PRIMARY_RULES`, else iid, else the first rule with tables)."""
    seg = [t for t in collection.tables if t.kind in (MIOU, IOU)]
    out = []
    for task in dict.fromkeys(t.task for t in seg):
        have = [r for r in collection.rules if any(t.rule == r and t.task == task for t in seg)]
        preferred = [PRIMARY_RULES.get(task), "iid", *FALLBACK_RULES]
        rule = next((r for r in preferred if r in have), have[0] if have else None)
        for kind in (MIOU, IOU):
            out += [t for t in seg if t.task == task and t.rule == rule and t.kind == kind]
    return out
