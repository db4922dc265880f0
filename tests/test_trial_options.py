"""Trial options are declared once, on `TrialSpec`: the `train` flags, the sweep flags and spec
keys, the validation and the identity rule all come from that declaration."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from shiftbench.cli import add_train_arguments
from shiftbench.errors import ShiftbenchError
from shiftbench.options import ALWAYS, NEVER
from shiftbench.sweeps.cli import add_spec_arguments
from shiftbench.sweeps.spec import TOP_LEVEL_KEYS, SweepSpec
from shiftbench.trial_record import (
    CORE_IDENTITY_KEYS,
    NOT_IDENTITY_KEYS,
    TrialSpec,
    identity,
    sweep_options,
    trial_options,
    validate_options,
)

ROOT = Path(__file__).resolve().parents[1]


def _dests(add) -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser()
    add(parser)
    return {a.dest: a for a in parser._actions}


def test_every_option_has_its_train_flag_and_every_sweep_option_its_flag_and_key():
    train = _dests(add_train_arguments)
    sweep = _dests(add_spec_arguments)
    for name, opt in trial_options().items():
        if not opt.declaration.flag:  # derived by normalize (weights_sha256)
            assert name not in train, name
            continue
        assert name in train, name
        assert train[name].default == opt.default, name
        if opt.declaration.choices:
            assert tuple(train[name].choices) == opt.declaration.choices
    for name in sweep_options():
        assert name in sweep and sweep[name].default is None, name  # None: not given
        assert name in TOP_LEVEL_KEYS, name
    assert "eval_splits" not in sweep_options() and "output_dir" not in sweep_options()


def test_identity_rules_come_from_the_declarations():
    assert CORE_IDENTITY_KEYS == tuple(n for n, o in trial_options().items()
                                       if o.declaration.identity == ALWAYS)
    assert set(NOT_IDENTITY_KEYS) == {"output_dir", "data_dir", "device", "skip_model_save",
                                      "save_model_every_checkpoint"}
    assert all(trial_options()[n].declaration.identity == NEVER for n in NOT_IDENTITY_KEYS)
    plain = identity(TrialSpec())
    assert set(plain) == set(CORE_IDENTITY_KEYS)
    assert identity(TrialSpec(precision="bf16"))["precision"] == "bf16"


@pytest.mark.parametrize("values,message", [
    ({"steps": 0}, "--steps must be >= 1, got 0"),
    ({"seed": -1}, "--seed must be >= 0"),
    ({"holdout_fraction": 1.5}, r"--holdout-fraction must lie in \[0, 1\), got 1.5"),
    ({"precision": "half"}, "unknown precision 'half'; valid choices: bf16, fp32"),
    ({"image_cache": "yes"}, "--image-cache must be true or false, got 'yes'"),
    ({"steps": "10"}, "--steps must be an integer or None"),
])
def test_values_are_checked_against_their_declaration(values, message):
    with pytest.raises(ShiftbenchError, match=message):
        validate_options(TrialSpec(**values))


def test_sweep_spec_takes_trial_options_as_keywords():
    spec = SweepSpec(datasets=["Debug28"], steps=5, precision="bf16")
    assert (spec.trial.steps, spec.trial.precision, spec.datasets) == (5, "bf16", ["Debug28"])
    with pytest.raises(TypeError, match="unexpected argument 'stepz'"):
        SweepSpec(stepz=5)


def test_an_option_is_named_only_where_it_is_declared_and_read():
    """`tta_mode` (an option read by the evaluation through TrialSpec) appears in the package
    only in its declaration: flags, sweep keys, validation and records are generated."""
    allowed = {"benchmark/trial_record.py"}
    found = set()
    for folder in ("benchmark", "algorithms", "datasets", "sweeps", "results"):
        for path in (ROOT / folder).rglob("*.py"):
            if re.search(r"\btta_mode\b", path.read_text(encoding="utf-8")):
                found.add(str(path.relative_to(ROOT)))
    assert found <= allowed, found - allowed
