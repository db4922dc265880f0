"""Bad input through the command line: one clear line naming the bad value, exit != 0, no trace.

(Bad `train` flags: tests/test_cli.py::test_bad_input_is_a_clear_error.)
"""

from __future__ import annotations

import json
import sys
import textwrap
import uuid

import pytest
from PIL import Image

from shiftbench.cli import main

SWEEP = ["sweep", "launch", "--datasets", "DebugVector", "--algorithms", "ERM", "--n-trials", "1",
         "--steps", "2", "--single-test-envs", "--skip-confirmation", "--no-progress"]


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_unknown_launcher(tmp_path, capsys):
    out = tmp_path / "sweep"
    code, _, err = _run(capsys, [*SWEEP, "--output-dir", str(out), "--command-launcher", "slurmm"])
    assert code == 2
    assert "unknown launcher 'slurmm' (did you mean 'slurm'?)" in err and "local" in err
    assert not out.exists() or not any(out.rglob("results.jsonl"))


def test_toml_spec_with_errors_names_the_line(tmp_path, capsys):
    out = tmp_path / "sweep"
    spec = tmp_path / "s.toml"
    spec.write_text('datasets = ["DebugVector"]\nalgorithms = ["ERM"]\n\n[algorithm.ERM.fixed]\n'
                    'lr = "fast"\n')
    code, _, err = _run(capsys, [*SWEEP, "--output-dir", str(out), "--spec", str(spec)])
    assert code == 2 and "s.toml, line 5" in err and "'lr'" in err
    assert not out.exists()
    spec.write_bytes(b'datasets = ["DebugVector"]\nsteps = \xff\n')
    code, _, err = _run(capsys, [*SWEEP, "--output-dir", str(out), "--spec", str(spec)])
    assert code == 2 and "line 2: not UTF-8" in err
    assert not out.exists()


def test_unknown_selection_rule_and_foreign_files_in_results(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main([*SWEEP, "--output-dir", str(out), "--threads", "1"]) == 0
    capsys.readouterr()
    code, _, err = _run(capsys, ["collect", "--input-dir", str(out), "--selection", "oracel"])
    assert code == 2 and "unknown selection rule 'oracel' (did you mean 'oracle'?)" in err
    assert "iid" in err
    # foreign and malformed files next to the records: collect still works and warns
    (out / "notes.txt").write_text("not a record")
    (out / "README.md").write_bytes(b"\x00\xff")
    junk = out / "junk"
    junk.mkdir()
    (junk / "results.jsonl").write_bytes(b"\xff\xfe garbage")
    job = next(p for p in out.iterdir() if (p / "done").exists())
    with open(job / "results.jsonl", "a") as f:
        f.write('{"half": \n')
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, text, err = _run(capsys, ["collect", "--input-dir", str(out), "--selection", "oracle"])
    assert code == 0 and "ERM" in text
    assert "junk/results.jsonl: cannot read it" in err and "truncated" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing changed


TRAIN = ["train", "--algorithm", "ERM", "--test-envs", "0", "--steps", "1"]


def _png(path, size=(12, 10), mode="RGB", value=50):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode in ("L", "P", "I;16") else (value,) * len(mode)).save(path)


def test_missing_or_malformed_data_directory(tmp_path, capsys):
    out = tmp_path / "run"
    cases = [([], "PACS needs --data-dir"),
             (["--data-dir", str(tmp_path / "nowhere")], "does not exist"),
             (["--data-dir", str(tmp_path / "data")], "expected 4 domain folders")]
    _png(tmp_path / "data" / "PACS" / "photo" / "dog" / "a.png")
    for extra, expected in cases:
        code, _, err = _run(capsys, [*TRAIN, "--dataset", "PACS", "--output-dir", str(out), *extra])
        assert code == 2 and expected in err, err
        assert not out.exists()  # nothing written, not even an empty directory


def _plugin(tmp_path, monkeypatch, body: str) -> str:
    name = f"plugin_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.mark.parametrize("case,expected", [
    ("classes", r"domain 'd1'"),
    ("empty", "domain 'd1' has no images"),
    ("sizes", "is 8x8 but"),
])
def test_user_image_folders(tmp_path, monkeypatch, capsys, case, expected):
    root = tmp_path / "images"
    for d, classes in (("d0", ("cat", "dog")), ("d1", ("cat", "cow" if case == "classes" else "dog"))):
        for c in classes:
            if case == "empty" and d == "d1":
                (root / d / c).mkdir(parents=True)
                continue
            for k in range(3):
                _png(root / d / c / f"{k}.png", size=(8, 8) if case == "sizes" and d == "d1" else (12, 10))
    dataset = f"User{uuid.uuid4().hex[:6]}"
    module = _plugin(tmp_path, monkeypatch, f"""
        from shiftbench.datasets.custom import register_image_folder
        register_image_folder({dataset!r}, {str(root)!r})
    """)
    out = tmp_path / "run"
    code, _, err = _run(capsys, [*TRAIN, "--import", module, "--dataset", dataset,
                                 "--output-dir", str(out)])
    assert code == 2 and expected in err, err
    assert not out.exists()
    sys.modules.pop(module, None)


def test_mixed_image_modes_are_converted_to_rgb(tmp_path, monkeypatch, capsys):
    root = tmp_path / "images"
    modes = ["RGB", "L", "RGBA", "P", "CMYK", "I;16"]
    for d in ("d0", "d1"):
        for ci, c in enumerate(("cat", "dog")):
            for k, mode in enumerate(modes):
                _png(root / d / c / f"{k}.{'jpg' if mode == 'CMYK' else 'png'}", mode=mode,
                     value=30 + 100 * ci)
    dataset = f"User{uuid.uuid4().hex[:6]}"
    module = _plugin(tmp_path, monkeypatch, f"""
        from shiftbench.datasets.custom import register_image_folder
        register_image_folder({dataset!r}, {str(root)!r})
    """)
    out = tmp_path / "run"
    code, _, err = _run(capsys, [*TRAIN, "--import", module, "--dataset", dataset,
                                 "--output-dir", str(out), "--hparams", '{"batch_size": 4}'])
    assert code == 0, err
    record = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert record["args"]["dataset"] == dataset
    sys.modules.pop(module, None)
