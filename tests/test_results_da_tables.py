"""Task-column DA tables (results/da_tables.py) and selection over source->target tasks."""

from __future__ import annotations

import pytest

from shiftbench.results import render
from shiftbench.results.selection import group_records, select
from shiftbench.results.tables import collect
from tests.results_helpers import make_record

ENVS = ["A", "D", "W"]


def da_record(algorithm, sources, target, trial, step, *, in_acc, uda_acc, src_val=0.9,
              hparams_seed=0, task="uda"):
    keys = {f"env{target}_in_acc": in_acc, f"env{target}_uda_acc": uda_acc,
            f"env{target}_uda_entropy": 1.0 - uda_acc}
    for s in sources:
        keys[f"env{s}_out_acc"] = src_val
    r = make_record(step, hparams_seed, [target], trial_seed=trial, algorithm=algorithm,
                    dataset="Office31", task=task, acc=0.1, **keys)
    r["args"]["source_envs"] = list(sources)
    r["environments"] = ENVS
    return r


def office_records():
    """ERM and DANN on A->W and D->W (same target W = 2), two trials, two checkpoints each;
    the second checkpoint has the better source validation."""
    out = []
    for alg, gain in (("ERM", 0.0), ("DANN", 0.1)):
        for trial in (0, 1):
            for sources, base in (((0,), 0.5), ((1,), 0.8)):
                out.append(da_record(alg, sources, 2, trial, 0, in_acc=0.2, uda_acc=0.25,
                                     src_val=0.5))
                out.append(da_record(alg, sources, 2, trial, 10, in_acc=base + gain + 0.01 * trial,
                                     uda_acc=base + gain + 0.02, src_val=0.9))
    return out


def test_tasks_with_one_target_are_selected_separately():
    records = office_records()
    groups = group_records(records)
    assert len(groups) == 2 * 2 * 2  # algorithms x trials x source sets
    chosen = select(records, "iid")
    assert {(s.algorithm, s.source_envs, s.trial_seed) for s in chosen} == {
        (a, (s,), t) for a in ("ERM", "DANN") for s in (0, 1) for t in (0, 1)}
    assert all(s.step == 10 for s in chosen)


def test_iid_validation_reads_only_the_sources():
    # an unused domain (1) with perfect validation accuracy must not count for A->W
    r = da_record("ERM", (0,), 2, 0, 10, in_acc=0.6, uda_acc=0.6, src_val=0.4)
    r["env1_out_acc"] = 1.0
    assert select([r], "iid")[0].val_acc == pytest.approx(0.4)


def test_task_table_columns_average_and_both_splits():
    collection = collect(office_records(), ["iid"])
    tables = [t for t in collection.tables if t.kind == "da_tasks"]
    assert [t.title.split(", ")[1] for t in tables] == ["transductive target accuracy",
                                                         "inductive target accuracy"]
    trans, ind = tables
    assert trans.columns == ["A→W", "D→W", "Avg"]
    assert trans.rows == ["ERM", "DANN"]
    assert "training-domain validation" in trans.notes[0]
    dann = ind.row("DANN")
    assert dann["A→W"].mean == pytest.approx(60.5)  # trials 0.60, 0.61
    assert dann["A→W"].err == pytest.approx(0.5)  # the sample SE: std (ddof 1) / sqrt(2)
    assert dann["D→W"].mean == pytest.approx(90.5)
    assert dann["Avg"].mean == pytest.approx(75.5) and dann["Avg"].n == 2
    assert trans.row("ERM")["A→W"].mean == pytest.approx(52.0)
    text = render(collection, "markdown")
    assert "A→W" in text and "transductive" in text


def test_average_needs_every_task_in_a_trial():
    records = [r for r in office_records()
               if not (r["args"]["algorithm"] == "ERM" and r["args"]["trial_seed"] == 1
                       and r["args"]["source_envs"] == [1])]
    ind = [t for t in collect(records, ["iid"]).tables if t.kind == "da_tasks"][1]
    assert ind.row("ERM")["Avg"].n == 1 and ind.row("ERM")["D→W"].n == 1


def test_no_task_tables_without_explicit_sources():
    records = [make_record(s, 0, [0], task="dg") for s in (0, 10)]
    assert not [t for t in collect(records, ["iid"]).tables if t.kind == "da_tasks"]


def _table_columns(records):
    return [t for t in collect(records, ["iid"]).tables if t.kind == "da_tasks"][0].columns


def test_columns_follow_the_suite_order_not_the_target_index():
    # the six Office-31 tasks, recorded in target-index order (the order a sweep finishes in)
    tasks = [((1,), 0), ((2,), 0), ((0,), 1), ((2,), 1), ((0,), 2), ((1,), 2)]
    records = [da_record("ERM", src, tgt, 0, 10, in_acc=0.5, uda_acc=0.5) for src, tgt in tasks]
    assert _table_columns(records) == ["A→W", "D→W", "W→D", "A→D", "D→A", "W→A", "Avg"]
    # a subset (without A→W and W→D), in another order, keeps the suite's relative order
    subset = [r for r in reversed(records) if r["args"]["source_envs"] + r["args"]["test_envs"]
              not in ([0, 2], [2, 1])]
    assert _table_columns(subset) == ["D→W", "A→D", "D→A", "W→A", "Avg"]


def test_columns_outside_every_suite_are_ordered_by_target_then_sources():
    envs = ["p", "q", "r"]  # no suite has these domains
    records = []
    for src, tgt in [((2,), 1), ((1,), 0), ((2,), 0), ((0,), 1)]:
        r = da_record("ERM", src, tgt, 0, 10, in_acc=0.5, uda_acc=0.5)
        r["environments"] = envs
        records.append(r)
    assert _table_columns(records) == ["q→p", "r→p", "p→q", "r→q", "Avg"]


def test_tasks_sharing_a_target_never_share_a_per_domain_cell():
    # A->W and D->W both target W; each run leaves one domain unused, so W's per-domain cell
    # would have to mix the two tasks: only the task tables report them, and they lead the headline
    records = office_records()
    for r in records:
        r["unused_envs"] = [1 - r["args"]["source_envs"][0]]
    collection = collect(records, ["iid"])
    kinds = {t.kind for t in collection.tables}
    assert "da_tasks" in kinds
    assert not kinds & {"dataset", "averages"}
    from shiftbench.results.headline import render_headline

    text = render_headline(collection)
    assert "A→W" in text and "D→W" in text
    assert "No setting has results" not in text


def test_runs_training_on_every_other_domain_keep_their_per_domain_tables():
    records = office_records()  # no `unused_envs`: the per-domain tables are DomainBed's
    kinds = {t.kind for t in collect(records, ["iid"]).tables}
    assert {"dataset", "averages", "da_tasks"} <= kinds
