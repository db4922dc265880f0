"""A phased algorithm's own source model: the trainer checkpoints the last step before adaptation,
and `collect --source-models` reports the source-phase checkpoints as `"<algorithm> (source)"`."""

from __future__ import annotations

import json

import pytest

from shiftbench.cli import main
from shiftbench.results.phases import SOURCE_SUFFIX, source_model_records
from shiftbench.results.selection import list_selection_rules, select
from shiftbench.results.tables import collect
from tests.results_helpers import make_record, write_trial

START = 50


def shot_run(trial_seed: int = 0, start: int = START) -> list[dict]:
    """SHOT adapting from step `start`: its source model (step 49) scores 0.40 on the target, the
    adapted checkpoints 0.55 and 0.70; ERM at the same seed scores 0.42."""
    rows = ((0, 0.3, 0.1), (25, 0.9, 0.35), (49, 0.95, 0.40), (51, 0.9, 0.55), (99, 0.8, 0.70))
    return [make_record(step, 0, [0], trial_seed=trial_seed, algorithm="SHOT", task="uda",
                        n_steps=100, adaptation_start=start, env1_out_acc=val, env2_out_acc=val,
                        env0_in_acc=test, env0_out_acc=test)
            for step, val, test in rows]


def test_source_records_are_the_checkpoints_before_adaptation():
    source = source_model_records(shot_run())
    assert [r["step"] for r in source] == [25, 49]  # not step 0, not an adapted checkpoint
    assert {r["args"]["algorithm"] for r in source} == {"SHOT" + SOURCE_SUFFIX}
    assert source_model_records([make_record(10, 0, [0], algorithm="ERM")]) == []
    for rule in ("iid", "oracle"):
        assert select(source, rule)[0].step == 49
    # the originals are untouched: SHOT's own row still selects only adapted checkpoints
    for rule in list_selection_rules():
        for s in select(shot_run(), rule, strict=False):
            assert s.step > START


def test_collect_adds_the_source_row_only_on_request():
    records = shot_run() + [make_record(99, 0, [0], algorithm="ERM", task="uda", acc=0.42)]
    plain = collect(records, ["iid"])
    with_source = collect(records, ["iid"], source_models=True)
    rows = {name for t in with_source.tables for name in t.rows}
    assert "SHOT (source)" in rows and "SHOT (source)" not in {n for t in plain.tables for n in t.rows}
    table = next(t for t in with_source.tables if t.kind == "dataset")
    cells = dict(zip(table.rows, table.cells))
    assert cells["SHOT (source)"][0].mean == pytest.approx(40.0)
    assert cells["SHOT"][0].mean == pytest.approx(55.0)


def test_cli_source_models(tmp_path, capsys):
    write_trial(tmp_path, "shot", shot_run())
    write_trial(tmp_path, "erm", [make_record(99, 0, [0], algorithm="ERM", task="uda", acc=0.42)])
    assert main(["collect", "--input-dir", str(tmp_path), "--quiet", "--format", "markdown",
                 "--source-models"]) == 0
    assert "SHOT (source)" in capsys.readouterr().out
    assert main(["collect", "--input-dir", str(tmp_path), "--quiet", "--format", "domainbed",
                 "--source-models"]) == 2
    assert "--source-models" in capsys.readouterr().err


def test_trainer_checkpoints_the_source_model_without_perturbing_training(tmp_path):
    """SHOT adapting from step 4 of 9: with a checkpoint every 5 steps the trainer adds step 3,
    the last source step; training is the same as with a checkpoint at every step."""
    from shiftbench.trainer import TrainArgs, train

    def run(freq: int) -> list[dict]:
        return train(TrainArgs(
            dataset="DebugVector", algorithm="SHOT", task="uda", test_envs=[1], steps=9,
            checkpoint_freq=freq, output_dir=str(tmp_path / f"f{freq}"),
            hparams=json.dumps({"batch_size": 8, "mlp_width": 16, "shot_source_fraction": 0.5,
                                "shot_rounds": 2})), log=lambda msg: None, progress=False)

    sparse, dense = run(5), run(1)
    assert [r["step"] for r in sparse] == [0, 3, 5, 8]
    assert {r["adaptation_start"] for r in sparse} == {4}  # round(0.5 x 9) = 4 (half to even)
    by_step = {r["step"]: r for r in dense}
    for r in sparse:
        accs = {k: v for k, v in r.items() if k.endswith("_acc")}
        assert accs and accs == {k: by_step[r["step"]][k] for k in accs}, r["step"]
    source = source_model_records(sparse)
    assert [r["step"] for r in source] == [3]
