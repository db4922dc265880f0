"""WILDS Camelyon17 and FMoW through the `wilds` package, on fixtures in WILDS' own layouts."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from PIL import Image

from shiftbench.cli import main
from shiftbench.datasets import get_dataset_class
from shiftbench.errors import ShiftbenchError

pytest.importorskip("wilds")


def camelyon_fixture(root, per_center: int = 4) -> pd.DataFrame:
    """`camelyon17_v1.0/`: metadata.csv (patient, node, x/y_coord, tumor, slide, center, split)
    and patches/patient_<p>_node_<n>/patch_patient_<p>_node_<n>_x_<x>_y_<y>.png (96x96)."""
    folder = root / "camelyon17_v1.0"
    rows = []
    for center in range(5):
        for k in range(per_center):
            patient, node = f"{center * 10 + k // 2:03d}", k % 2
            x, y = 100 * k, 50 * center
            tumor = int((k + center) % 2)
            rows.append(dict(patient=patient, node=node, x_coord=x, y_coord=y, tumor=tumor,
                             slide=center * 2 + node, center=center, split=0))
            path = folder / "patches" / f"patient_{patient}_node_{node}" / \
                f"patch_patient_{patient}_node_{node}_x_{x}_y_{y}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (96, 96), (200 * tumor, 40 * center, 90)).save(path)
    frame = pd.DataFrame(rows)
    frame.to_csv(folder / "metadata.csv")  # wilds reads it with index_col=0
    (folder / "RELEASE_v1.0.txt").write_text("fixture\n")
    return frame


def fmow_fixture(root) -> pd.DataFrame:
    """`fmow_v1.1/`: rgb_metadata.csv, country_code_mapping.csv, images/rgb_img_<i>.png."""
    from wilds.datasets.fmow_dataset import categories

    folder = root / "fmow_v1.1"
    (folder / "images").mkdir(parents=True)
    countries = {"JPN": "Asia", "FRA": "Europe", "KEN": "Africa", "BRA": "Americas",
                 "AUS": "Oceania", "ATA": None}  # ATA: not in the mapping -> region "Other"
    pd.DataFrame([{"alpha-3": c, "region": r} for c, r in countries.items() if r]).to_csv(
        folder / "country_code_mapping.csv", index=False)
    rows = []
    for i in range(30):
        code = list(countries)[i % 6]
        rows.append(dict(split="seq" if i == 29 else ("train", "val", "test")[i % 3],
                         category=categories[i % 4], country_code=code,
                         timestamp=f"{2005 + i % 10}-03-01T10:00:00Z"))
        Image.new("RGB", (32, 32), (8 * i, 0, 0)).save(folder / "images" / f"rgb_img_{i}.png")
    frame = pd.DataFrame(rows)
    frame.to_csv(folder / "rgb_metadata.csv", index=False)
    (folder / "RELEASE_v1.1.txt").write_text("fixture\n")
    return frame


@pytest.mark.slow
def test_camelyon_environments_are_hospitals_and_train(tmp_path):
    frame = camelyon_fixture(tmp_path, per_center=5)
    ds = get_dataset_class("WILDSCamelyon")(str(tmp_path), [0], {"data_augmentation": True})
    assert [e.name for e in ds.datasets] == [f"hospital_{i}" for i in range(5)]
    assert [len(e) for e in ds.datasets] == [5] * 5
    for center, env in enumerate(ds.datasets):
        assert env.targets == frame[frame.center == center].tumor.tolist()
    x, y = ds.datasets[2][1]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == frame.tumor[11]
    assert ds.datasets[0].transform.transforms[1].__class__.__name__ == "ToTensor"  # test env
    assert "RandomResizedCrop" in repr(ds.datasets[1].transform)  # training env: augmented
    out = tmp_path / "run"
    assert main(["train", "--dataset", "WILDSCamelyon", "--data-dir", str(tmp_path), "--steps",
                 "1", "--output-dir", str(out), "--skip-model-save", "--hparams",
                 json.dumps({"batch_size": 2, "resnet18": True, "pretrained": False})]) == 0
    record = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert "env4_out_acc" in record


def test_fmow_environments_are_regions(tmp_path):
    frame = fmow_fixture(tmp_path)
    ds = get_dataset_class("WILDSFMoW")(str(tmp_path), [0], {})
    assert len(ds) == 6 and ds.num_classes == 62
    kept = frame[frame.split != "seq"]
    order = list(dict.fromkeys(kept.country_code))  # region index = order of appearance
    for env, code in zip(ds.datasets, order):
        from wilds.datasets.fmow_dataset import categories

        assert env.targets == [categories.index(c) for c in
                               kept[kept.country_code == code].category]
    assert sum(len(e) for e in ds.datasets) == 29  # the sequestered image is left out
    x, _ = ds.datasets[5][0]
    assert x.shape == (3, 224, 224)


def test_missing_wilds_data_says_how_to_get_it(tmp_path):
    with pytest.raises(ShiftbenchError, match="data download WILDSCamelyon"):
        get_dataset_class("WILDSCamelyon")(str(tmp_path), [0], {})
