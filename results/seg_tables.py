"""Segmentation tables: mIoU per task and the field's per-class IoU table, under every rule.

Segmentation records carry `env{i}_{split}_miou` and `env{i}_{split}_iou_<class>` instead of
accuracies. Selection reads them through a *view* of each record in which every
`env{i}_{split}_miou` is presented as `env{i}_{split}_acc`, so each selection rule (iid, oracle,
the label-free entropy and IM rules, ...) selects on mIoU exactly as it selects on accuracy.
From the selected checkpoint of each trial:

* `seg_miou`: algorithms x tasks (`game→real` with explicit sources, else the held-out
  environment) + `Avg`, the mIoU (%) on the target's held-out split (never seen in training),
  mean ± sample standard error over trial seeds;
* `seg_iou`: per task, algorithms x classes with `mIoU` last, the per-class IoU (%) of the same
  checkpoints (a class absent from the split has no IoU: `X`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from shiftbench.results.builders import register_table_builder, union
from shiftbench.results.health import annotate, sweep_health
from shiftbench.results.names import order_algorithms
from shiftbench.results.selection import Selected, get_selection_rule, select
from shiftbench.results.stats import mean_and_error
from shiftbench.results.table_model import Cell, Table
from shiftbench.trial_record import config_key, record_key

MIOU, IOU = "seg_miou", "seg_iou"


def is_segmentation(record: dict[str, Any]) -> bool:
    return any(k.endswith("_miou") for k in record)


def selection_view(record: dict[str, Any]) -> dict[str, Any]:
    """The record with each `..._miou` also under `..._acc` (what the selection rules read)."""
    view = {k: v for k, v in record.items() if not k.endswith("_acc")}
    view.update({k[: -len("_miou")] + "_acc": v for k, v in record.items() if k.endswith("_miou")})
    return view


def _label(record: dict[str, Any], s: Selected) -> str:
    envs = record.get("environments") or []
    name = envs[s.test_env] if s.test_env < len(envs) else str(s.test_env)
    if s.source_envs is None:
        return name
    sources = "+".join(envs[i] if i < len(envs) else str(i) for i in s.source_envs)
    return f"{sources}→{name}"


def _cell(values: list[float], ddof: int) -> Cell:
    if not values:
        return Cell()
    mean, err = mean_and_error([100 * v for v in values], ddof)
    return Cell(mean, err, len(values), [100 * v for v in values])


def _class_order(dataset: str, keys: set[str]) -> list[str]:
    from shiftbench.seg_metrics import class_key

    try:
        from shiftbench.datasets import get_dataset_class

        names = [class_key(c) for c in get_dataset_class(dataset).CLASSES or ()]
    except Exception:  # a dataset not registered in this process: the keys' own order
        names = []
    return [c for c in names if c in keys] + sorted(keys - set(names))


def segmentation_tables(records: list[dict[str, Any]], rules: list[str],
                        selected: dict[str, list[Selected]], baseline: str | None,
                        ddof: int) -> list[Table]:
    """The mIoU and per-class IoU tables of every rule (none without segmentation records)."""
    views = [selection_view(r) for r in records if is_segmentation(r)]
    if not views:
        return []
    tables = []
    report = sweep_health([r for r in records if is_segmentation(r)])
    for rule in rules:
        picked = select(views, rule, strict=False)
        if not picked:
            continue
        annotate(report, {rule: picked})
        by_run = {(r["args"]["algorithm"], r["args"]["dataset"], r["args"]["task"],
                   tuple(r["args"]["test_envs"]), int(r["args"]["trial_seed"]),
                   config_key(r["args"]), tuple(r["args"].get("source_envs") or ()),
                   r["step"]): r for r in views}
        # (task, dataset) -> label -> algorithm -> trial -> record
        chosen: dict[tuple[str, str], dict[str, dict[str, dict[int, dict]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(dict)))
        for s in picked:
            r = by_run.get((s.algorithm, s.dataset, s.task, (s.test_env,), s.trial_seed, s.config,
                            tuple(s.source_envs or ()), s.step))
            if r is not None:
                chosen[(s.task, s.dataset)][_label(r, s)][s.algorithm][s.trial_seed] = (
                    r, s.test_env, s.health)
        title = get_selection_rule(rule).TITLE
        title = title if f"({rule})" in title else f"{title} ({rule})"
        for (task, dataset), by_label in sorted(chosen.items()):
            tables.append(_miou_table(rule, title, task, dataset, by_label, ddof))
            for label, by_alg in by_label.items():
                tables.append(_iou_table(rule, title, task, dataset, label, by_alg, ddof))
    return tables


def _miou_table(rule, title, task, dataset, by_label, ddof) -> Table:
    labels = list(by_label)
    algorithms = order_algorithms(sorted({a for v in by_label.values() for a in v}))
    rows = []
    for alg in algorithms:
        per = {lab: {t: rt[0][record_key(rt[1], "in")] for t, rt in by_label[lab].get(alg, {}).items()}
               for lab in labels}
        flags = {lab: {t: rt[2] for t, rt in by_label[lab].get(alg, {}).items()} for lab in labels}
        cells = [_cell(list(per[lab].values()), ddof) for lab in labels]
        for cell, lab in zip(cells, labels):
            cell.health = union(flags[lab].values())
        trials = set.intersection(*(set(per[lab]) for lab in labels))
        cells.append(_cell([sum(per[lab][t] for lab in labels) / len(labels) for t in sorted(trials)],
                           ddof))
        cells[-1].health = union(flags[lab][t] for lab in labels for t in trials)
        rows.append(cells)
    notes = [f"Model selection: {title}, on mIoU. mIoU (%) on the target's held-out split "
             "(never seen in training); mean ± sample standard error over trial seeds; Avg over the tasks "
             "within each trial seed (seeds with every task)."]
    return Table(MIOU, f"{dataset} ({task}) mIoU, selection: {title}", rule, task, dataset,
                 labels + ["Avg"], algorithms, rows, notes)


def _iou_table(rule, title, task, dataset, label, by_alg, ddof) -> Table:
    algorithms = order_algorithms(sorted(by_alg))
    keys: set[str] = set()
    for trials in by_alg.values():
        for r, t, _ in trials.values():
            prefix = record_key(t, "in", "iou_")
            keys |= {k[len(prefix):] for k in r if k.startswith(prefix)}
    classes = _class_order(dataset, keys)
    rows = []
    for alg in algorithms:
        trials = list(by_alg[alg].values())
        cells = [_cell([r[k] for r, t, _ in trials if (k := record_key(t, "in", f"iou_{c}")) in r],
                       ddof) for c in classes]
        cells.append(_cell([r[record_key(t, "in")] for r, t, _ in trials], ddof))
        for cell in cells:
            cell.health = union(h for _, _, h in trials)
        rows.append(cells)
    notes = [f"Model selection: {title}, on mIoU. Per-class IoU (%) on the target's held-out "
             "split at the selected checkpoints; mean ± sample standard error over trial seeds; X: the class "
             "does not occur in the split (nor in the predictions)."]
    return Table(IOU, f"{dataset} ({task}) {label} per-class IoU, selection: {title}", rule, task,
                 dataset, classes + ["mIoU"], algorithms, rows, notes)


register_table_builder(segmentation_tables)
