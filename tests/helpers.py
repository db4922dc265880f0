"""Helpers for tests: records without the fields that legitimately differ between runs, and
files extracted from Debian packages."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from shiftbench.trainer import TIMING_KEYS


def stable_records(path: str | Path) -> list[dict]:
    """The records of a trial directory minus timings and output paths."""
    records = [json.loads(line) for line in (Path(path) / "results.jsonl").read_text().splitlines()]
    for r in records:
        for key in TIMING_KEYS:
            r.pop(key, None)
        r["args"].pop("output_dir", None)
    return records


def debian_package_files(package: str, pattern: str, work: Path) -> list[Path]:
    """Files of a Debian package matching the tar `pattern`, extracted under `work` without
    installing it (`apt-get download` + `dpkg-deb --fsys-tarfile`); [] where apt cannot fetch it
    (no apt, no network to the mirror, unknown package)."""
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        return []
    try:
        subprocess.run(["apt-get", "download", package], cwd=work, check=True,
                       capture_output=True, timeout=600)
        deb = next(work.glob(f"{package}_*.deb"))
        tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True,
                             capture_output=True, timeout=300).stdout
        subprocess.run(["tar", "-x", "--wildcards", pattern], cwd=work, input=tar, check=True,
                       capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError, StopIteration):
        return []
    return sorted(p for p in work.rglob("*") if p.is_file() and p.suffix != ".deb")


def erm_lr_grid_spec(folder: Path, lrs: tuple[float, ...]) -> Path:
    """A sweep spec file: ERM on DebugVector held out on env 0, one trial of 3 steps (a checkpoint
    each), one job per learning rate of `lrs` (a grid)."""
    spec = Path(folder) / "s.toml"
    spec.write_text('datasets = ["DebugVector"]\nalgorithms = ["ERM"]\nn_trials = 1\nsteps = 3\n'
                    f'checkpoint_freq = 1\n[algorithm.ERM.grid]\nlr = [{", ".join(map(repr, lrs))}]\n'
                    '[test_envs]\nDebugVector = [[0]]\n')
    return spec

