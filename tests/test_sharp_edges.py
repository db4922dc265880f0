"""Smaller edges of issue 26: a closed stdout, an unreadable image, MixStyle on a ViT, an lr past
float32, `data list` with a symlinked class folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shiftbench.cli import main
from shiftbench.errors import ShiftbenchError, UnreadableImage
from shiftbench.trial_record import FAILED_FILE


def test_train_piped_into_head_is_not_a_failed_trial(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "shiftbench", "train", "--dataset", "DebugVector", "--steps",
           "5000", "--checkpoint-freq", "1", "--output-dir", str(out), "--skip-model-save",
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()  # `| head -1`: one line, then the reader goes away
    proc.stdout.close()
    err = proc.communicate(timeout=300)[1].decode()
    assert proc.returncode == 141, err  # as a process stopped by SIGPIPE
    assert "Traceback" not in err
    assert not (out / FAILED_FILE).exists()  # resumable, not failed
    assert main(["train", "--dataset", "DebugVector", "--steps", "6", "--checkpoint-freq", "1",
                 "--output-dir", str(tmp_path / "again"), "--skip-model-save"]) == 0


def _image_tree(root: Path, bad: str | None = None) -> Path:
    g = np.random.default_rng(0)
    for d in ("a", "b"):
        for c in ("x", "y"):
            (root / d / c).mkdir(parents=True)
            for k in range(3):
                Image.fromarray(g.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                    root / d / c / f"{k}.png")
    if bad:
        (root / bad).write_bytes(b"not an image")
    return root


def test_an_unreadable_image_in_a_loader_worker_is_named(tmp_path):
    from shiftbench.datasets.folder import ImageFolderDomain, eval_transform, scan_domain

    root = _image_tree(tmp_path / "tree", bad="b/y/1.png")
    samples, classes = scan_domain(root / "b")
    loader = torch.utils.data.DataLoader(ImageFolderDomain(samples, classes, eval_transform(16)),
                                         batch_size=6, num_workers=1)
    with pytest.raises(UnreadableImage) as info:
        list(loader)
    msg = str(info.value)
    assert msg.startswith(f"cannot read image {root / 'b' / 'y' / '1.png'}")
    assert "Traceback" not in msg and "worker" not in msg


def test_mixstyle_on_a_vit_is_a_clear_error():
    pytest.importorskip("timm")
    from shiftbench.algorithms import get_algorithm_class
    from shiftbench.hparams_registry import resolve_hparams

    hp = resolve_hparams("MixStyle", "PACS", overrides={"backbone": "test_vit",
                                                         "pretrained": False})
    with pytest.raises(ShiftbenchError, match="test_vit is not cut into stages.*MixStyle"):
        get_algorithm_class("MixStyle")((3, 160, 160), 7, 3, hp)


def test_an_lr_past_float32_is_refused_and_an_overflow_is_a_divergence(tmp_path, capsys):
    base = ["train", "--dataset", "DebugVector", "--steps", "2", "--skip-model-save"]
    assert main([*base, "--output-dir", str(tmp_path / "a"), "--hparams", '{"lr": 1e300}']) == 2
    assert "within float32's range" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main([*base, "--output-dir", str(tmp_path / "b"), "--hparams", '{"lr": 3e38}']) == 3
    assert "training diverged at step 0" in capsys.readouterr().err
    failed = json.loads((tmp_path / "b" / FAILED_FILE).read_text())
    assert failed["error"].startswith("numeric overflow")


def test_data_list_counts_a_symlinked_class_folder_as_the_loader_does(tmp_path, capsys):
    from shiftbench.datasets import get_dataset_class

    root = tmp_path / "data" / "PACS"
    elsewhere = _image_tree(tmp_path / "elsewhere")
    for d in ("art_painting", "cartoon", "photo", "sketch"):
        (root / d).mkdir(parents=True)
        for c in ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"):
            if c == "horse" and d == "photo":
                (root / d / c).symlink_to(elsewhere / "a" / "x", target_is_directory=True)
            else:
                (root / d / c).mkdir()
                Image.new("RGB", (8, 8)).save(root / d / c / "0.jpg")
    ds = get_dataset_class("PACS")(str(tmp_path / "data"), [0], {})
    loaded = dict(zip(ds.ENVIRONMENTS, (len(e) for e in ds.datasets)))
    assert main(["data", "list", "--data-dir", str(tmp_path / "data"), "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["dataset"] == "PACS")
    assert list(row["domains"].values()) == list(loaded.values()) == [7, 7, 9, 7]
