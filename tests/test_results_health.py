"""Run health on crafted records: each flag tripped by one record set and not by another just on
the other side of its threshold; marks and footnotes in every format; the phase constraint."""

from __future__ import annotations

import json
import math

import pytest

from shiftbench import health as E
from shiftbench.cli import main
from shiftbench.results import health as H
from shiftbench.results.formats import FORMATS, render
from shiftbench.results.headline import leaderboard
from shiftbench.results.reading import read_sweep
from shiftbench.results.selection import Selected, list_selection_rules, select
from shiftbench.results.tables import collect
from tests.results_helpers import make_record, write_trial

N_STEPS = 100
STEPS = (0, 50, 99)


def run(*, last_val=0.9, loss=None, test_curve=(0.5, 0.6, 0.6), steps=STEPS, trial_seed=0,
        algorithm="ERM", test_env=0, **keys):
    """One run of 10 classes held out on `test_env` (the other two are sources): source
    validation `last_val` at the last checkpoint (0.9 before), test accuracy `test_curve`."""
    records = []
    t = test_env
    for i, step in enumerate(steps):
        r = make_record(step, 0, [t], trial_seed=trial_seed, algorithm=algorithm, acc=0.9,
                        num_classes=10, n_steps=N_STEPS, **{f"env{t}_in_acc": test_curve[i],
                                                            f"env{t}_out_acc": test_curve[i]},
                        **keys)
        if i == len(steps) - 1:
            for e in range(3):
                if e != t:
                    r[f"env{e}_out_acc"] = last_val
            if loss is not None:
                r.update(loss)
        records.append(r)
    return records


def flags(records, **kw):
    return H.run_health(records, **kw).flags


def test_thresholds_are_the_documented_ones():
    assert (E.NOT_LEARNING_MARGIN, E.LOSS_TOLERANCE, E.COLLAPSE_DROP) == (0.1, 0.05, 0.10)
    assert flags(run()) == []


def test_not_learning_by_source_validation():
    # chance 0.1: the threshold is 0.1 + 0.1 * 0.9 = 0.19
    assert flags(run(last_val=0.19)) == [E.NOT_LEARNING]
    assert flags(run(last_val=0.1)) == [E.NOT_LEARNING]
    assert flags(run(last_val=0.191)) == []
    health = H.run_health(run(last_val=0.089))
    assert health.source_val == pytest.approx(0.089) and health.chance == pytest.approx(0.1)
    assert "8.9%" in health.details[E.NOT_LEARNING]


def test_not_learning_by_loss_near_ln_c():
    ln10 = math.log(10)
    inside, outside = ln10 * 1.049, ln10 * 1.051
    assert flags(run(loss={"loss": inside})) == [E.NOT_LEARNING]
    assert flags(run(loss={"loss": ln10 * 0.951})) == [E.NOT_LEARNING]
    assert flags(run(loss={"loss": outside})) == []
    # a composite objective is not read as a cross-entropy; a named classification loss is
    assert flags(run(loss={"loss": ln10, "disc_loss": 0.7})) == []
    assert flags(run(loss={"loss": 0.1, "cls_loss": ln10, "disc_loss": 0.7})) == [E.NOT_LEARNING]


def test_not_learning_only_at_the_end():
    unfinished = run(last_val=0.1, steps=(0, 25, 50))
    assert flags(unfinished) == []
    assert flags(run(last_val=0.1)) == [E.NOT_LEARNING]
    # without n_steps (DomainBed's records) the trial's status decides
    records = [{k: v for k, v in r.items() if k != "n_steps"} for r in run(last_val=0.1)]
    assert flags(records, status="done") == [E.NOT_LEARNING]
    assert flags(records, status="incomplete") == []


def test_num_classes_from_the_dataset_when_not_recorded():
    records = [{k: v for k, v in r.items() if k != "num_classes"} for r in run(last_val=0.4)]
    assert E.num_classes(records[-1]) == 3  # DebugVector: chance 1/3, limit 1/3 + 0.1 x 2/3
    assert flags(records) == [E.NOT_LEARNING]
    records[-1]["env1_out_acc"] = records[-1]["env2_out_acc"] = 0.401
    assert flags(records) == []


def test_diverged():
    records = run()
    records[1]["loss"] = float("nan")
    health = H.run_health(records)
    assert health.flags == [E.DIVERGED] and "step 50" in health.details[E.DIVERGED]
    records[1]["loss"] = 1e30
    assert flags(records) == []
    assert flags(run(), failure="non-finite loss") == [E.DIVERGED]
    assert flags(run(), failure="RuntimeError: out of memory") == []


def test_diverged_from_the_failed_marker(tmp_path):
    write_trial(tmp_path, "a", run(steps=(0, 50), test_curve=(0.5, 0.6)), status="failed")
    (tmp_path / "a" / "failed").write_text(json.dumps({"error": "non-finite loss", "step": 60}))
    write_trial(tmp_path, "b", run(steps=(0, 50), test_curve=(0.5, 0.6), trial_seed=1),
                status="failed")  # failed for another reason ("boom")
    report = H.sweep_health(read_sweep(tmp_path, quiet=True).records,
                            read_sweep(tmp_path, quiet=True).jobs)
    assert sorted(h.trial_seed for h in report.flagged()) == [0]
    assert report.counts()[E.DIVERGED] == 1


def test_collapsed():
    assert flags(run(test_curve=(0.5, 0.6, 0.5))) == [E.COLLAPSED]
    assert flags(run(test_curve=(0.5, 0.6, 0.501))) == []
    health = H.run_health(run(test_curve=(0.2, 0.9, 0.3)))
    assert "30.0 at step 99 vs best 90.0 at step 50" in health.details[E.COLLAPSED]


def test_target_at_chance():
    """A run that reads target data, learned its source and ends near chance on its target."""
    # chance 0.1: the threshold is 0.19, on the last checkpoint's target accuracy
    assert flags(run(task="uda", test_curve=(0.1, 0.15, 0.19))) == [E.AT_CHANCE]
    assert flags(run(task="uda", test_curve=(0.1, 0.15, 0.191))) == []
    health = H.run_health(run(task="uda", test_curve=(0.14, 0.1, 0.101)))
    assert health.details[E.AT_CHANCE] == "env 0: 10.1% at step 99 (chance 10.0%)"
    for task in ("ssda", "sda", "tta"):  # every setting that reads target data
        assert flags(run(task=task, test_curve=(0.1, 0.1, 0.1))) == [E.AT_CHANCE], task
    # not checked: domain generalization (an unseen domain at chance is an outcome), a run
    # that did not learn its source ([n] says it), a run that has not reached its budget
    assert flags(run(task="dg", test_curve=(0.1, 0.1, 0.1))) == []
    assert flags(run(task="uda", last_val=0.1, test_curve=(0.1, 0.1, 0.1))) == [E.NOT_LEARNING]
    assert flags(run(task="uda", test_curve=(0.1, 0.1, 0.1), steps=(0, 25, 50))) == []
    # the adapted-to split when the run has no held-out target split (transductive)
    transductive = run(task="uda", test_curve=(0.3, 0.3, 0.3))
    for r in transductive:
        del r["env0_in_acc"]
        r["env0_uda_acc"] = 0.12
    assert flags(transductive) == [E.AT_CHANCE]
    assert E.MARKS[E.AT_CHANCE] == "[t]"


def test_collapse_is_never_an_input_to_selection():
    healthy = run(test_curve=(0.5, 0.6, 0.6))
    collapsed = run(test_curve=(0.5, 0.6, 0.2))
    a = select(healthy, "oracle")[0]
    b = select(collapsed, "oracle")[0]
    assert (a.step, b.step) == (99, 99) and b.test_acc == pytest.approx(0.2)


def phased(start=50):
    """A phased run (adaptation from step `start`): source validation is best before it."""
    records = []
    for step, val, test in ((0, 0.5, 0.1), (50, 0.95, 0.5), (51, 0.9, 0.55), (99, 0.8, 0.7)):
        records.append(make_record(
            step, 0, [0], algorithm="SHOT", task="uda", num_classes=10, n_steps=N_STEPS,
            adaptation_start=start, env1_out_acc=val, env2_out_acc=val, env0_in_acc=test,
            env0_out_acc=test, env0_uda_entropy=1.0 - val, env0_uda_marginal_entropy=2.0,
            env0_uda_snd=val, env0_uda_dev=1.0 - val))
    return records


def phased_curve(source_vals, test_accs, start=50):
    """A SHOT run checkpointed at steps 0, 25, 49 (source phase), 75, 99 (adaptation)."""
    return [make_record(step, 0, [0], algorithm="SHOT", task="uda", num_classes=10,
                        n_steps=N_STEPS, adaptation_start=start, env1_out_acc=val,
                        env2_out_acc=val, env0_in_acc=test, env0_out_acc=test)
            for step, val, test in zip((0, 25, 49, 75, 99), source_vals, test_accs)]


def test_not_learning_of_a_phased_method_is_judged_at_its_source_end():
    # SHOT on synth -> mnist: learns the source, adapts well, forgets the source (15 %)
    forgets = phased_curve((0.1, 0.8, 0.84, 0.3, 0.15), (0.1, 0.5, 0.6, 0.85, 0.9))
    assert flags(forgets) == []
    # a source phase that never learns is flagged, whatever happens after the switch
    never = phased_curve((0.1, 0.12, 0.13, 0.5, 0.6), (0.1, 0.1, 0.1, 0.3, 0.4))
    assert flags(never) == [E.NOT_LEARNING]
    assert "step 49" in E.check_run(never).details[E.NOT_LEARNING]
    # a collapse after the switch (GAM at lr 0.01) is the collapse check's (and, at 10 %, it
    # ends at chance on its target)
    collapses = phased_curve((0.1, 0.9, 0.97, 0.3, 0.13), (0.1, 0.4, 0.41, 0.16, 0.1))
    assert flags(collapses) == [E.COLLAPSED, E.AT_CHANCE]
    # records written before `adaptation_start` was recorded: SHOT's declared start (the
    # record's shot_source_fraction x budget = step 50), as selection reads it
    old = [{k: v for k, v in r.items() if k != "adaptation_start"}
           | {"hparams": {**r["hparams"], "shot_source_fraction": 0.5}} for r in forgets]
    assert flags(old) == []
    # without a source-phase checkpoint (0 < step < start) the run's end is judged, as before
    late = phased_curve((0.1, 0.8, 0.84, 0.3, 0.15), (0.1, 0.5, 0.6, 0.85, 0.9), start=20)
    assert flags(late) == [E.NOT_LEARNING]


def test_no_selected_checkpoint_precedes_adaptation():
    records = phased(start=50)
    for rule in list_selection_rules():
        for s in select(records, rule, strict=False):
            assert s.step > 50, (rule, s.step)
    # iid picks the best adapted checkpoint (step 51), not the source model at step 50
    assert select(records, "iid")[0].step == 51
    unphased = [{k: v for k, v in r.items() if k != "adaptation_start"}
                | {"args": {**r["args"], "algorithm": "ERM"}} for r in records]
    assert select(unphased, "iid")[0].step == 50  # no phases: every checkpoint is a candidate


def test_old_records_get_the_declared_adaptation_start():
    """Records written before `adaptation_start` was recorded: SHOT's declaration (catalog) and
    the record's own hparams and budget give it (round(0.5 x 100) = 50)."""
    old = [{k: v for k, v in r.items() if k != "adaptation_start"}
           | {"hparams": {**r["hparams"], "shot_source_fraction": 0.5}} for r in phased(start=50)]
    assert select(old, "iid")[0].step == 51
    assert H.run_health(old).adaptation_start == 50
    for r in old:
        r["hparams"]["shot_source_fraction"] = 0.3  # another configuration: from step 30 on
    assert select(old, "iid")[0].step == 50


def test_selected_before_adaptation_flag():
    records = phased(start=50)
    report = H.sweep_health(records)

    def chosen(step):
        return Selected("custom", "uda", "DebugVector", "SHOT", 0, 0, 0, step, 0.9, 0.5, 1, 1,
                        None, {})

    at_start, after = chosen(50), chosen(51)
    H.annotate(report, {"custom": [at_start, after]})
    assert at_start.health == (E.BEFORE_ADAPTATION,) and after.health == ()
    run_health = next(iter(report.runs.values()))
    assert run_health.early == {"custom": 50} and report.counts()[E.BEFORE_ADAPTATION] == 1


def _sweep(tmp_path):
    """ERM and DANN, 2 trials, every environment held out once; ERM's trial 0 held out on env 0
    does not learn, DANN's trial 1 held out on env 0 collapses."""
    for e in range(3):
        write_trial(tmp_path, f"erm0_{e}", run(trial_seed=0, test_env=e,
                                              last_val=0.1 if e == 0 else 0.9))
        write_trial(tmp_path, f"erm1_{e}", run(trial_seed=1, test_env=e))
        write_trial(tmp_path, f"dann0_{e}", run(trial_seed=0, test_env=e, algorithm="DANN"))
        curve = (0.5, 0.9, 0.6) if e == 0 else (0.5, 0.6, 0.6)
        write_trial(tmp_path, f"dann1_{e}", run(trial_seed=1, test_env=e, algorithm="DANN",
                                               test_curve=curve))
    return read_sweep(tmp_path, quiet=True)


def test_marks_and_footnotes_in_tables(tmp_path):
    collection = collect(_sweep(tmp_path), ["iid", "oracle"])
    dataset = next(t for t in collection.tables if t.kind == "dataset" and t.rule == "iid")
    assert dataset.row("ERM")["0"].health == (E.NOT_LEARNING,)
    assert dataset.row("ERM")["0"].display().endswith(" [n]")
    assert dataset.row("DANN")["0"].health == (E.COLLAPSED,)
    assert dataset.row("ERM")["1"].health == ()  # nothing selected there
    assert any("[n] not learning" in n and "[c] collapsed" in n for n in dataset.notes)
    baseline = next(t for t in collection.tables if t.kind == "baseline" and t.rule == "iid")
    assert baseline.row("DANN")["Avg"].health == (E.NOT_LEARNING, E.COLLAPSED)
    assert collection.health.counts() == {E.DIVERGED: 0, E.NOT_LEARNING: 1, E.COLLAPSED: 1,
                                          E.AT_CHANCE: 0, E.BEFORE_ADAPTATION: 0}
    board = leaderboard(collection)
    assert dict(zip(board["algorithm"], board["health"])) == {"ERM": "not learning",
                                                              "DANN": "collapsed"}
    frame = dataset.to_frame("health")
    assert frame.loc["ERM", "0"] == "not learning"


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "domainbed"])
def test_health_summary_and_table_in_every_format(tmp_path, fmt):
    sweep = _sweep(tmp_path)
    plain = render(collect(sweep, ["iid"]), fmt)
    if fmt != "csv":  # one line per cell; `collect` prints the summary on standard error
        assert "Health: 2 of 12 runs flagged (1 not learning, 1 collapsed)" in plain
    assert "Run health: flagged runs" not in plain
    full = render(collect(sweep, ["iid"], health=True), fmt)
    assert "Run health: flagged runs" in full
    assert "source validation 10.0" in full
    if fmt == "json":
        data = json.loads(full)
        assert data["health"]["counts"][E.NOT_LEARNING] == 1
        assert data["health"]["thresholds"]["collapse_drop"] == 0.1


def test_cli_health(tmp_path, capsys):
    _sweep(tmp_path)
    assert main(["collect", "--input-dir", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Health: 2 of 12 runs flagged" in out and "Run health: flagged runs" not in out
    assert main(["collect", "--input-dir", str(tmp_path), "--quiet", "--health"]) == 0
    out = capsys.readouterr().out
    assert "Run health: flagged runs" in out and "ERM DebugVector [dg] 0 trial 0 hp 0" in out
    assert main(["collect", "--input-dir", str(tmp_path), "--quiet", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert "Health: 2 of 12 runs flagged" in captured.err and "Health" not in captured.out
    assert main(["collect", "--input-dir", str(tmp_path), "--quiet", "--format", "domainbed"]) == 0
    captured = capsys.readouterr()
    assert "Health: 2 of 12 runs flagged" in captured.err and "Health" not in captured.out


@pytest.mark.parametrize("algorithm, hparams", [
    ("ADDA", {"pretrain_fraction": 0.5}), ("SHOT", {"shot_source_fraction": 0.5, "shot_rounds": 2}),
    ("CBST", {"cbst_source_fraction": 0.5, "cbst_rounds": 2})])
def test_trainer_records_adaptation_start_and_selection_honours_it(tmp_path, algorithm, hparams):
    from shiftbench.trainer import TrainArgs, train

    records = train(TrainArgs(
        dataset="DebugVector", algorithm=algorithm, task="uda", test_envs=[1], steps=8,
        checkpoint_freq=1, output_dir=str(tmp_path / "o"),
        hparams=json.dumps({"batch_size": 8, "mlp_width": 16, **hparams})),
        log=lambda msg: None, progress=False)
    assert [r["step"] for r in records] == list(range(8))
    assert {r["adaptation_start"] for r in records} == {4}  # round(0.5 x 8)
    assert {r["num_classes"] for r in records} == {3}
    assert "health" not in records[-2] and set(records[-1]["health"]) == {"flags", "details"}
    assert records[-1]["health"]["flags"] == H.run_health(records, status="done").flags
    for rule in list_selection_rules():
        for s in select(records, rule, strict=False):
            assert s.step > 4, (rule, s.step)
    erm = train(TrainArgs(dataset="DebugVector", algorithm="ERM", task="uda", test_envs=[1],
                          steps=2, output_dir=str(tmp_path / "erm"),
                          hparams='{"batch_size": 8, "mlp_width": 16}'),
                log=lambda msg: None, progress=False)
    assert "adaptation_start" not in erm[-1]  # no phases: no constraint


def test_trainer_writes_the_health_of_a_run_that_does_not_learn(tmp_path):
    from shiftbench.trainer import TrainArgs, train

    logged = []
    records = train(TrainArgs(dataset="DebugVector", algorithm="ERM", test_envs=[0], steps=3,
                              output_dir=str(tmp_path / "o"),
                              hparams='{"batch_size": 8, "mlp_width": 16, "lr": 0.0}'),
                    log=logged.append, progress=False)
    assert records[-1]["health"]["flags"] == [E.NOT_LEARNING]  # lr 0: the untrained network
    assert any(m.startswith("warning: run health: not learning") for m in logged)


def test_declared_start_equals_the_algorithms_own():
    """results.phases computes, without torch, what each phased algorithm's PhaseSchedule does."""
    from types import SimpleNamespace

    from shiftbench.algorithms import ALGORITHMS, get_algorithm_class
    from shiftbench.results.phases import declared_start

    phased = [a for a in ALGORITHMS if getattr(get_algorithm_class(a), "PHASES", None)]
    assert {"SHOT", "ADDA", "GAM", "CBST", "CRST", "TPLD"} <= set(phased)
    for name in phased:
        schedule = get_algorithm_class(name).PHASES
        for total in (1, 7, 100, 500, 999):
            for fraction in (0.0, 0.3, 0.5, 0.55, 1.0):
                alg = SimpleNamespace(hparams={schedule.source_fraction: fraction},
                                      total_steps=total)
                record = {"args": {"algorithm": name}, "n_steps": total,
                          "hparams": {schedule.source_fraction: fraction}}
                assert declared_start(record) == schedule.start(alg), (name, total, fraction)
