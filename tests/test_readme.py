"""README.md's snippets run as written, in order, in a fresh folder, with tiny sizes
(`readme_commands.SMALL`): the shell commands through the installed console script, the files
it asks you to save, the Python blocks, and the plug-in author's own pytest; everything the
commands print fits 80 columns, in plain lines (the output is a pipe). bench/time_readme.py
times them at full size. Also: its plug-in example is a real method, and CI runs its test command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from readme_commands import README, readme_commands, readme_snippets, small, small_python

ROOT = Path(__file__).resolve().parents[1]


def test_readme_snippets_are_found():
    commands = readme_commands()
    assert [c.split()[1] for c in commands] == [
        "demo", "list", "list", "train", "sweep", "sweep", "collect", "collect", "train"]
    assert any("sweep launch" in c and "--skip-confirmation" in c for c in commands)
    kinds = [(s.kind, s.name) for s in readme_snippets() if s.kind != "shell"]
    assert kinds == [("python", ""), ("python", ""), ("file", "mymodule.py"),
                     ("file", "test_mymodule.py")]


def test_readme_output_folders_are_distinct():
    """Every snippet writes its own folder: none reuses another's output."""
    text = README.read_text(encoding="utf-8")
    folders = [c.split("--output-dir ")[1].split()[0] for c in readme_commands() if "--output-dir" in c
               and "sweep status" not in c]
    folders += ["out/py_trial", "out/py_sweep"]
    assert len(folders) == len(set(folders)), folders
    assert all(f'"{f}"' in text for f in ("out/py_trial", "out/py_sweep"))


def test_ci_runs_the_readme_test_command():
    """.ci/run ends with the README's install, type check and test lines, as written; no
    user-facing pip command hides its progress (-q)."""
    lines = [line.strip() for line in README.read_text(encoding="utf-8").splitlines()]
    end = lines.index(".venv/bin/python -m pytest -q -n 2")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-3:] == lines[end - 2:end + 1]
    pip = [line for line in lines if ".venv/bin/pip install" in line]
    assert len(pip) >= 3 and not [line for line in pip if " -q" in line], pip


def _script() -> list[str]:
    """The installed console script when there is one (it is what the README calls), else
    `python -m shiftbench`."""
    script = Path(sys.executable).parent / "shiftbench"
    return [str(script)] if script.exists() else [sys.executable, "-m", "shiftbench"]


@pytest.mark.slow
def test_every_readme_snippet_runs_in_order(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("PYTHONPATH", None)  # the current folder must be found without it
    for snippet in readme_snippets():
        if snippet.kind == "file":
            (tmp_path / snippet.name).write_text(snippet.text, encoding="utf-8")
            continue
        if snippet.kind == "python":
            argv = [sys.executable, "-c", small_python(snippet.text)]
        elif snippet.text.startswith(".venv/bin/python -m pytest"):
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    *snippet.text.split()[3:]]
        else:
            argv = _script() + small(snippet.text)
        proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, env=env,
                              stdin=subprocess.DEVNULL, timeout=900)
        assert proc.returncode == 0, (snippet.text, proc.stdout[-2000:], proc.stderr[-2000:])
        if snippet.kind == "shell" and "pytest" not in snippet.text:  # what shiftbench prints
            for stream in (proc.stdout, proc.stderr):
                assert "\r" not in stream, (snippet.text, "a redrawn bar in piped output")
                long = [line for line in stream.splitlines() if len(line) > 80
                        and "Warning" not in line]  # a library's warning is not ours to wrap
                assert not long, (snippet.text, long)
        if argv[-3:-1] == ["--input-dir", "out/sweep"]:
            assert "vs ERM" in proc.stdout
    out = tmp_path / "out"
    assert (out / "demo" / "report.html").exists() and (out / "sweep_report.html").exists()
    for folder in ("trial", "mine", "py_trial"):
        assert (out / folder / "results.jsonl").exists(), folder
    assert len(list((out / "py_sweep").glob("*/done"))) == 8  # 2 algorithms x 4 domains x 1 trial


def _readme_module(tmp_path, monkeypatch):
    snippet = next(s for s in readme_snippets() if s.name == "mymodule.py")
    (tmp_path / "mymodule.py").write_text(snippet.text, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    from shiftbench.algorithms import ALGORITHM_REGISTRY, ALGORITHMS

    sys.modules.pop("mymodule", None)
    module = importlib.import_module("mymodule")
    yield module
    ALGORITHM_REGISTRY._items.pop("LabelSmoothingERM", None)
    if "LabelSmoothingERM" in ALGORITHMS:
        ALGORITHMS.remove("LabelSmoothingERM")
    sys.modules.pop("mymodule", None)


@pytest.fixture
def readme_module(tmp_path, monkeypatch):
    yield from _readme_module(tmp_path, monkeypatch)


def test_readme_plugin_applies_label_smoothing(readme_module):
    """The same weights and batch: its loss is ERM's at smoothing 0, and differs at 0.2 by what
    label smoothing adds (the mean over classes of -log p, weighted by smoothing)."""
    import torch
    import torch.nn.functional as F

    from shiftbench.algorithms import create_algorithm
    from shiftbench.hparams_registry import default_hparams

    cls = readme_module.LabelSmoothingERM
    g = torch.Generator().manual_seed(0)
    batch = [(torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g))
             for _ in range(2)]

    def first_loss(name: str, **extra) -> tuple[float, torch.nn.Module]:
        torch.manual_seed(0)
        alg = create_algorithm(name, (3, 16, 16), 10, 2, {**default_hparams(name, "DigitsDemo"),
                                                          **extra})
        with torch.no_grad():
            logits = alg.predict(torch.cat([x for x, _ in batch]))
        return alg.update(batch)["loss"], logits

    erm, logits = first_loss("ERM")
    assert default_hparams(cls.__name__, "DigitsDemo")["smoothing"] == 0.1
    plain, _ = first_loss("LabelSmoothingERM", smoothing=0.0)
    smoothed, _ = first_loss("LabelSmoothingERM", smoothing=0.2)
    y = torch.cat([y for _, y in batch])
    assert plain == pytest.approx(erm, rel=1e-5)
    expected = 0.8 * F.cross_entropy(logits, y) - 0.2 * F.log_softmax(logits, 1).mean(1).mean()
    assert smoothed == pytest.approx(expected.item(), rel=1e-4)
    assert abs(smoothed - erm) > 1e-3


def test_import_finds_modules_in_the_current_folder(tmp_path, monkeypatch, capsys):
    """`shiftbench train --import mymodule` from the folder holding mymodule.py, as the console
    script runs it (the script's folder first on sys.path, not the current one)."""
    from shiftbench.cli import import_user_modules, main

    (tmp_path / "sb_readme_probe.py").write_text("VALUE = 42\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    sys.modules.pop("sb_readme_probe", None)
    import_user_modules(["sb_readme_probe"])
    assert sys.modules["sb_readme_probe"].VALUE == 42
    sys.modules.pop("sb_readme_probe", None)
    code = main(["train", "--import", "sb_no_such_module", "--dataset", "DebugVector",
                 "--algorithm", "ERM", "--output-dir", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert code == 2 and "No module named 'sb_no_such_module'" in err
    assert f"searched the current folder and the Python path: {tmp_path}" in err
    assert not (tmp_path / "t").exists()
