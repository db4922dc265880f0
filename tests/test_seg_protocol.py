"""The papers' protocol for the real benchmarks on fixtures in the official layouts at tiny size:
the resize / crop / flip transforms, Cityscapes' official train (unlabeled target) and val (test)
splits, full-resolution evaluation labels, the presets, and the GTA5 -> Cityscapes DACS preset
end to end through `shiftbench train` with initial weights from a local file (`--weights`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from shiftbench.datasets.base import DATASETS
from shiftbench.datasets.road_scenes import GTA5Cityscapes
from shiftbench.errors import ShiftbenchError
from shiftbench.presets import PRESETS, preset_hparams

# Cityscapes label ids: road, sidewalk, building, car, ego vehicle, sky, person, pole
ROW = np.array([7, 8, 11, 26, 1, 23, 24, 17], np.uint8)


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _labels(h, w, shift):
    return np.tile(np.roll(ROW, shift), (h, w // len(ROW)))


def write_tree(root, n_gta=3, n_train=3, n_val=2):
    """GTA5 (images/labels, 36x64) and Cityscapes (leftImg8bit/gtFine train + val, 32x64)."""
    rs = np.random.RandomState(0)
    for i in range(n_gta):
        _save(root / "GTA5" / "images" / f"{i:05d}.png", rs.randint(0, 255, (36, 64, 3), np.uint8))
        _save(root / "GTA5" / "labels" / f"{i:05d}.png", _labels(36, 64, i), "L")
    for split, n, city in (("train", n_train, "aachen"), ("val", n_val, "lindau")):
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            _save(root / "cityscapes" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                  rs.randint(0, 255, (32, 64, 3), np.uint8))
            _save(root / "cityscapes" / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                  _labels(32, 64, i), "L")


class TinyGTA5Cityscapes(GTA5Cityscapes):
    """GTA5 -> Cityscapes evaluated at 16x32 (the real class, a tiny evaluation size)."""

    INPUT_SHAPE = (3, 16, 32)


@pytest.fixture(autouse=True)
def _tiny(monkeypatch):
    monkeypatch.setitem(DATASETS._items, "TinyGTA5Cityscapes", TinyGTA5Cityscapes)


def test_protocol_transforms_and_official_splits(tmp_path):
    write_tree(tmp_path)
    hp = {"source_size": "48x27", "target_size": "32x16", "crop_size": "16x16", "random_flip": True,
          "target_split": "official", "eval_labels": "full"}
    ds = TinyGTA5Cityscapes(str(tmp_path), [1], hp)
    gta, city = ds.datasets
    x, y = gta[0]
    assert x.shape == (3, 16, 16) and y.shape == (16, 16)  # resized to 48x27, cropped to 16x16
    torch.manual_seed(0)
    crops = {tuple(gta[0][1][0].tolist()) for _ in range(12)}
    assert len(crops) > 1  # random crops (and flips)
    xt, _ = city[0]
    assert xt.shape == (3, 16, 16)  # a train image: 32x16 then a 16x16 crop
    xv, yv = city[3]
    assert xv.shape == (3, 16, 32) and yv.shape == (32, 64)  # val: input size, full labels
    assert yv[0, :8].tolist() == [0, 1, 2, 13, 255, 10, 11, 5]
    splits = city.fixed_splits(unlabeled_target=True)
    assert splits["uda"].tolist() == [0, 1, 2] and splits["in"].tolist() == [3, 4]
    assert len(splits["out"]) == 0 and len(city.fixed_splits(False)["uda"]) == 0
    seeded = TinyGTA5Cityscapes(str(tmp_path), [1], {})
    assert seeded.datasets[1].fixed_splits(True) is None
    x0, y0 = seeded.datasets[0][0]
    assert x0.shape == (3, 16, 32) and y0.shape == (16, 32)  # the plain protocol: input size
    with pytest.raises(ShiftbenchError, match="crop_size 64x64 is larger"):
        TinyGTA5Cityscapes(str(tmp_path), [1], {**hp, "crop_size": "64x64"}).datasets[0][0]
    with pytest.raises(ShiftbenchError, match="WIDTHxHEIGHT"):
        TinyGTA5Cityscapes(str(tmp_path), [1], {**hp, "source_size": "big"})


def test_presets_hold_the_papers_recipes():
    dacs = preset_hparams("dacs_gta5", "SegDACS", "GTA5Cityscapes")
    sizes = (dacs["source_size"], dacs["target_size"], dacs["crop_size"])
    assert sizes == ("1280x720", "1024x512", "512x512")
    assert dacs["batch_size"] == 2 and dacs["lr"] == 2.5e-4 and dacs["random_flip"] is False
    assert dacs["target_split"] == "official" and dacs["dacs_teacher_bn"] == "train"
    assert PRESETS["dacs_gta5"].steps == 250000
    asn = preset_hparams("adaptsegnet_synthia", "AdaptSegNet", "SynthiaCityscapes16")
    assert asn["source_size"] == "1280x760" and asn["crop_size"] == "none" and asn["batch_size"] == 1
    assert asn["poly_steps"] == 250000 and PRESETS["adaptsegnet_synthia"].steps == 150000
    assert asn["eval_labels"] == "full" and asn["adv_weight_aux"] == 2e-4
    assert "dacs_weight" not in preset_hparams("dacs_gta5", "SegSourceOnly", "GTA5Cityscapes")
    with pytest.raises(ShiftbenchError, match="road-scene datasets"):
        preset_hparams("dacs_gta5", "SegDACS", "SyntheticStreets")
    with pytest.raises(ShiftbenchError, match="segmentation protocol; DANN trains on classification"):
        preset_hparams("dacs_gta5", "DANN", "GTA5Cityscapes")


@pytest.mark.slow
def test_gta5_cityscapes_dacs_preset_end_to_end(tmp_path):
    """What a GPU user runs (docs/segmentation.md), at tiny size: the preset, initial weights
    from a local file, Cityscapes train as the unlabeled target, val as the test split."""
    from shiftbench.cli import main

    write_tree(tmp_path / "data")
    weights = tmp_path / "coco_deeplab.pth"
    # a released-style (Caffe, `Scale.`-prefixed) DeepLab file: a few backbone tensors suffice here
    torch.save({"Scale.conv1.weight": torch.full((64, 3, 7, 7), 0.01),
                "Scale.layer5.conv2d_list.0.weight": torch.zeros(21, 2048, 3, 3)}, weights)
    out = tmp_path / "out"
    small = {"source_size": "48x27", "target_size": "32x16", "crop_size": "16x16"}
    code = main(["train", "--dataset", "TinyGTA5Cityscapes", "--algorithm", "DACS", "--task", "uda",
                 "--test-envs", "1", "--hparams-preset", "dacs_gta5", "--hparams", json.dumps(small),
                 "--weights", str(weights), "--steps", "2", "--checkpoint-freq", "2",
                 "--output-dir", str(out), "--data-dir", str(tmp_path / "data")])
    assert code == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["args"]["algorithm"] == "SegDACS" and last["step"] == 1
    hp = last["hparams"]
    assert hp["seg_network"] == "deeplabv2" and hp["crop_size"] == "16x16" and hp["batch_size"] == 2
    assert hp["target_split"] == "official" and hp["weights"] == str(weights)
    assert 0 <= last["env1_in_miou"] <= 1 and "env1_out_miou" not in last  # val = the test split
    assert "env1_uda_entropy" in last  # Cityscapes train: the unlabeled target
