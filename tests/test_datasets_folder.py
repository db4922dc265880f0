"""Image-folder loaders on tiny generated fixtures in the benchmarks' on-disk layouts."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shiftbench.datasets import custom as C
from shiftbench.datasets import folder as F
from shiftbench.datasets import get_dataset_class
from shiftbench.errors import ShiftbenchError

# (dataset, on-disk domain folders in the distributed layout, class folders)
LAYOUTS = {
    "PACS": ("PACS", ["art_painting", "cartoon", "photo", "sketch"],
             ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]),
    "VLCS": ("VLCS", ["Caltech101", "LabelMe", "SUN09", "VOC2007"],
             ["bird", "car", "chair", "dog", "person"]),
    "OfficeHome": ("office_home", ["Art", "Clipart", "Product", "Real World"],
                   [f"class_{i:02d}" for i in range(65)]),
    "TerraIncognita": ("terra_incognita", ["location_38", "location_46", "location_100",
                                           "location_43"],
                       ["bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit",
                        "raccoon", "squirrel"]),
    "DomainNet": ("domain_net", ["clipart", "infograph", "painting", "quickdraw", "real",
                                 "sketch"], [f"c{i:03d}" for i in range(345)]),
    "Office31": ("office31", ["amazon", "dslr", "webcam"], [f"k{i:02d}" for i in range(31)]),
    "VisDA": ("visda", ["train", "validation"], ["aeroplane", "bicycle", "bus", "car", "horse",
                                                "knife", "motorcycle", "person", "plant",
                                                "skateboard", "train", "truck"]),
    "OfficeCaltech": ("office_caltech_10", ["amazon", "caltech", "dslr", "webcam"],
                      [f"k{i}" for i in range(10)]),
    "SVIRO": ("sviro", ["aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan", "tucson",
                        "x5", "zoe"], [str(i) for i in range(7)]),
}


def _png(path: Path, size=(20, 16), value: int = 0, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = (value, 255 - value, 7) if mode == "RGB" else value
    Image.new(mode, size, colour).save(path)


def make_layout(root: Path, name: str, per_class=lambda d, c: 1) -> dict[str, int]:
    subdir, domains, classes = LAYOUTS[name]
    inner = "images" if name == "Office31" else ""
    counts = {}
    for di, d in enumerate(domains):
        n = 0
        for ci, c in enumerate(classes):
            (root / subdir / d / inner / c).mkdir(parents=True, exist_ok=True)
            for k in range(per_class(di, ci)):
                ext = ".jpg" if (k + ci) % 2 else ".png"
                _png(root / subdir / d / inner / c / f"img{k}{ext}", value=(ci * 3) % 256,
                     mode="L" if d == "sketch" else "RGB")
                n += 1
        counts[d] = n
    return counts


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_benchmark_layouts(tmp_path, name):
    per_class = (lambda d, c: 1 + (d + c) % 2) if len(LAYOUTS[name][2]) <= 10 else \
        (lambda d, c: 1 if c < 12 or c == len(LAYOUTS[name][2]) - 1 else 0)
    counts = make_layout(tmp_path, name, per_class)
    cls = get_dataset_class(name)
    ds = cls(str(tmp_path), [0], {"data_augmentation": False})
    subdir, domains, classes = LAYOUTS[name]
    assert len(ds) == len(cls.ENVIRONMENTS) == len(domains)
    on_disk = sorted(domains)  # environments are the sorted domain folders
    assert [e.name for e in ds.datasets] == list(cls.ENVIRONMENTS)
    assert [len(e) for e in ds.datasets] == [counts[d] for d in on_disk]
    assert ds.num_classes == len(classes) == cls.NUM_CLASSES
    assert ds.classes == sorted(classes)
    env = ds[1]
    x, y = env[len(env) - 1]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert env.targets[-1] == y == sorted(classes).index(Path(env.samples[-1][0]).parent.name)
    assert cls.count(str(tmp_path)) == counts


def test_environment_order_follows_domainbed(tmp_path):
    make_layout(tmp_path, "TerraIncognita")
    ds = get_dataset_class("TerraIncognita")(str(tmp_path), [], {})
    # sorted folder names: location_100 < location_38 < location_43 < location_46
    assert [Path(e.samples[0][0]).parts[-3] for e in ds.datasets] == [
        "location_100", "location_38", "location_43", "location_46"]
    assert ds.environments == ["L100", "L38", "L43", "L46"]


def test_transforms_normalise_and_augment_only_training_envs(tmp_path):
    make_layout(tmp_path, "PACS")
    ds = get_dataset_class("PACS")(str(tmp_path), [3], {"data_augmentation": True})
    test_x, _ = ds[3][0]
    # a flat grey sketch image normalised with ImageNet statistics: known constant per channel
    value = 0 / 255.0
    expected = [(value - m) / s for m, s in zip(F.IMAGENET_MEAN, F.IMAGENET_STD)]
    assert torch.allclose(test_x.mean((1, 2)), torch.tensor(expected), atol=1e-4)
    names = [type(t).__name__ for t in ds[0].transform.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter",
                     "RandomGrayscale", "ToTensor", "Normalize"]
    assert ds[0].transform.transforms[0].scale == (0.7, 1.0)
    assert [type(t).__name__ for t in ds[3].transform.transforms] == [
        "Resize", "ToTensor", "Normalize"]
    off = get_dataset_class("PACS")(str(tmp_path), [3], {"data_augmentation": False})
    assert type(off[0].transform.transforms[0]).__name__ == "Resize"


def test_lazy_environment_works_with_trainer_loader(tmp_path):
    from shiftbench.data import eval_batches

    make_layout(tmp_path, "VLCS")
    ds = get_dataset_class("VLCS")(str(tmp_path), [0], {})
    batches = list(eval_batches(ds[0], torch.arange(len(ds[0])), 3, num_workers=0))
    assert torch.cat([b[1] for b in batches]).tolist() == ds[0].targets


def test_visda_ignores_test_folder(tmp_path):
    make_layout(tmp_path, "VisDA")
    _png(tmp_path / "visda" / "test" / "trunk_01" / "x.jpg")  # the unlabeled test release
    ds = get_dataset_class("VisDA")(str(tmp_path), [1], {})
    assert [Path(e.samples[0][0]).parts[-3] for e in ds.datasets] == ["train", "validation"]
    assert ds.num_classes == 12
    (tmp_path / "visda" / "validation").rename(tmp_path / "visda" / "val")
    with pytest.raises(ShiftbenchError, match="missing folder .*validation"):
        get_dataset_class("VisDA")(str(tmp_path), [1], {})


def test_missing_and_incomplete_data_errors(tmp_path):
    cls = get_dataset_class("PACS")
    with pytest.raises(ShiftbenchError, match="needs --data-dir"):
        cls(None, [0], {})
    with pytest.raises(ShiftbenchError, match="does not exist"):
        cls(str(tmp_path), [0], {})
    _png(tmp_path / "PACS" / "photo" / "dog" / "a.png")
    with pytest.raises(ShiftbenchError, match="expected 4 domain folders"):
        cls(str(tmp_path), [0], {})


def test_unreadable_image_error(tmp_path):
    make_layout(tmp_path, "VLCS")
    bad = tmp_path / "VLCS" / "Caltech101" / "bird" / "img0.png"
    bad.write_bytes(b"garbage")
    ds = get_dataset_class("VLCS")(str(tmp_path), [0], {})
    with pytest.raises(ShiftbenchError, match="cannot read image .*img0.png"):
        ds[0][0]


# --------------------------------------------------------------------------------------------
# Users' own data


def _name() -> str:
    return "User" + uuid.uuid4().hex[:8]


def make_user_tree(root: Path, domains=("d0", "d1"), classes=("cat", "dog"), n=3, size=(12, 10)):
    for di, d in enumerate(domains):
        for ci, c in enumerate(classes):
            for k in range(n):
                _png(root / d / c / f"{k}.png", size=size, value=40 * ci + di)


def test_register_image_folder(tmp_path):
    make_user_tree(tmp_path)
    name = _name()
    cls = C.register_image_folder(name, tmp_path)
    assert get_dataset_class(name) is cls
    assert cls.ENVIRONMENTS == ("d0", "d1") and cls.CLASSES == ("cat", "dog")
    assert cls.INPUT_SHAPE == (3, 10, 12) and cls.NUM_CLASSES == 2
    ds = cls(None, [1], {})
    x, y = ds[0].batch(torch.arange(6))
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    assert abs(float(x[3, 0, 0, 0]) - 40 / 255) < 1e-6


def test_register_image_folder_resizes(tmp_path):
    make_user_tree(tmp_path / "a", domains=("d0",))
    make_user_tree(tmp_path / "a", domains=("d1",), size=(30, 30))
    cls = C.register_image_folder(_name(), tmp_path / "a", image_size=16)
    ds = cls(None, [0], {})
    assert ds[1].x.shape == (6, 3, 16, 16)


def test_register_image_folder_errors(tmp_path):
    with pytest.raises(ShiftbenchError, match="not a directory"):
        C.register_image_folder(_name(), tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShiftbenchError, match="no domain folders"):
        C.register_image_folder(_name(), tmp_path / "empty")
    make_user_tree(tmp_path / "mismatch" , domains=("d0",), classes=("cat", "dog"))
    make_user_tree(tmp_path / "mismatch", domains=("d1",), classes=("cat", "cow"))
    with pytest.raises(ShiftbenchError, match=r"domain 'd1'.*missing: \['dog'\].*extra: \['cow'\]"):
        C.register_image_folder(_name(), tmp_path / "mismatch")
    make_user_tree(tmp_path / "hollow", domains=("d0",))
    (tmp_path / "hollow" / "d1" / "cat").mkdir(parents=True)
    (tmp_path / "hollow" / "d1" / "dog").mkdir(parents=True)
    with pytest.raises(ShiftbenchError, match="domain 'd1' has no images"):
        C.register_image_folder(_name(), tmp_path / "hollow")
    make_user_tree(tmp_path / "mixed", domains=("d0",))
    make_user_tree(tmp_path / "mixed", domains=("d1",), size=(8, 8))
    cls = C.register_image_folder(_name(), tmp_path / "mixed")
    with pytest.raises(ShiftbenchError, match="is 8x8 but .* is 12x10; pass image_size"):
        cls(None, [0], {})
    make_user_tree(tmp_path / "bad")
    (tmp_path / "bad" / "d1" / "dog" / "1.png").write_bytes(b"xx")
    cls = C.register_image_folder(_name(), tmp_path / "bad", image_size=8)
    with pytest.raises(ShiftbenchError, match="cannot read image .*1.png"):
        cls(None, [0], {})
    name = _name()
    make_user_tree(tmp_path / "dup")
    C.register_image_folder(name, tmp_path / "dup")
    with pytest.raises(ShiftbenchError, match="already registered"):
        C.register_image_folder(name, tmp_path / "dup")
    C.register_image_folder(name, tmp_path / "dup", overwrite=True)


def test_register_arrays_and_train(tmp_path):
    g = np.random.default_rng(0)
    x = g.normal(size=(60, 5)).astype(np.float32)
    y = np.arange(60) % 3
    domain = np.array(["b", "a", "c"] * 20)
    name = _name()
    cls = C.register_arrays(name, x, y, domain, steps=3, checkpoint_freq=1)
    assert cls.ENVIRONMENTS == ("a", "b", "c") and cls.INPUT_SHAPE == (5,)
    ds = cls(None, [0], {})
    assert torch.allclose(ds[0].x, torch.from_numpy(x[domain == "a"]))
    from shiftbench.cli import main

    out = tmp_path / "run"
    assert main(["train", "--dataset", name, "--test-envs", "c", "--output-dir", str(out),
                 "--skip-model-save", "--threads", "1"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and "env2_out_acc" in records[-1]
    ordered = C.register_arrays(_name(), x, y, domain, domain_names=["c", "b", "a"])
    assert ordered.ENVIRONMENTS == ("c", "b", "a")


def test_register_arrays_errors():
    x, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(ShiftbenchError, match="lengths 4, 3, 4"):
        C.register_arrays(_name(), x, y[:3], [0, 0, 1, 1])
    with pytest.raises(ShiftbenchError, match="integer labels"):
        C.register_arrays(_name(), x, y.astype(float), [0, 0, 1, 1])
    with pytest.raises(ShiftbenchError, match=r"labels must lie in \[0, 2\)"):
        C.register_arrays(_name(), x, np.array([0, 1, 2, 1]), [0, 0, 1, 1], num_classes=2)
    with pytest.raises(ShiftbenchError, match="domain 'z' has no examples"):
        C.register_arrays(_name(), x, y, ["a"] * 4, domain_names=["a", "z"])
    with pytest.raises(ShiftbenchError, match=r"domain values \['b'\]"):
        C.register_arrays(_name(), x, y, ["a", "b", "a", "a"], domain_names=["a"])


def test_data_command(tmp_path, capsys):
    from shiftbench.cli import main

    make_layout(tmp_path, "PACS")
    Image.new("L", (2000, 1000)).save(tmp_path / "digits.png")
    assert main(["data", "--data-dir", str(tmp_path), "--json"]) == 0
    rows = {r["dataset"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["PACS"]["status"] == "present (28 images)"
    assert rows["PACS"]["domains"] == {"art_painting": 7, "cartoon": 7, "photo": 7, "sketch": 7}
    assert rows["VLCS"]["status"].startswith("missing")
    assert "Digits" in rows
    assert rows["DigitsOpenCV"]["status"] == f"present ({tmp_path / 'digits.png'})"
    assert main(["data", "--data-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "PACS: present (28 images)" in text and "source:" in text
    assert main(["data", "--data-dir", str(tmp_path / "nope")]) == 2
