"""Selection rules on hand-built records: DomainBed's definitions, ties, incomplete groups."""

from __future__ import annotations

import pytest
from results_helpers import make_record

from shiftbench.errors import ShiftbenchError, UnknownNameError
from shiftbench.results.selection import (
    SELECTION_RULES,
    applicable_rules,
    get_selection_rule,
    group_records,
    select,
)
from shiftbench.results.tables import collect


def only(selected):
    assert len(selected) == 1, selected
    return selected[0]


def test_registry_and_unknown_names():
    assert SELECTION_RULES.names()[:3] == ["iid", "loo", "oracle"]
    with pytest.raises(UnknownNameError, match="did you mean 'oracle'"):
        get_selection_rule("oracel")
    assert get_selection_rule("LeaveOneOutSelectionMethod").NAME == "loo"


def test_iid_is_mean_of_training_out_accs_with_early_stopping():
    records = [
        make_record(0, 0, [0], env0_in_acc=0.1, env1_out_acc=0.6, env2_out_acc=0.8, env0_out_acc=1),
        make_record(1, 0, [0], env0_in_acc=0.2, env1_out_acc=0.9, env2_out_acc=0.9, env0_out_acc=0),
        make_record(2, 0, [0], env0_in_acc=0.3, env1_out_acc=0.5, env2_out_acc=0.5, env0_out_acc=1),
    ]
    s = only(select(records, "iid"))
    assert (s.step, s.val_acc, s.test_acc) == (1, pytest.approx(0.9), 0.2)


def test_iid_ignores_pair_runs():
    records = [make_record(0, 0, [0], env0_in_acc=0.3),
               make_record(0, 1, [0, 1], env0_in_acc=0.9, env2_out_acc=1.0)]
    s = only([x for x in select(records, "iid") if x.test_env == 0])
    assert (s.hparams_seed, s.test_acc) == (0, 0.3)


def test_ties_earliest_step_then_smallest_hparams_seed():
    records = [
        make_record(0, 5, [1], env1_in_acc=0.9, env0_out_acc=0.7, env2_out_acc=0.7),
        make_record(0, 2, [1], env1_in_acc=0.4, env0_out_acc=0.7, env2_out_acc=0.7),
        make_record(3, 2, [1], env1_in_acc=0.8, env0_out_acc=0.7, env2_out_acc=0.7),
    ]
    s = only(select(records, "iid"))
    assert (s.hparams_seed, s.step, s.test_acc) == (2, 0, 0.4)


def test_oracle_takes_last_checkpoint_whatever_the_order():
    records = [make_record(9, 0, [2], env2_out_acc=0.5, env2_in_acc=0.55),
               make_record(3, 0, [2], env2_out_acc=0.99, env2_in_acc=0.99),
               make_record(9, 1, [2], env2_out_acc=0.6, env2_in_acc=0.61),
               make_record(12, 1, [2], env2_out_acc=0.4, env2_in_acc=0.41)]
    s = only(select(records, "oracle"))
    assert (s.hparams_seed, s.step, s.test_acc) == (0, 9, 0.55)


def loo_records(skip_pair_at_step=None):
    """Held out on [0] and pairs [0,1], [0,2] at steps 0 and 1 (one pair missing at one step)."""
    out = []
    for step, (a, b, test) in enumerate([(0.5, 0.6, 0.7), (0.9, 0.8, 0.3)]):
        out.append(make_record(step, 0, [0], env0_in_acc=test))
        if skip_pair_at_step != (step, 1):
            out.append(make_record(step, 0, [0, 1], env1_in_acc=a))
        if skip_pair_at_step != (step, 2):
            out.append(make_record(step, 0, [0, 2], env2_in_acc=b))
    return out


def test_loo_uses_pair_runs():
    s = only([x for x in select(loo_records(), "loo") if x.test_env == 0])
    assert (s.step, s.val_acc, s.test_acc) == (1, pytest.approx(0.85), 0.3)


def test_loo_skips_steps_with_a_missing_pair_run():
    s = only([x for x in select(loo_records(skip_pair_at_step=(1, 2)), "loo") if x.test_env == 0])
    assert (s.step, s.val_acc, s.test_acc) == (0, pytest.approx(0.55), 0.7)


def test_loo_incomplete_group_selects_nothing():
    records = [r for r in loo_records() if r["args"]["test_envs"] != [0, 2]]
    assert [x for x in select(records, "loo") if x.test_env == 0] == []
    # ... and the table shows X for that cell instead of a number
    table = next(t for t in collect(records, ["loo"]).tables if t.kind == "dataset")
    assert table.cells[0][0].display() == "X" and table.cells[0][-1].display() == "X"


def test_pair_runs_join_both_groups():
    groups = group_records([make_record(0, 0, [2, 0])])
    assert sorted(k[3] for k in groups) == [0, 2]


def test_selection_is_per_trial_then_averaged():
    records = []
    for trial, (best_seed, acc) in enumerate([(0, 0.6), (1, 0.8)]):
        for seed in (0, 1):
            val = 0.9 if seed == best_seed else 0.1
            records.append(make_record(0, seed, [0], trial_seed=trial, env1_out_acc=val,
                                       env2_out_acc=val, env0_in_acc=acc if seed == best_seed
                                       else 0.0))
    sel = select(records, "iid")
    assert [(s.trial_seed, s.hparams_seed) for s in sel] == [(0, 0), (1, 1)]
    cell = next(t for t in collect(records, ["iid"]).tables if t.kind == "dataset").cells[0][0]
    # the sample standard error: std with ddof 1 (10 sqrt 2) / sqrt(2); DomainBed's is 10 / sqrt(2)
    assert cell.mean == pytest.approx(70.0) and cell.err == pytest.approx(10.0)
    cell = next(t for t in collect(records, ["iid"], ddof=0).tables
                if t.kind == "dataset").cells[0][0]
    assert cell.err == pytest.approx(10.0 / 2 ** 0.5)
    assert cell.n == 2


def test_single_trial_prints_n_1_not_a_zero_error():
    records = [make_record(0, 0, [e], env0_in_acc=0.5, env1_in_acc=0.5, env2_in_acc=0.5)
               for e in range(3)]
    for ddof in (0, 1):
        cells = next(t for t in collect(records, ["iid"], ddof=ddof).tables
                     if t.kind == "dataset").cells[0]
        assert cells[0].err is None and cells[0].display() == "50.0 (n=1)"
        assert cells[0].display("markdown") == "50.0 (n=1)"


def test_target_rule_reads_the_disjoint_labeled_validation_only_for_ssda_sda():
    records = [make_record(0, 0, [0], task="ssda", env0_lab_acc=0.9, env0_lab_val_acc=0.2, env0_in_acc=0.9),
               make_record(1, 0, [0], task="ssda", env0_lab_acc=0.1, env0_lab_val_acc=0.8, env0_in_acc=0.4),
               make_record(0, 0, [0], task="dg", env0_lab_val_acc=1.0)]
    s = only(select(records, "target"))
    assert (s.task, s.step, s.test_acc) == ("ssda", 1, 0.4)
    assert "target" in applicable_rules(records)


@pytest.mark.parametrize("rule, keys, expected_step", [
    ("entropy", [{"env0_uda_entropy": 0.9}, {"env0_uda_entropy": 0.2}], 1),
    ("snd", [{"env0_uda_snd": 0.9}, {"env0_uda_snd": 0.2}], 0),
    ("dev", [{"env0_uda_dev": 0.9}, {"env0_uda_dev": 0.2}], 1),
    ("im", [{"env0_uda_entropy": 0.1, "env0_uda_marginal_entropy": 1.0},
            {"env0_uda_entropy": 0.1, "env0_uda_marginal_entropy": 0.5}], 0),
])
def test_unsupervised_validators(rule, keys, expected_step):
    records = [make_record(step, 0, [0], task="uda", env0_in_acc=0.1 * (step + 1), **k)
               for step, k in enumerate(keys, start=1)]
    s = only(select(records, rule))
    assert s.step == expected_step + 1 and s.test_acc == pytest.approx(0.1 * (expected_step + 2))
    # the untrained model (step 0) is never a candidate, even with the best label-free score
    best = {k: (v if rule in ("snd", "im") else -v) * 10 for k, v in keys[expected_step].items()}
    if rule == "im":
        best = {"env0_uda_entropy": 0.0, "env0_uda_marginal_entropy": 10.0}
    initial = make_record(0, 0, [0], task="uda", env0_in_acc=0.99, **best)
    assert only(select([initial, *records], rule)).step == expected_step + 1


def test_unsupervised_validator_without_scores_is_a_clear_error():
    records = [make_record(0, 0, [0], task="uda")]
    with pytest.raises(ShiftbenchError, match="env<t>_uda_snd"):
        select(records, "snd")
    assert select(records, "snd", strict=False) == []
    assert "snd" not in applicable_rules(records)
    c = collect(records)  # default rules: the inapplicable ones are skipped with a note
    assert "snd" not in c.rules and any("'snd' skipped" in n for n in c.notes)
    with pytest.raises(ShiftbenchError, match="applies to tasks uda, ssda"):
        collect([make_record(0, 0, [0])], ["snd"])


def test_runs_without_a_score_drop_out_but_others_compete():
    records = [make_record(1, 0, [0], task="uda", env0_in_acc=0.3),
               make_record(1, 1, [0], task="uda", env0_in_acc=0.6, env0_uda_snd=0.1)]
    s = only(select(records, "snd"))
    assert (s.hparams_seed, s.n_configs, s.n_scored) == (1, 2, 1)


def test_user_registered_rule_works_from_the_command_line(tmp_path, monkeypatch, capsys):
    from results_helpers import write_trial

    from shiftbench.cli import main

    (tmp_path / "my_rules.py").write_text(
        "from shiftbench.results.selection import CheckpointRule, register_selection_rule\n"
        "@register_selection_rule\n"
        "class FirstCheckpoint(CheckpointRule):\n"
        "    NAME = 'first'\n"
        "    TITLE = 'first checkpoint'\n"
        "    def val_score(self, record, test_env):\n"
        "        return -record['step']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    write_trial(tmp_path / "sweep", "a", [make_record(s, 0, [0], env0_in_acc=0.1 * (s + 1))
                                          for s in (0, 1)])
    try:
        assert main(["collect", "--input-dir", str(tmp_path / "sweep"), "--import", "my_rules",
                     "--selection", "first", "--format", "csv"]) == 0
        out = capsys.readouterr().out
        assert ",first,dg,DebugVector," in out and "10.0" in out
    finally:
        SELECTION_RULES._items.pop("first", None)
