"""Help, listings, name errors and `collect` answer without importing torch (checked in a fresh
interpreter: `sys.modules` after the command)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from results_helpers import make_record, write_trial

PROBE = """
import contextlib, io, json, sys
from shiftbench.cli import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = main(json.loads(sys.argv[1]))
    except SystemExit as e:
        code = e.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
print(json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue(), "heavy": heavy}))
"""


def run(argv: list[str], env: dict[str, str] | None = None) -> dict:
    import os

    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True,
                          text=True, check=True, env={**os.environ, **(env or {})})
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("argv, code, expect", [
    (["--help"], 0, "collect"),
    (["train", "--help"], 0, "--test-envs"),
    (["demo", "--help"], 0, "--steps"),
    (["collect", "--help"], 0, "--input-dir"),
    (["list", "algorithms"], 0, "Vapnik"),
    (["list", "datasets"], 0, "DigitsDemo"),
    (["train", "--algorithm", "NOPE", "--steps", "1"], 2, "unknown algorithm 'NOPE'"),
    (["train", "--dataset", "Rotated", "--steps", "1"], 2, "unknown dataset 'Rotated'"),
    (["train", "--algorithm", "Tent", "--task", "dg"], 2, "does not support --task dg"),
    (["train", "--steps", "one"], 2, "invalid int value"),
    (["train", "--dataset", "Digits", "--test-envs", "7"], 2, "out of range for Digits"),
    (["train", "--dataset", "Digits", "--test-envs", "mnistm"], 2, "did you mean 'mnist_m'"),
    (["train", "--hparams", "{lr: 1}"], 2, "--hparams is not valid JSON"),
])
def test_answers_without_torch(argv, code, expect):
    result = run(argv)
    assert result["code"] == code
    assert expect in result["out"] + result["err"]
    assert result["heavy"] == []


def test_data_list_without_torch(tmp_path):
    pacs = tmp_path / "PACS"
    for domain in ("art_painting", "cartoon", "photo", "sketch"):
        (pacs / domain / "dog").mkdir(parents=True)
        (pacs / domain / "dog" / "a.jpg").write_bytes(b"not decoded")
    result = run(["data", "list", "--data-dir", str(tmp_path), "--json"])
    assert result["code"] == 0 and result["heavy"] == []
    rows = {row["dataset"]: row for row in json.loads(result["out"])}
    assert rows["PACS"]["status"] == "present (4 images)"
    assert rows["VLCS"]["status"] == f"missing (expected {tmp_path / 'VLCS'})"
    assert rows["WILDSCamelyon"]["status"].startswith("missing (expected")
    assert rows["DigitFive"]["domains"]["svhn"] == "missing"


def test_sweep_status_without_torch():
    """On a sweep launched before (tests/fixtures/sweep-r1): the same job hashes, no torch."""
    r1 = Path(__file__).parent / "fixtures" / "sweep-r1"
    for name, done, incomplete in (("dg", 2, 0), ("uda", 1, 1)):
        result = run(["sweep", "status", "--spec", str(r1 / f"{name}.toml"), "--output-dir",
                      str(r1 / name)])
        assert result["code"] == 0 and result["heavy"] == [], result["err"]
        total = next(ln for ln in result["out"].splitlines() if ln.startswith("total")).split()
        assert total[1:3] == [str(done), "0"] and total[3] == str(incomplete), total
        assert total[-2:] == ["0", str(done + incomplete)]  # none "not launched"
    # names are still checked (from the catalog)
    result = run(["sweep", "status", "--datasets", "DebugVector", "--algorithms", "Nope",
                  "--output-dir", str(r1 / "dg")])
    assert result["code"] == 2 and "unknown algorithm 'Nope'" in result["err"]
    assert result["heavy"] == []


def test_collect_without_torch(tmp_path):
    for alg in ("ERM", "CORAL"):
        for env in range(3):
            write_trial(tmp_path, f"{alg}{env}", [make_record(s, 0, [env], algorithm=alg)
                                                  for s in (0, 1)])
    result = run(["collect", "--input-dir", str(tmp_path), "--quiet"])
    assert result["code"] == 0 and "CORAL" in result["out"]
    assert result["heavy"] == []


def test_real_import_is_used_for_plugins():
    """A name the index cannot know goes to the real registry (which imports torch)."""
    result = run(["train", "--algorithm", "NOPE", "--import", "json", "--steps", "1"])
    assert result["code"] == 2 and "unknown algorithm 'NOPE'" in result["err"]
    assert "torch" in result["heavy"]


def test_command_table_matches_the_modules():
    """`shiftbench --help` lists commands from `COMMANDS` without importing their modules; every
    module registers exactly the commands the table names for it."""
    import argparse

    from shiftbench import cli

    full = cli.build_parser()  # imports every command module
    choices = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(choices) == {"train", "list", *cli.COMMANDS}
    lazy = cli.build_parser(["collect", "--help"])
    lazy_choices = next(a for a in lazy._actions
                        if isinstance(a, argparse._SubParsersAction)).choices
    assert set(lazy_choices) == set(choices)


@pytest.mark.parametrize("what", ["algorithms", "datasets"])
def test_lists_fit_80_columns(what):
    result = run(["list", what], env={"COLUMNS": "80"})
    lines = result["out"].splitlines()
    assert len(lines) > 10 and max(len(line) for line in lines) <= 80
