"""Fuzzing (hypothesis) the record reader, the collector and the TOML sweep-spec parser.

Properties: whatever bytes are in `results.jsonl`, reading never raises (problems are warnings) and
`collect` either prints tables or exits with a clear error; whatever text a spec file holds,
`load_spec` returns a spec or raises `ShiftbenchError` (invalid TOML: with a line number).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from results_helpers import make_record

from shiftbench.cli import main
from shiftbench.errors import ShiftbenchError
from shiftbench.results.reading import read_sweep
from shiftbench.sweeps.spec import SweepSpec, load_spec

FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

scalars = (st.none() | st.booleans() | st.integers(-10**30, 10**30)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
FIELDS = ("dataset", "algorithm", "test_envs", "hparams_seed", "trial_seed", "task", "seed")


@st.composite
def record_lines(draw) -> str:
    """A line of results.jsonl: a valid record, a damaged one, arbitrary JSON or raw text."""
    kind = draw(st.sampled_from(["good", "damaged", "json", "text", "bytes"]))
    if kind == "text":
        return draw(st.text(max_size=40))
    if kind == "bytes":
        return draw(st.binary(max_size=40)).decode("latin-1")
    if kind == "json":
        return json.dumps(draw(json_values))
    record = make_record(draw(st.integers(0, 5)), draw(st.integers(0, 2)),
                         [draw(st.integers(0, 2))], trial_seed=draw(st.integers(0, 1)))
    if kind == "damaged":
        where = draw(st.sampled_from(["args", "top"]))
        target = record["args"] if where == "args" else record
        key = draw(st.sampled_from(FIELDS if where == "args" else
                                   ("step", "args", "hparams", "env0_out_acc", "env1_in_acc")))
        if draw(st.booleans()):
            target.pop(key, None)
        else:
            target[key] = draw(json_values)
    line = json.dumps(record)
    if draw(st.booleans()) and kind == "damaged":
        line = line[:draw(st.integers(0, len(line)))]  # torn
    return line


def _write(root: Path, files: list[list[str]], raw: bytes | None) -> None:
    for i, lines in enumerate(files):
        d = root / f"trial{i}"
        d.mkdir()
        (d / "results.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8",
                                         errors="surrogatepass")
        if i % 2:
            (d / "done").write_text("done")
    if raw is not None:
        (root / "foreign").mkdir()
        (root / "foreign" / "results.jsonl").write_bytes(raw)
        (root / "foreign" / "notes.txt").write_bytes(raw)


@FUZZ
@given(files=st.lists(st.lists(record_lines(), max_size=6), min_size=1, max_size=3),
       raw=st.none() | st.binary(max_size=64))
def test_reader_never_crashes_and_collect_is_clean(files, raw):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write(root, files, raw)
        sweep = read_sweep(root, quiet=True)  # must not raise
        assert len(sweep.jobs) == len(files) + (raw is not None)
        for record in sweep.records:
            assert isinstance(record["args"], dict) and "step" in record
        try:
            code = main(["collect", "--input-dir", str(root), "--quiet", "--output",
                         str(root / "table.txt")])
        except ShiftbenchError:  # pragma: no cover - main turns these into exit codes
            pytest.fail("collect leaked a ShiftbenchError")
        assert code in (0, 2)


SPEC_KEYS = ["datasets", "algorithms", "task", "n_hparams", "n_hparams_from", "n_trials", "steps",
             "checkpoint_freq", "holdout_fraction", "single_test_envs", "n_trails", "target_shots"]
toml_values = st.sampled_from(['["DebugVector"]', '["ERM"]', '["ERM", "Nope"]', '"dg"', '"magic"',
                               "1", "0", "-3", "2.5", "true", '"two"', "[]", "[[0], [1]]",
                               '[["0", "1", "2"]]', "{a = 1}", "= 2", '"unterminated', "nan"])
toml_lines = st.one_of(
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(SPEC_KEYS), toml_values),
    st.sampled_from(["[hparams]", "lr = 0.1", "learning_rate = 1", "[algorithm.ERM.grid]",
                     "lr = [0.1, 0.01]", "lr = []", "[algorithm.ERM.fixed]", "[algorithm.ERM]",
                     "[test_envs]", "DebugVector = [[0]]", "DebugVector = [[7]]", "[[datasets]]",
                     "[algorithm.Nope.grid]", "batch_size = 0", "[hparams]\n[hparams]", ""]),
    st.text(max_size=20))


def _check_spec_text(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.toml"
        path.write_text(text, encoding="utf-8")
        for validate in (False, True):
            try:
                spec = load_spec(path, validate=validate)
            except ShiftbenchError as e:
                message = str(e)
                assert str(path) in message
                if "invalid TOML" in message:
                    assert "line" in message
            else:
                assert isinstance(spec, SweepSpec)


@FUZZ
@given(st.lists(toml_lines, max_size=8))
def test_spec_parser_structured_fuzz(lines):
    _check_spec_text("\n".join(lines) + "\n")


@FUZZ
@given(st.text(max_size=200))
def test_spec_parser_arbitrary_text(text):
    _check_spec_text(text)


@FUZZ
@given(st.binary(max_size=100))
def test_spec_parser_arbitrary_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.toml"
        path.write_bytes(data)
        try:
            load_spec(path)
        except ShiftbenchError as e:
            assert str(path) in str(e)
