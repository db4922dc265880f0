"""Reading sweeps: duplicates from restarts, truncated lines, bad files, job status, DataFrame API."""

from __future__ import annotations

import json
import warnings

import pytest
from results_helpers import make_record, write_trial

from shiftbench.errors import ShiftbenchError
from shiftbench.results.reading import RecordsWarning, load_records, read_sweep
from shiftbench.results.selection import select


def quiet_read(path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sweep = read_sweep(path, **kw)
    return sweep, [str(w.message) for w in caught if issubclass(w.category, RecordsWarning)]


def test_duplicates_from_a_restart_keep_the_newest(tmp_path):
    first = [make_record(s, 0, [0], env0_in_acc=0.1) for s in (0, 1)]
    second = [make_record(s, 0, [0], env0_in_acc=0.7) for s in (0, 1, 2)]
    write_trial(tmp_path, "a", first + second)
    sweep, msgs = quiet_read(tmp_path)
    assert len(sweep.records) == 3 and sweep.n_duplicates == 2
    assert [r["env0_in_acc"] for r in sweep.records] == [0.7, 0.7, 0.7]
    assert any("2 records superseded" in m for m in msgs)
    assert "2 duplicate records dropped" in sweep.summary_line()


@pytest.mark.parametrize("steps, expected", [
    ([0, 1, 2, 3, 0, 1], [(0, 1), (1, 1)]),  # restarted from scratch and still running
    ([0, 1, 2, 3, 2, 3, 4], [(0, 0), (1, 0), (2, 1), (3, 1), (4, 1)]),  # resumed at step 2
    ([0, 1, 1, 2], [(0, 0), (1, 1), (2, 1)]),  # a line written twice
    ([0, 2, 4], [(0, 0), (2, 0), (4, 0)]),
])
def test_restart_keeps_the_newest_run(tmp_path, steps, expected):
    records, run = [], 0
    for k, step in enumerate(steps):
        if k and step <= steps[k - 1]:
            run += 1
        records.append(make_record(step, 0, [0], run=run))
    write_trial(tmp_path, "a", records)
    sweep, _ = quiet_read(tmp_path)
    assert [(r["step"], r["run"]) for r in sweep.records] == expected
    assert sweep.n_duplicates == len(steps) - len(expected)


def test_truncated_last_line_and_bad_middle_line(tmp_path):
    path = write_trial(tmp_path, "a", [make_record(s, 0, [0]) for s in (0, 1)], status="incomplete")
    good = json.dumps(make_record(2, 0, [0]))
    with open(path / "results.jsonl", "a") as f:
        f.write("{not json}\n" + good + "\n" + good[: len(good) // 2])
    sweep, msgs = quiet_read(tmp_path)
    assert [r["step"] for r in sweep.records] == [0, 1, 2]
    job = sweep.jobs[0]
    assert job.truncated and job.n_bad_lines == 1 and job.status == "incomplete"
    assert any("line 5 (the last) is truncated" in m for m in msgs)
    assert any("line 3 is not a valid record" in m for m in msgs)


def test_bad_files_never_crash(tmp_path):
    write_trial(tmp_path, "good", [make_record(0, 0, [0])])
    bad = tmp_path / "binary"
    bad.mkdir()
    (bad / "results.jsonl").write_bytes(b"\xff\xfe\x00garbage\x80")
    odd = write_trial(tmp_path, "not-a-record", [])
    (odd / "results.jsonl").write_text('[1, 2]\n{"args": {"dataset": "X"}, "step": 0}\n"str"\n')
    sweep, msgs = quiet_read(tmp_path)
    assert len(sweep.records) == 1
    s = sweep.summary()
    assert s["unreadable_files"] == 1 and s["bad_lines"] == 3 and s["jobs"] == 3
    assert any("cannot read it" in m for m in msgs)


def test_job_status_counts_and_only_done(tmp_path):
    write_trial(tmp_path, "d", [make_record(0, 0, [0])], "done")
    write_trial(tmp_path, "f", [make_record(0, 1, [0])], "failed")
    write_trial(tmp_path, "i", [make_record(0, 2, [0])], "incomplete")
    (tmp_path / "failed-at-start").mkdir()
    (tmp_path / "failed-at-start" / "failed").write_text("{}")
    (tmp_path / "launched").mkdir()  # DomainBed's sweep creates the directory at launch
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "out.txt").write_text("step 0")
    (tmp_path / "plots" / "sub").mkdir(parents=True)  # not a trial
    sweep, _ = quiet_read(tmp_path)
    s = sweep.summary()
    assert (s["done"], s["failed"], s["incomplete"], s["records"]) == (1, 2, 3, 3)
    sweep, _ = quiet_read(tmp_path, only_done=True)
    assert [r["args"]["hparams_seed"] for r in sweep.records] == [0]


def test_same_trial_in_two_directories(tmp_path):
    write_trial(tmp_path, "copy1", [make_record(0, 0, [0], env0_in_acc=0.1)], "incomplete")
    write_trial(tmp_path, "copy2", [make_record(s, 0, [0], env0_in_acc=0.9) for s in (0, 1)])
    sweep, msgs = quiet_read(tmp_path)
    assert [(r["step"], r["env0_in_acc"]) for r in sweep.records] == [(0, 0.9), (1, 0.9)]
    assert sweep.n_duplicates == 1 and any("another directory" in m for m in msgs)


def test_domainbed_task_names_and_missing_dir(tmp_path):
    r = make_record(0, 0, [0])
    r["args"]["task"] = "domain_adaptation"
    write_trial(tmp_path, "a", [r])
    sweep, _ = quiet_read(tmp_path)
    assert sweep.records[0]["args"]["task"] == "uda"
    with pytest.raises(ShiftbenchError, match="no such directory"):
        read_sweep(tmp_path / "nope")


def test_empty_dir_warns(tmp_path):
    sweep, msgs = quiet_read(tmp_path)
    assert sweep.records == [] and any("no results.jsonl" in m for m in msgs)


def test_dataframe_api_round_trip(tmp_path):
    records = [make_record(s, h, [e], trial_seed=t, env0_in_acc=0.1 * s + 0.01 * h)
               for s in (0, 1) for h in (0, 1) for e in (0, 1) for t in (0, 1)]
    records.append(make_record(0, 0, [0], dataset="Other", n_envs=4, env3_in_acc=0.3))
    for i, r in enumerate(records):
        write_trial(tmp_path, f"t{i}", [r])
    frame = load_records(tmp_path, quiet=True)
    assert len(frame) == 17 and frame.attrs["summary"]["done"] == 17
    assert {"dataset", "algorithm", "test_envs", "trial_seed", "step", "env0_in_acc",
            "job_dir", "hparams"} <= set(frame.columns)
    assert frame["env3_in_acc"].isna().sum() == 16
    assert set(frame["test_envs"]) == {(0,), (1,)}
    from_frame = select(frame, "iid")
    from_disk = select(read_sweep(tmp_path, quiet=True), "iid")
    assert [s.to_dict() for s in from_frame] == [s.to_dict() for s in from_disk]


def test_a_file_holding_several_trials_is_split_by_trial(tmp_path):
    records = [make_record(s, 0, [e]) for e in range(3) for s in (0, 1)]
    write_trial(tmp_path, "all", records)
    sweep, _ = quiet_read(tmp_path)
    assert len(sweep.records) == 6 and sweep.n_duplicates == 0
