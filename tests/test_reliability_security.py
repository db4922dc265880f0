"""Security: no arbitrary unpickling, no evaluation of specs/records, no shell in launchers.

(Manifest paths escaping the data directory: tests/test_datasets_digit_files.py::
test_list_files_cannot_escape_the_data_dir; Slurm quoting of a crafted name:
tests/test_sweeps_jobs.py::test_commands_are_shell_quoted_against_injection.)
"""

from __future__ import annotations

import ast
import hashlib
import io
from pathlib import Path

import torch
from helpers import stable_records

from shiftbench.trainer import TrainArgs, TrialStore, train

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("benchmark", "algorithms", "datasets", "sweeps", "results")


def _sources():
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def test_package_sources_never_unpickle_evaluate_or_use_a_shell():
    loads, problems = 0, []
    forbidden = {"eval", "exec", "pickle.load", "pickle.loads", "marshal.loads", "yaml.load",
                 "yaml.unsafe_load", "os.system", "os.popen", "dill.load", "joblib.load",
                 "numpy.load", "np.load"}
    for path, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name, where = _dotted(node.func), f"{path.relative_to(ROOT)}:{node.lineno}"
            keywords = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                loads += 1
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            elif name in forbidden:
                if name in ("numpy.load", "np.load"):
                    flag = keywords.get("allow_pickle")
                    if flag is None or (isinstance(flag, ast.Constant) and flag.value is False):
                        continue
                problems.append(f"{where}: {name}(...)")
            shell = keywords.get("shell")
            if isinstance(shell, ast.Constant) and shell.value is True:
                problems.append(f"{where}: {name}(..., shell=True)")
    assert loads >= 5  # the checkpoint, three dataset caches, pretrained weights
    assert not problems, problems


def test_a_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    args = dict(dataset="DebugVector", algorithm="ERM", test_envs=[1], steps=5, checkpoint_freq=2,
                hparams='{"batch_size": 8}')
    reference = tmp_path / "reference"
    train(TrainArgs(output_dir=str(reference), **args), log=lambda m: None, progress=False)
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    # A pickle whose loading would call pathlib.Path.touch(marker): code execution on load.
    buffer = io.BytesIO()
    torch.save({"step": 0, "payload": _Payload(str(marker))}, buffer)
    data = buffer.getvalue()
    store = TrialStore(out)
    store.checkpoint.write_bytes(data)  # with a matching checksum, so only weights_only stops it
    store.checkpoint.with_suffix(".sha256").write_text(hashlib.sha256(data).hexdigest())
    messages: list[str] = []
    train(TrainArgs(output_dir=str(out), **args), log=messages.append, progress=False)
    assert not marker.exists()
    assert any("checkpoint.pt refused" in m for m in messages), messages
    assert stable_records(out) == stable_records(reference)  # started over, same records


class _Payload:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_crafted_dataset_and_algorithm_names_cannot_inject_shell(tmp_path):
    import shlex
    import subprocess
    import sys

    from shiftbench.sweeps.jobs import make_job

    args = TrainArgs(dataset="X'; touch PWNED; echo '", algorithm="$(touch PWNED2)`touch PWNED3`",
                     test_envs=[0], hparams='{"a": "\\"; touch PWNED4"}')
    job = make_job(args, tmp_path / "out")
    line = job.train_command_str(python=sys.executable, threads=1)
    assert shlex.split(line) == job.train_command(python=sys.executable, threads=1)
    echoed = subprocess.run(["sh", "-c", "printf '%s\\n' " + line], capture_output=True, text=True,
                            cwd=tmp_path, check=True).stdout.splitlines()
    assert args.dataset in echoed and args.algorithm in echoed
    assert not any((tmp_path / f"PWNED{s}").exists() for s in ("", "2", "3", "4"))
