"""A run is a configuration (hparams seed + fixed overrides): a sweep's grid points share the
hparams seed and must stay separate runs in selection, budgets and health."""

from __future__ import annotations

import json

import pytest
from helpers import erm_lr_grid_spec
from results_helpers import make_record

from shiftbench import health as E
from shiftbench.cli import main
from shiftbench.errors import ShiftbenchError
from shiftbench.results.domainbed_format import domainbed_format
from shiftbench.results.health import health_table, sweep_health
from shiftbench.results.selection import select
from shiftbench.results.stats import hparam_budgets
from shiftbench.results.tables import collect

SLOW, FAST = 1e-3, 1e-1  # the two grid points' learning rates
OVERRIDES = {SLOW: '{"lr":0.001}', FAST: '{"lr":0.1}'}


def grid_record(step, lr, test_envs, **keys):
    """A record of hparams seed 0 whose fixed overrides set `lr` (as a sweep grid point)."""
    r = make_record(step, 0, test_envs, **keys)
    r["args"]["hparams"] = json.dumps({"lr": lr})
    r["hparams"]["lr"] = lr
    return r


def only(selected):
    assert len(selected) == 1, selected
    return selected[0]


def curves():
    """Held out on env 0, steps 0-2. SLOW: validation (env1/env2 out) rises to 0.8, test 0.6 at
    the end; FAST: validation 0.9 at step 0 then 0.5, test 0.3 at the end. FAST's records come
    last, as a second job directory's would."""
    out = []
    for lr, vals, tests in ((SLOW, (0.6, 0.7, 0.8), (0.5, 0.55, 0.6)),
                            (FAST, (0.9, 0.5, 0.5), (0.2, 0.25, 0.3))):
        for step, (v, t) in enumerate(zip(vals, tests)):
            out.append(grid_record(step, lr, [0], env0_in_acc=t, env0_out_acc=v, env1_out_acc=v,
                                   env2_out_acc=v))
    return out


def test_oracle_scores_each_grid_point_on_its_own_last_checkpoint():
    # Mixed into one run, the "last checkpoint" would be FAST's (test 0.3); SLOW's is better.
    s = only(select(curves(), "oracle"))
    assert (s.hparams_seed, s.step, s.val_acc, s.test_acc) == (0, 2, 0.8, 0.6)
    assert s.hparams["lr"] == SLOW and s.config == (0, OVERRIDES[SLOW])
    assert (s.n_configs, s.n_scored) == (2, 2)


def test_iid_early_stops_within_each_grid_point():
    s = only(select(curves(), "iid"))
    assert (s.step, s.test_acc, s.hparams["lr"]) == (0, 0.2, FAST)
    assert (s.n_configs, s.n_scored) == (2, 2)


def test_loo_pairs_each_grid_point_with_its_own_pair_runs():
    """Mixed, every step would have two runs held out on [0] and LOO could score nothing."""
    records = []
    for lr, steps in ((SLOW, [(0.6, 0.5), (0.8, 0.7)]), (FAST, [(0.9, 0.2), (0.4, 0.3)])):
        for step, (val, test) in enumerate(steps):
            records += [grid_record(step, lr, [0], env0_in_acc=test),
                        grid_record(step, lr, [0, 1], env1_in_acc=val),
                        grid_record(step, lr, [0, 2], env2_in_acc=val)]
    s = only([x for x in select(records, "loo") if x.test_env == 0])
    assert (s.step, s.val_acc, s.test_acc, s.hparams["lr"]) == (0, 0.9, 0.2, FAST)


def test_ties_between_grid_points_keep_a_stable_order():
    records = [grid_record(0, lr, [0], env0_in_acc=acc) for lr, acc in ((FAST, 0.4), (SLOW, 0.3))]
    for rule in ("iid", "oracle"):  # equal validation: the smaller overrides string wins
        assert only(select(records, rule)).hparams["lr"] == SLOW
        assert only(select(records[::-1], rule)).hparams["lr"] == SLOW
    records.append(make_record(0, 1, [0], env0_in_acc=0.9))  # seed 1 ties too: seed 0 first
    assert only(select(records, "iid")).hparams_seed == 0


def test_budget_counts_grid_points_as_configurations():
    (budget,) = hparam_budgets(curves())
    assert (budget.min_configs, budget.max_configs) == (2, 2)
    table = next(t for t in collect(curves(), ["iid"]).tables if t.kind == "budget")
    assert table.cells[0][0].display() == "2"


def health_records():
    """10 classes, held out on env 0: SLOW collapses (test 0.9 -> 0.6), FAST stays at 0.6 and
    validates best at the end (so oracle selects it)."""
    out = []
    for lr, tests, last_val in ((SLOW, (0.5, 0.9, 0.6), 0.6), (FAST, (0.5, 0.6, 0.6), 0.7)):
        for i, step in enumerate((0, 50, 99)):
            out.append(grid_record(step, lr, [0], acc=0.9, num_classes=10, n_steps=100,
                                   env0_in_acc=tests[i],
                                   env0_out_acc=last_val if i == 2 else 0.5))
    return out


def test_health_checks_each_grid_point_separately():
    report = sweep_health(health_records())
    assert len(report.runs) == 2
    (flagged,) = report.flagged()
    assert flagged.flags == [E.COLLAPSED] and flagged.overrides == OVERRIDES[SLOW]
    assert health_table(report).rows == [f"ERM DebugVector [dg] 0 trial 0 hp 0 {OVERRIDES[SLOW]}"]
    collection = collect(health_records(), ["oracle"])
    s = only(collection.selected["oracle"])
    assert s.hparams["lr"] == FAST and s.health == ()  # FAST's own run is healthy


def test_config_key_ignores_spacing_and_key_order():
    from shiftbench.trial_record import config_key

    def args(hparams, seed=3):
        return {"hparams_seed": seed, "hparams": hparams}

    assert config_key(args(None)) == config_key(args("")) == config_key(args("{}")) == (3, "")
    assert config_key(args('{"b": 1, "a": 2}')) == config_key(args('{"a":2,"b":1}')) == (
        3, '{"a":2,"b":1}')
    assert config_key(args('{"a": 1}')) != config_key(args('{"a": 1}', seed=4))
    assert config_key({}) == (0, "")  # DomainBed's records may lack both


def test_domainbed_format_refuses_grid_points_instead_of_merging_them():
    with pytest.raises(ShiftbenchError, match=r"hparams_seed 0 has 2 configurations .*"
                                              r"keys a run by hparams_seed alone"):
        domainbed_format(curves())
    one = [r for r in curves() if r["args"]["hparams"] == json.dumps({"lr": SLOW})]
    assert "Total records: 3" in domainbed_format(one)


def test_sweep_grid_end_to_end(tmp_path, capsys):
    """A 2-point grid on DebugVector through `sweep launch` and `collect`."""
    out = tmp_path / "sweep"
    spec = erm_lr_grid_spec(tmp_path, (1e-3, 3e-2))
    assert main(["sweep", "launch", "--spec", str(spec), "--output-dir", str(out),
                 "--skip-confirmation", "--no-progress", "--threads", "1", "--jobs", "1"]) == 0
    jobs = {}
    for results in out.glob("*/results.jsonl"):
        records = [json.loads(line) for line in results.read_text().splitlines()]
        assert {r["args"]["hparams_seed"] for r in records} == {0}
        jobs[json.loads(records[0]["args"]["hparams"])["lr"]] = records
    assert sorted(jobs) == [1e-3, 3e-2]
    capsys.readouterr()
    assert main(["collect", "--input-dir", str(out), "--quiet", "--format", "json",
                 "--selection", "oracle", "--health"]) == 0
    data = json.loads(capsys.readouterr().out)
    (s,) = data["selected"]["oracle"]
    assert (s["n_configs"], s["n_scored"]) == (2, 2)
    lr = s["hparams"]["lr"]
    last = {k: max(v, key=lambda r: r["step"]) for k, v in jobs.items()}
    assert last[lr]["env0_out_acc"] == max(r["env0_out_acc"] for r in last.values())
    assert (s["step"], s["test_acc"]) == (last[lr]["step"], last[lr]["env0_in_acc"])
    budget = next(t for t in data["tables"] if t["kind"] == "budget")
    assert budget["rows"][0]["cells"]["DebugVector"]["display"] == "2"
    assert "2 runs" in data["health"]["summary"]
    assert main(["collect", "--input-dir", str(out), "--quiet", "--format", "domainbed"]) == 2
    assert "2 configurations" in capsys.readouterr().err
