"""The trial-record module: spec, identity, layout; sweeps made before it stay readable and
resumable with the same hashes; a directory holding another trial is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shiftbench.cli import main
from shiftbench.errors import ShiftbenchError
from shiftbench.loop import TIMING_KEYS
from shiftbench.results.reading import read_sweep
from shiftbench.sweeps import worker
from shiftbench.sweeps.jobs import enumerate_jobs, resolve_seeding
from shiftbench.sweeps.spec import SweepSpec, load_spec
from shiftbench.sweeps.state import job_state
from shiftbench.trainer import TrainArgs, normalize, train
from shiftbench.trial_dir import TrialDir
from shiftbench.trial_record import (
    TrialSpec,
    differing_fields,
    identity,
    read_job_file,
    spec_hash,
    write_job_file,
)

R1 = Path(__file__).parent / "fixtures" / "sweep-r1"
QUIET = {"log": lambda msg: None, "progress": False}


def test_hashes_of_a_sweep_made_before_are_unchanged():
    expected = json.loads((R1 / "hashes.json").read_text())
    for name in ("dg", "uda", "tta_bf16"):
        # made before paired seeding: DomainBed's per-algorithm seeds give the same hashes
        jobs = enumerate_jobs(load_spec(R1 / f"{name}.toml"), "/elsewhere", seeding="domainbed")
        assert {j.hash: identity(j.args) for j in jobs} == expected[name], name
        # a new sweep of the same spec pairs its trials: only the seeds (hence hashes) differ
        paired = enumerate_jobs(load_spec(R1 / f"{name}.toml"), "/elsewhere")
        assert not {j.hash for j in paired} & set(expected[name])
        assert sorted(json.dumps({**identity(j.args), "seed": 0}, sort_keys=True) for j in paired) \
            == sorted(json.dumps({**i, "seed": 0}, sort_keys=True) for i in expected[name].values())
    # the bf16/episodic jobs hash those values, the others do not carry them
    assert all(i["precision"] == "bf16" and i["tta_mode"] == "episodic"
               for i in expected["tta_bf16"].values())


def test_old_sweep_reads(tmp_path):
    for name, done, incomplete in (("dg", 2, 0), ("uda", 1, 1)):
        sweep = read_sweep(R1 / name, quiet=True)
        assert (sweep.count("done"), sweep.count("incomplete")) == (done, incomplete)
        assert not sweep.messages
        for job in sweep.jobs:  # each directory is named by its spec's hash, as recomputed now
            args = read_job_file(job.path).to_dict()
            assert spec_hash(args) == Path(job.path).name


def _stable(records, hparams_keys):
    """Records minus timings and paths; hparams added since (at their old behaviour's default)
    are left out, as are the spec fields added since at their defaults."""
    out = []
    for r in records:
        r = {k: v for k, v in r.items() if k not in TIMING_KEYS}
        r["args"] = {k: v for k, v in r["args"].items()
                     if k not in ("output_dir", "protocol", "source_envs", "image_cache",
                                  "weights_sha256", "da_mode")}
        r["hparams"] = {k: v for k, v in r["hparams"].items() if k in hparams_keys}
        out.append(r)
    return out


def test_old_sweep_resumes_to_the_uninterrupted_records(tmp_path):
    work = tmp_path / "uda"
    shutil.copytree(R1 / "uda", work)
    spec = load_spec(R1 / "uda.toml")
    seeding, note = resolve_seeding(spec, work)  # recognised: continued with its own seeds
    assert seeding == "domainbed" and "not paired" in note
    jobs = enumerate_jobs(spec, work, seeding=seeding)
    assert [job_state(j.dir).state for j in jobs] == ["done", "incomplete"]
    assert "resumable" in job_state(jobs[1].dir).detail
    done_before = (jobs[0].dir / "results.jsonl").read_bytes()
    for job in jobs:
        job.prepare()
        assert worker.run([str(job.spec_file)]) == 0
    assert (jobs[0].dir / "results.jsonl").read_bytes() == done_before  # not rerun
    resumed = [json.loads(ln) for ln in (jobs[1].dir / "results.jsonl").read_text().splitlines()]
    reference = [json.loads(ln) for ln in (R1 / "reference.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [0, 2, 4]
    keys = set(reference[0]["hparams"])
    # scores recorded since the fixture was made (e.g. the DEV risk) are new keys, not changes
    resumed = [{k: v for k, v in r.items() if k in ref} for r, ref in zip(resumed, reference)]
    assert _stable(resumed, keys) == _stable(reference, keys)
    assert resumed[-1]["args"]["protocol"] == "shiftbench" and resumed[-1]["args"]["source_envs"] is None
    assert resumed[-1]["args"]["image_cache"] is False
    assert resumed[-1]["args"]["da_mode"] == "inductive"  # the mode those trials ran in
    assert job_state(jobs[1].dir).state == "done"


def test_training_a_finished_directory_with_other_arguments_is_refused(tmp_path, capsys):
    out = tmp_path / "o"
    args = dict(dataset="DebugVector", test_envs=[0], steps=2, output_dir=str(out),
                hparams='{"batch_size": 8}')
    train(TrainArgs(**args), **QUIET)
    before = (out / "results.jsonl").read_bytes()
    with pytest.raises(ShiftbenchError, match=r"different trial \(finished; its arguments differ: "
                                              r"seed: 0 != 5; trial_seed: 0 != 1; recorded"):
        train(TrainArgs(**args, seed=5, trial_seed=1), **QUIET)
    code = main(["train", "--dataset", "DebugVector", "--test-envs", "0", "--steps", "2",
                 "--output-dir", str(out), "--hparams", '{"batch_size": 8}', "--algorithm",
                 "CORAL"])
    assert code == 2 and 'algorithm: "ERM" != "CORAL"' in capsys.readouterr().err
    assert (out / "results.jsonl").read_bytes() == before
    # the same arguments (paths and save flags aside) are the same trial: nothing to do
    assert train(TrainArgs(**{**args, "skip_model_save": True}), **QUIET)[-1]["step"] == 1
    assert (out / "results.jsonl").read_bytes() == before


def test_spec_is_normalized_once_without_mutating_its_input():
    spec = TrainArgs(dataset="DebugVector", test_envs=["2", 0], task="domain_adaptation",
                     source_envs=["1"])
    once = normalize(spec)
    assert (once.test_envs, once.task, once.source_envs) == ([0, 2], "uda", [1])
    assert (spec.test_envs, spec.task, spec.source_envs) == (["2", 0], "domain_adaptation", ["1"])
    assert normalize(once) is once
    assert spec_hash(once) != spec_hash(TrainArgs(dataset="DebugVector", test_envs=[0, 2],
                                                  task="uda"))


def test_job_file_round_trip_and_bad_files(tmp_path):
    spec = TrialSpec(dataset="DebugVector", test_envs=[1], source_envs=[0], protocol="domainbed",
                     hparams='{"lr": 0.01}')
    path = write_job_file(tmp_path, spec)
    document = json.loads(path.read_text())
    assert document["hash"] == spec_hash(spec) and document["identity"] == identity(spec)
    assert read_job_file(tmp_path) == spec
    path.write_text('{"args": {"dataset": "X", "nonsense": 1}}')
    with pytest.raises(ShiftbenchError, match="unknown trial argument.*nonsense"):
        read_job_file(path)
    path.write_text("{")
    with pytest.raises(ShiftbenchError, match="not a job file"):
        read_job_file(path)


def test_identity_ignores_paths_and_spelling():
    a = TrialSpec(dataset="D", test_envs=[2, 0], hparams='{"b": 1, "a": 2}', output_dir="x")
    b = TrialSpec(dataset="D", test_envs=[0, 2], hparams='{"a":2,"b":1}', output_dir="y",
                  data_dir="/d", skip_model_save=True)
    assert spec_hash(a) == spec_hash(b) and differing_fields(a.to_dict(), b.to_dict()) == []
    c = TrialSpec(dataset="D", test_envs=[0, 2], precision="bf16")
    assert differing_fields(a.to_dict(), c.to_dict()) == [
        'hparams: {"a": 2, "b": 1} != null', 'precision: "fp32" != "bf16"']


def test_worker_reads_the_job_file(tmp_path):
    spec = TrialSpec(dataset="DebugVector", test_envs=[0], steps=2, hparams='{"batch_size": 8}',
                     output_dir=str(tmp_path / "job"))
    (tmp_path / "job").mkdir()
    write_job_file(tmp_path / "job", spec)
    assert worker.run([str(tmp_path / "job" / "job.json")]) == 0
    records = TrialDir(tmp_path / "job").read_records()
    assert [r["step"] for r in records] == [0, 1]
    assert records[-1]["args"] == normalize(spec).to_dict()
    assert worker.run([str(tmp_path / "nowhere.json")]) == 2


def test_image_cache_is_in_the_spec_and_its_identity_only_when_set(tmp_path, capsys):
    lazy, cached = TrialSpec(dataset="PACS"), TrialSpec(dataset="PACS", image_cache=True)
    assert "image_cache" not in identity(lazy) and identity(cached)["image_cache"] is True
    assert spec_hash(lazy) != spec_hash(cached)
    assert differing_fields(lazy.to_dict(), cached.to_dict()) == ["image_cache: false != true"]
    (tmp_path / "spec.toml").write_text('datasets = ["PACS", "DebugVector"]\nalgorithms = ["ERM"]\n'
                                        "n_trials = 1\nsingle_test_envs = true\nimage_cache = true\n")
    jobs = enumerate_jobs(load_spec(tmp_path / "spec.toml"), tmp_path / "out")
    # only the jobs of a dataset that has an image cache get it: the others keep their hashes
    assert {j.args.dataset: j.args.image_cache for j in jobs} == {"PACS": True, "DebugVector": False}
    plain = SweepSpec(datasets=["DebugVector"], algorithms=["ERM"], n_trials=1, single_test_envs=True)
    plain.validate()
    assert {j.hash for j in jobs if j.args.dataset == "DebugVector"} == \
        {j.hash for j in enumerate_jobs(plain, tmp_path / "out")}
    pacs = next(j for j in jobs if j.args.dataset == "PACS")
    assert "--image-cache" in pacs.train_command()
    with pytest.raises(ShiftbenchError, match="dataset DebugVector has no preprocessed image cache; "
                                              "datasets with one: PACS, VLCS"):
        normalize(TrialSpec(dataset="DebugVector", image_cache=True))
    assert main(["train", "--dataset", "DebugVector", "--image-cache", "--steps", "1",
                 "--output-dir", str(tmp_path / "t")]) == 2
    assert "has no preprocessed image cache" in capsys.readouterr().err
