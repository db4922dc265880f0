"""The transductive DA mode (`da_mode`): splits, evaluation, defaults of suites and presets,
identity of old records, and the collector's refusal to mix modes in one table."""

from __future__ import annotations

import pytest
import torch

from shiftbench.errors import ShiftbenchError
from shiftbench.presets import default_da_mode
from shiftbench.results.tables import collect
from shiftbench.splits import make_splits
from shiftbench.sweeps.jobs import enumerate_jobs
from shiftbench.sweeps.spec import SpecError, SweepSpec
from shiftbench.trial import normalize
from shiftbench.trial_record import TrialSpec, identity, spec_hash
from tests.test_results_da_tables import da_record, office_records

LABELS = [torch.arange(100) % 10, torch.arange(120) % 10, torch.arange(90) % 10]


def test_transductive_target_is_adapted_on_and_tested_whole():
    ind = make_splits(LABELS, [1], trial_seed=3, holdout_fraction=0.2, task="uda",
                      uda_holdout_fraction=0.5)
    tra = make_splits(LABELS, [1], trial_seed=3, holdout_fraction=0.2, task="uda",
                      uda_holdout_fraction=0.5, transductive=True)
    t = tra[1]
    assert sorted(t.uda.tolist()) == list(range(120))  # the whole target domain, unlabeled
    assert t.in_ is t.uda  # tested on the images it adapted to
    assert torch.equal(t.out, ind[1].out)  # the same target validation split as inductive
    # the inductive mode keeps a held-out part the algorithm never sees
    assert not set(ind[1].in_.tolist()) & set(ind[1].uda.tolist())
    assert len(ind[1].uda) + len(ind[1].in_) + len(ind[1].out) == 120
    for i in (0, 2):  # sources are untouched
        assert torch.equal(tra[i].in_, ind[i].in_) and torch.equal(tra[i].out, ind[i].out)


def test_transductive_ssda_keeps_the_labeled_shots_out_of_the_unlabeled_split():
    t = make_splits(LABELS, [1], 0, 0.2, "ssda", 0.5, target_shots=2, num_classes=10,
                    transductive=True)[1]
    labeled = set(t.lab.tolist()) | set(t.lab_val.tolist())
    assert len(labeled) >= 30 and not labeled & set(t.uda.tolist())
    assert len(t.uda) == 120 - len(labeled)


def test_transductive_needs_an_unlabeled_target():
    with pytest.raises(ShiftbenchError, match="unlabeled target"):
        make_splits(LABELS, [1], 0, 0.2, "dg", transductive=True)
    with pytest.raises(ShiftbenchError, match="--task dg"):
        normalize(TrialSpec(dataset="Debug28", task="dg", da_mode="transductive"))
    with pytest.raises(ShiftbenchError, match="uda-holdout-fraction 0.3 applies to --da-mode inductive"):
        normalize(TrialSpec(dataset="Debug28", task="uda", da_mode="transductive",
                            uda_holdout_fraction=0.3))
    with pytest.raises(ShiftbenchError, match="transductive"):
        normalize(TrialSpec(dataset="Debug28", task="uda", da_mode="whole"))


def test_inductive_default_keeps_old_identities_and_transductive_changes_them():
    old = TrialSpec(dataset="Digits", algorithm="DANN", test_envs=[1], task="uda",
                    source_envs=[0], steps=500)
    assert "da_mode" not in identity(old)
    new = TrialSpec(**{**old.__dict__, "da_mode": "transductive"})
    assert identity(new)["da_mode"] == "transductive" and spec_hash(new) != spec_hash(old)
    # a record's args written before the field existed is the same trial as the inductive spec
    args = old.to_dict()
    del args["da_mode"]
    assert spec_hash(args) == spec_hash(old)
    explicit = TrialSpec(**{**old.__dict__, "da_mode": "inductive"})
    assert spec_hash(explicit) == spec_hash(old)
    # normalize writes the mode a DA trial ran in, so its records say it
    assert normalize(TrialSpec(dataset="Debug28", task="uda")).da_mode == "inductive"
    assert normalize(TrialSpec(dataset="Debug28", task="dg")).da_mode is None


def test_suites_and_da_presets_default_to_transductive():
    assert default_da_mode("dann_digits", "uda") == "transductive"
    assert default_da_mode(None, "uda") == "inductive"
    assert default_da_mode(None, "uda", from_suite=True) == "transductive"
    assert default_da_mode("dann_digits", "dg") is None  # no target to adapt on
    suite = SweepSpec(algorithms=["ERM"], task="uda", tasks=["digits"], n_trials=1, steps=2)
    suite.validate(check_hparams=False)
    jobs = enumerate_jobs(suite, "/tmp/unused")
    assert len(jobs) == 4 and {j.args.da_mode for j in jobs} == {"transductive"}
    explicit = SweepSpec(algorithms=["ERM"], task="uda", tasks=["digits"], n_trials=1, steps=2,
                         da_mode="inductive")
    explicit.validate(check_hparams=False)
    assert {j.args.da_mode for j in enumerate_jobs(explicit, "/tmp/unused")} == {"inductive"}
    plain = SweepSpec(datasets=["Digits"], algorithms=["ERM"], task="uda", n_trials=1, steps=2,
                      single_test_envs=True)
    plain.validate(check_hparams=False)
    assert {j.args.da_mode for j in enumerate_jobs(plain, "/tmp/unused")} == {"inductive"}


def test_a_spec_refuses_a_bad_mode_and_a_holdout_fraction_with_transductive():
    with pytest.raises(ShiftbenchError, match="da_mode"):
        SweepSpec(datasets=["Digits"], algorithms=["ERM"], task="uda", da_mode="x").validate(False)
    with pytest.raises(SpecError, match="uda_holdout_fraction applies to da_mode inductive"):
        SweepSpec(algorithms=["ERM"], task="uda", tasks=["digits"],
                  uda_holdout_fraction=0.5).validate(False)
    with pytest.raises(SpecError, match="needs a task with an unlabeled target"):
        SweepSpec(datasets=["Digits"], algorithms=["ERM"], task="dg",
                  da_mode="transductive").validate(False)


def _transductive(records):
    for r in records:
        r["args"]["da_mode"] = "transductive"
    return records


def test_collect_never_mixes_the_modes():
    mixed = office_records()
    _transductive(mixed[: len(mixed) // 2])
    with pytest.raises(ShiftbenchError, match="mix DA modes .*da_mode inductive.*da_mode "
                                              "transductive"):
        collect(mixed, ["iid"])


def test_transductive_records_give_one_whole_target_table():
    records = _transductive(office_records())
    for r in records:  # in transductive records `in` is the whole target: in_acc == uda_acc
        r["env2_uda_acc"] = r["env2_in_acc"]
    tables = [t for t in collect(records, ["iid"]).tables if t.kind == "da_tasks"]
    assert len(tables) == 1
    assert "transductive target accuracy, whole target domain" in tables[0].title
    assert any("whole target domain" in note for note in tables[0].notes)
    inductive = [t for t in collect(office_records(), ["iid"]).tables if t.kind == "da_tasks"]
    assert sorted("inductive target" in t.title for t in inductive) == [False, True]
    assert not any("whole target domain" in t.title for t in inductive)
    r = da_record("ERM", (0,), 2, 0, 10, in_acc=0.7, uda_acc=0.1)
    r["args"]["da_mode"] = "transductive"
    table = [t for t in collect([r], ["iid"]).tables if t.kind == "da_tasks"][0]
    assert table.cells[0][0].mean == pytest.approx(70.0)  # the selected test (whole-domain) value


def test_a_transductive_trial_scores_the_whole_target_once(tmp_path):
    from shiftbench.trainer import TrainArgs, train

    args = TrainArgs(dataset="Debug28", algorithm="DANN", test_envs=[1], source_envs=[0],
                     task="uda", steps=2, checkpoint_freq=2, da_mode="transductive",
                     output_dir=str(tmp_path), skip_model_save=True)
    last = train(args, progress=False)[-1]
    assert last["args"]["da_mode"] == "transductive"
    assert last["env1_in_acc"] == last["env1_uda_acc"]
    assert "env1_in_entropy" not in last  # only the accuracy-like keys every split has


def test_a_preset_with_its_own_test_split_stays_inductive_in_a_suite():
    assert default_da_mode("dacs_gta5", "uda", from_suite=True) == "inductive"
    assert default_da_mode("dann_digits", "uda", from_suite=True) == "transductive"
