"""`--format html`: one self-contained HTML file (tables, and matplotlib figures as base64 PNG).

It opens as the terminal does: the headline leaderboards (each setting under its primary
selection rule, the same rows and cells as `shiftbench collect` prints, `results.headline`), what
was left out and why, and a table of contents. Then the plots of the headline rules (a bar chart
per dataset: held-out environments x algorithms, error bars = standard error over trials; the
learning curves of the selected runs, the selected checkpoint marked), every table per selection
rule and the search budgets (folded: a click opens them, as `collect --all-tables` prints them
on request), and the sensitivity of test accuracy to each numeric hyperparameter that
varies (every run scored by the first rule). A table without any value is not drawn (one line says
which and why); a section without content gets no heading. Text in figures is at least 9 pt at
100 dpi (12 px), figures at most 11 inches wide so that the page does not shrink them. Nothing is
loaded from the network.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from shiftbench.results.names import environment_names, order_algorithms
from shiftbench.results.selection import get_selection_rule, group_records
from shiftbench.results.table_model import Collection, Table
from shiftbench.trial_record import config_key, record_key

MAX_FIGURES = 60  # keep reports of huge sweeps readable and small
MAX_HPARAMS = 6
DPI = 100
MAX_WIDTH = 11.0  # inches: 1100 px, within the page's 1200 px, so never scaled down
PANELS_PER_ROW = 3
# Every text in a figure is at least 9 pt (12.5 px at DPI).
FONTS = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9,
         "ytick.labelsize": 9, "legend.fontsize": 9}

CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table.results { border-collapse: collapse; margin: 0.5em 0 1.5em; }
table.results th, table.results td { border-bottom: 1px solid #ccc; padding: 3px 10px;
  text-align: right; white-space: nowrap; }
table.results th:first-child, table.results td:first-child { text-align: left; }
table.results thead th { border-bottom: 2px solid #444; }
td.missing { color: #b00; }
p.note { font-size: 85%; color: #555; margin: 0.2em 0; }
figure { margin: 0.5em 0 1.5em; }
figure img { max-width: 100%; }
nav.toc { border: 1px solid #ccc; padding: 0.3em 1em; margin: 1em 0; display: inline-block; }
nav.toc h2 { font-size: 110%; margin: 0.3em 0; }
details > summary { cursor: pointer; }
details > summary > h2 { display: inline; }
details { margin: 1em 0; }
"""


def _figure():
    from matplotlib.figure import Figure

    return Figure


def _legible(build):
    """Run a figure builder with the report's font sizes."""
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(FONTS):
            return build(*args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = build.__name__, build.__doc__
    return wrapper


def _grid(n: int, panel: tuple[float, float]):
    """A figure of `n` panels, at most `PANELS_PER_ROW` per row; (figure, flat list of axes)."""
    cols = min(n, PANELS_PER_ROW)
    rows = math.ceil(n / cols)
    fig = _figure()(figsize=(min(MAX_WIDTH, panel[0] * cols), panel[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig, alt: str, caption: str) -> str:
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def has_values(t: Table) -> bool:
    """Whether any cell holds a number or a text other than a placeholder."""
    return any(c.mean is not None or (c.text or "-") != "-" for cells in t.cells for c in cells)


def table_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in [t.row_label, *t.columns])
    body = []
    for name, cells in zip(t.rows, t.cells):
        tds = []
        for c in cells:
            text = c.display("html", t.digits)
            cls = ' class="missing"' if text == "X" else ""
            tds.append(f"<td{cls}>{html.escape(text)}</td>")
        body.append(f"<tr><th>{html.escape(name)}</th>{''.join(tds)}</tr>")
    out = [f"<h3>{html.escape(t.title)}</h3>"]
    if t.rows:
        out.append(f'<table class="results" data-kind="{t.kind}"><thead><tr>{head}</tr></thead>'
                   f"<tbody>{''.join(body)}</tbody></table>")
    out += [f'<p class="note">{html.escape(n)}</p>' for n in t.notes]
    return "\n".join(out)


@_legible
def bar_chart(t: Table) -> str:
    """Grouped bars: held-out environments (and Avg) on x, one bar per algorithm."""
    Figure = _figure()
    cols = t.columns[:-1]
    width = max(4.0, 1.2 * len(cols) * max(1, len(t.rows)) ** 0.5 + 2)
    fig = Figure(figsize=(min(MAX_WIDTH, width), 3.4))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(t.rows))
    for k, (name, cells) in enumerate(zip(t.rows, t.cells)):
        xs = [i + k * width for i in range(len(cols))]
        means = [c.mean if c.mean is not None else math.nan for c in cells[:-1]]  # X: no bar
        errs = [c.err or 0.0 for c in cells[:-1]]
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cols))], cols)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlabel("held-out environment")
    ax.set_title(f"{t.dataset} ({t.task}) - {t.rule}")
    ax.legend(ncol=2)
    return _img(fig, f"bar chart {t.dataset} {t.rule}", f"Per-domain test accuracy, {t.title}")


def _runs_index(records: Sequence[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    runs: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        a = r["args"]
        if len(a["test_envs"]) == 1:
            runs[(a["task"], a["dataset"], a["algorithm"], a["test_envs"][0], a["trial_seed"],
                  config_key(a))].append(r)
    for v in runs.values():
        v.sort(key=lambda r: r["step"])
    return runs


@_legible
def learning_curves(collection: Collection, rule: str, task: str, dataset: str, runs) -> str | None:
    """Test accuracy vs step of each trial's selected run, one panel per held-out environment."""
    selected = [s for s in collection.selected[rule] if (s.task, s.dataset) == (task, dataset)]
    if not selected:
        return None
    envs = sorted({s.test_env for s in selected})
    names = environment_names(dataset, collection.records)
    fig, axes = _grid(len(envs), (3.6, 3.0))
    colors = {a: f"C{i % 10}" for i, a in enumerate(order_algorithms(s.algorithm for s in selected))}
    for ax, env in zip(axes, envs):
        for s in (s for s in selected if s.test_env == env):
            run = runs.get((task, dataset, s.algorithm, env, s.trial_seed, s.config), [])
            pts = [(r["step"], 100 * r[record_key(env, "in")]) for r in run if record_key(env, "in") in r]
            if not pts:
                continue
            ax.plot(*zip(*pts), color=colors[s.algorithm], alpha=0.8,
                    label=s.algorithm if s.trial_seed == min(x.trial_seed for x in selected) else None)
            ax.plot([s.step], [100 * s.test_acc], "o", color=colors[s.algorithm], ms=4)
        label = names[env] if env < len(names) else str(env)
        ax.set_title(f"held out: {label}")
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy (%)")
    axes[0].legend()
    return _img(fig, f"learning curves {dataset} {rule}",
                f"Learning curves of the selected runs (dots: selected checkpoint), {dataset}, "
                f"{task}, rule {rule}")


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@_legible
def sensitivity(collection: Collection, rule_name: str, task: str, dataset: str,
                algorithm: str) -> str | None:
    """Test accuracy of every run (scored by the rule) against each varying numeric hparam."""
    rule = get_selection_rule(rule_name)
    points: list[tuple[dict[str, Any], int, float]] = []
    groups = group_records(r for r in collection.records
                           if (r["args"]["task"], r["args"]["dataset"], r["args"]["algorithm"])
                           == (task, dataset, algorithm))
    for (_, _, _, env, _, _), group in groups.items():
        for _, choice in rule.hparams_accs(group, env):
            points.append((choice.record.get("hparams", {}), env, 100 * choice.test_acc))
    if len(points) < 2:
        return None
    keys = sorted({k for hp, _, _ in points for k, v in hp.items() if _numeric(v)})
    varying = [k for k in keys if len({hp.get(k) for hp, _, _ in points}) > 1][:MAX_HPARAMS]
    if not varying:
        return None
    fig, axes = _grid(len(varying), (3.6, 3.0))
    for ax, key in zip(axes, varying):
        pts = [(hp[key], env, acc) for hp, env, acc in points if _numeric(hp.get(key))]
        for env in sorted({e for _, e, _ in pts}):
            xs = [x for x, e, _ in pts if e == env]
            ys = [y for _, e, y in pts if e == env]
            ax.scatter(xs, ys, s=12, label=f"env {env}")
        values = [x for x, _, _ in pts]
        if min(values) > 0 and max(values) / min(values) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("test accuracy (%)")
    axes[0].legend()
    return _img(fig, f"sensitivity {dataset} {algorithm}",
                f"Hyperparameter sensitivity of {algorithm} on {dataset} ({task}): every run's test "
                f"accuracy at the checkpoint rule {rule_name} picks")


class _Page:
    """Sections with headings and ids, and the table of contents built from them."""

    def __init__(self) -> None:
        self.sections: list[tuple[str, str, list[str], bool]] = []

    def add(self, title: str, parts: list[str], folded: bool = False) -> None:
        """A section; `folded` ones open on a click (as `collect` prints them on request)."""
        if parts:  # no empty headings
            self.sections.append((f"s{len(self.sections) + 1}", title, parts, folded))

    def render(self) -> list[str]:
        """The first section (the headline), the table of contents, the other sections."""
        toc = "".join(f'<li><a href="#{sid}">{html.escape(title)}</a>'
                      + (" (folded)" if folded else "") + "</li>"
                      for sid, title, _, folded in self.sections)
        out = []
        for i, (sid, title, parts, folded) in enumerate(self.sections):
            heading = f'<h2 id="{sid}">{html.escape(title)}</h2>'
            out += ([f"<details><summary>{heading}</summary>", *parts, "</details>"] if folded
                    else [heading, *parts])
            if i == 0:
                out.append(f'<nav class="toc"><h2>Contents</h2><ol>{toc}</ol></nav>')
        return out


def headline_html(collection: Collection) -> list[str]:
    """What `shiftbench collect` prints first: each setting's leaderboard under its primary
    rule, the source->target task and segmentation tables, the legend, what was left out."""
    from shiftbench.results.headline import (
        headline_grid,
        headline_seg_tables,
        headline_tasks,
        legend,
        omitted,
        primary_rule,
    )

    parts = [table_html(t) for t in collection.tables if t.kind == "health"]  # as the terminal
    tasks = headline_tasks(collection)
    for task in tasks:
        found = headline_grid(collection, task)
        if found is None:
            continue
        title, headers, grid = found
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + f"<th>{html.escape(row[0])}</th>"
                       + "".join(f"<td>{html.escape(c)}</td>" for c in row[1:]) + "</tr>"
                       for row in grid)
        parts += [f"<h3>{html.escape(title)}</h3>",
                  f'<table class="results" data-kind="headline"><thead><tr>{head}</tr></thead>'
                  f"<tbody>{body}</tbody></table>"]
    parts += [table_html(t) for t in collection.tables
              if t.kind == "da_tasks" and t.rule == primary_rule(collection, t.task)]
    parts += [table_html(t) for t in headline_seg_tables(collection)]
    if not parts:
        parts.append('<p class="note">No setting has results under any selection rule.</p>')
    notes = ([legend(collection)] if tasks else []) + omitted(collection)
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    return parts


def _rule_parts(collection: Collection, rule: str) -> tuple[list[str], str | None]:
    """A rule's tables with values, and one line on those left out (None if none)."""
    tables = [t for t in collection.tables if t.rule == rule and t.kind != "budget"]
    empty = [t for t in tables if not has_values(t)]
    parts = [table_html(t) for t in tables if has_values(t)]
    if not empty:
        return parts, None
    reasons = list(dict.fromkeys(n for t in empty if t.kind == "dataset" for n in t.notes)) or [
        "no run has a checkpoint it can select"]
    line = (f"{collection.titles[rule]}: {len(empty)} table(s) without any value not shown ("
            + "; ".join(reasons[:2]) + ").")
    return parts, line


def render_html(collection: Collection) -> str:
    """The whole report as one HTML string."""
    from shiftbench.results.headline import primary_rule

    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>shiftbench results</title>", f"<style>{CSS}</style></head><body>",
             "<h1>shiftbench results</h1>", '<ul class="summary">']
    s = collection.summary
    parts.append(f"<li>Total records: {s.get('records', 0)}</li>")
    if "jobs" in s:
        parts.append(f"<li>Trials: {s['jobs']} ({s['done']} done, {s['incomplete']} incomplete, "
                     f"{s['failed']} failed); duplicate records dropped: "
                     f"{s['duplicates_dropped']}; bad lines: {s['bad_lines']}; unreadable files: "
                     f"{s['unreadable_files']}</li>")
    if collection.health is not None:
        parts.append(f"<li>{html.escape(collection.health.summary_line())}</li>")
    parts += [f"<li>{html.escape(n)}</li>" for n in collection.notes]
    parts.append("</ul>")
    page = _Page()
    rule_sections, left_out = [], []
    for rule in collection.rules:
        tables, line = _rule_parts(collection, rule)
        rule_sections.append((rule, tables))
        if line:
            left_out.append(f'<p class="note">{html.escape(line)}</p>')
    page.add("Headline", headline_html(collection) + left_out)
    runs = _runs_index(collection.records)
    n_figures, plots = 0, []
    for t in collection.tables:  # plots of each setting's headline rule
        if (t.kind != "dataset" or not t.rows or n_figures >= MAX_FIGURES
                or t.rule != primary_rule(collection, t.task)):
            continue
        if any(c.mean is not None for cells in t.cells for c in cells[:-1]):
            plots.append(bar_chart(t))
            n_figures += 1
        curves = learning_curves(collection, t.rule, t.task, t.dataset, runs)
        if curves:
            plots.append(curves)
            n_figures += 1
    page.add("Plots (headline selection rules)", plots)
    for rule, tables in rule_sections:
        page.add(f"Model selection: {collection.titles[rule]}", tables, folded=True)
    page.add("Search budgets", [table_html(t) for t in collection.tables
                                if t.kind == "budget" and has_values(t)], folded=True)
    page.add("Hyperparameter sensitivity", _sensitivity_parts(collection, n_figures))
    parts += page.render()
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _sensitivity_parts(collection: Collection, n_figures: int) -> list[str]:
    parts: list[str] = []
    if not collection.rules:
        return parts
    first = collection.rules[0]
    keys = sorted({(r["args"]["task"], r["args"]["dataset"], r["args"]["algorithm"])
                   for r in collection.records})
    for task, dataset, algorithm in keys:
        if n_figures >= MAX_FIGURES:
            parts.append('<p class="note">further figures omitted (figure limit)</p>')
            break
        if task not in get_selection_rule(first).TASKS:
            continue
        fig = sensitivity(collection, first, task, dataset, algorithm)
        if fig:
            parts.append(fig)
            n_figures += 1
    return parts
