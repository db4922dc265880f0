"""Experiment loggers driven through the loop's callback interface; files read back."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import pytest

from shiftbench.errors import ShiftbenchError
from shiftbench.loggers import check_logger_names, make_loggers, numbers


@dataclass
class Spec:
    algorithm: str = "ERM"
    dataset: str = "Debug28"


HPARAMS = {"lr": 0.001, "batch_size": 8, "nonlinear_classifier": False, "backbone": "resnet50"}
LOSSES = [{"loss": 1.0 / (s + 1), "penalty": 0.5} for s in range(4)]
RECORDS = [{"step": 1, "env0_in_acc": 0.5, "env0_out_acc": 0.25, "step_time": 0.1,
            "hparams": HPARAMS, "args": {"dataset": "Debug28"}, "done": False},
           {"step": 3, "env0_in_acc": 0.75, "env0_out_acc": 0.5, "step_time": 0.1,
            "hparams": HPARAMS, "args": {"dataset": "Debug28"}, "unsup": {"entropy": 0.3}}]


def drive(names, out):
    loggers = make_loggers(names, out)
    for lg in loggers:
        lg.start(Spec(), HPARAMS)
    for s, losses in enumerate(LOSSES):
        for lg in loggers:
            lg.step(s, losses)
        for r in RECORDS:
            if r["step"] == s:
                for lg in loggers:
                    lg.checkpoint(r)
    for lg in loggers:
        lg.end(None)


def test_numbers_flattens_and_skips_bools_and_hparams():
    assert numbers(RECORDS[1]) == {"step": 3.0, "env0_in_acc": 0.75, "env0_out_acc": 0.5,
                                   "step_time": 0.1, "unsup/entropy": 0.3}


def test_csv_logger_files(tmp_path):
    drive(["csv"], tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "metrics" / "steps.csv")))
    assert len(rows) == 8 and rows[2] == {"step": "1", "name": "loss", "value": "0.5"}
    ck = list(csv.DictReader(open(tmp_path / "metrics" / "checkpoints.csv")))
    assert {(r["step"], r["name"], float(r["value"])) for r in ck} >= {
        ("1", "env0_out_acc", 0.25), ("3", "env0_in_acc", 0.75), ("3", "unsup/entropy", 0.3)}
    hp = {r["name"]: r["value"] for r in csv.DictReader(open(tmp_path / "metrics" /
                                                             "hparams.csv"))}
    assert hp == {"backbone": "resnet50", "batch_size": "8", "lr": "0.001",
                  "nonlinear_classifier": "False"}
    drive(["csv"], tmp_path)  # a resumed run appends below one header
    lines = (tmp_path / "metrics" / "steps.csv").read_text().splitlines()
    assert len(lines) == 17 and lines.count("step,name,value") == 1


def test_tensorboard_logger_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    drive(["tensorboard", "csv"], tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"loss/loss", "loss/penalty", "env0_in_acc", "env0_out_acc"} <= set(scalars)
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("loss/loss")] == [
        (s, round(1.0 / (s + 1), 6)) for s in range(4)]
    assert [(e.step, e.value) for e in acc.Scalars("env0_out_acc")] == [(1, 0.25), (3, 0.5)]
    text = acc.Tensors("hparams/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text)["lr"] == 0.001


def test_mlflow_logger_offline(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    drive(["mlflow"], tmp_path)
    from shiftbench.loggers import mlflow_uri

    client = MlflowClient(tracking_uri=mlflow_uri(tmp_path))
    runs = client.search_runs(experiment_ids=["0"])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["lr"] == "0.001"
    hist = client.get_metric_history(run.info.run_id, "env0_out_acc")
    assert [(m.step, m.value) for m in hist] == [(1, 0.25), (3, 0.5)]
    assert len(client.get_metric_history(run.info.run_id, "loss_loss")) == 4


def wandb_history(path) -> list[dict]:
    """The history rows of an offline W&B run file: LevelDB's log format (a 7-byte header, then
    32 KiB blocks of records `crc32 u32, length u16, type u8, data`, type 1 = whole, 2/3/4 =
    first/middle/last piece) holding wandb's protobuf `Record`s."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, pieces, rows = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in the block for a header
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pieces = chunk if kind in (1, 2) else pieces + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pieces)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_wandb_logger_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    drive(["wandb"], tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    rows = wandb_history(runs[0])
    losses = [(r["_step"], r["loss/loss"]) for r in rows if "loss/loss" in r]
    assert losses == [(s, 1.0 / (s + 1)) for s in range(4)]
    accs = [(r["_step"], r["env0_out_acc"]) for r in rows if "env0_out_acc" in r]
    assert accs == [(1, 0.25), (3, 0.5)]
    assert any(r.get("unsup/entropy") == 0.3 for r in rows)
    assert b"resnet50" in runs[0].read_bytes()  # the hparams went into the run's config


def test_unknown_and_duplicate_logger_names():
    assert check_logger_names(["csv", "tensorboard", "csv"]) == ["csv", "tensorboard"]
    with pytest.raises(ShiftbenchError, match="unknown logger 'tensorbord'.*tensorboard"):
        check_logger_names(["tensorbord"])


def test_train_logger_flag_writes_files_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from shiftbench.cli import main

    out = tmp_path / "run"
    assert main(["train", "--dataset", "DebugVector", "--steps", "5", "--checkpoint-freq", "2",
                 "--output-dir", str(out), "--skip-model-save", "--logger", "tensorboard",
                 "csv"]) == 0
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    steps = list(csv.DictReader(open(out / "metrics" / "steps.csv")))
    assert sorted({int(r["step"]) for r in steps}) == [0, 1, 2, 3, 4]
    assert {r["name"] for r in steps} == {"loss"}
    ck = list(csv.DictReader(open(out / "metrics" / "checkpoints.csv")))
    for rec in records:  # every record's accuracies, at its step
        for key in ("env0_in_acc", "env1_out_acc"):
            assert any(int(r["step"]) == rec["step"] and r["name"] == key
                       and float(r["value"]) == rec[key] for r in ck)
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("loss/loss")] == [0, 1, 2, 3, 4]
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("env1_out_acc")] == [
        (r["step"], round(r["env1_out_acc"], 6)) for r in records]


def test_missing_logger_package_fails_before_training(tmp_path, monkeypatch, capsys):
    import importlib.util

    from shiftbench.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    assert main(["train", "--dataset", "DebugVector", "--steps", "3", "--output-dir", str(out),
                 "--logger", "csv", "wandb"]) == 2
    assert "--logger wandb needs the wandb package: pip install wandb" in capsys.readouterr().err
    assert not (out / "results.jsonl").exists()


def test_sweep_jobs_log_without_changing_their_hashes(tmp_path):
    from shiftbench.cli import main
    from shiftbench.sweeps.jobs import enumerate_jobs
    from shiftbench.sweeps.spec import SweepSpec

    out = tmp_path / "sweep"
    assert main(["sweep", "launch", "--datasets", "DebugVector", "--algorithms", "ERM",
                 "--single-test-envs", "--n-trials", "1", "--steps", "2", "--output-dir",
                 str(out), "--jobs", "1", "--threads", "1", "--skip-confirmation",
                 "--no-progress", "--logger", "csv"]) == 0
    spec = SweepSpec(datasets=["DebugVector"], algorithms=["ERM"], n_trials=1, steps=2,
                     single_test_envs=True)
    spec.validate()
    jobs = enumerate_jobs(spec, out)
    assert len(jobs) == 3 and all("--logger" not in j.command() for j in jobs)
    for job in jobs:  # the same folders (hashes) as without loggers, each with its CSV files
        rows = list(csv.DictReader(open(job.dir / "metrics" / "steps.csv")))
        assert [int(r["step"]) for r in rows] == [0, 1]
