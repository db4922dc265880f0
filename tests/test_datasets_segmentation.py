"""Segmentation data: the SyntheticStreets generator and the GTA5/Cityscapes/SYNTHIA loaders on
tiny fixtures written in the official layouts and label encodings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from shiftbench.datasets import get_dataset_class
from shiftbench.datasets.png16 import read_png16, write_png16
from shiftbench.datasets.road_scenes import (
    CITYSCAPES_TO_TRAIN19,
    CLASSES_13,
    CLASSES_16,
    CLASSES_19,
    SYNTHIA_TO_TRAIN19,
    GTA5Cityscapes,
    SynthiaCityscapes13,
    SynthiaCityscapes16,
    label_table,
)
from shiftbench.datasets.segmentation import IGNORE_INDEX, LabelMapDomain, task_type_of
from shiftbench.datasets.streets import CLASSES, ENVIRONMENTS, build_streets, generate
from shiftbench.errors import ShiftbenchError


def test_streets_deterministic_shapes_and_classes():
    x1, y1 = generate("real", 12, seed=3)
    x2, y2 = generate("real", 12, seed=3)
    x3, _ = generate("real", 12, seed=4)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert x1.shape == (12, 3, 64, 128) and x1.dtype == np.uint8 and y1.shape == (12, 64, 128)
    values = set(np.unique(y1).tolist())
    assert values <= set(range(len(CLASSES))) | {IGNORE_INDEX}
    assert IGNORE_INDEX in values  # the ego hood of the Cityscapes-like domain


def test_streets_domains_differ_in_the_documented_ways():
    stats = {}
    for env in ENVIRONMENTS:
        x, y = generate(env, 40, seed=1)
        share = np.bincount(y.ravel(), minlength=256)[: len(CLASSES)] / y.size
        stats[env] = (x.astype(float), y, share)
    # long tail: road/building/sky each cover far more pixels than pole/sign/person
    share = stats["game"][2]
    big = min(share[CLASSES.index(c)] for c in ("road", "building", "sky"))
    assert big > 10 * max(share[CLASSES.index(c)] for c in ("pole", "traffic_sign", "person"))
    assert stats["virtual"][2][CLASSES.index("terrain")] == 0  # SYNTHIA-like: no terrain
    assert stats["game"][2][CLASSES.index("terrain")] > 0
    # the elevated virtual camera puts the horizon (top of the road) higher in the frame
    def sky_rows(y):
        return (y == CLASSES.index("sky")).mean(axis=(0, 2)).nonzero()[0].max()
    assert sky_rows(stats["virtual"][1]) < sky_rows(stats["game"][1])
    # colour statistics: the game domain is more saturated than the real one
    def saturation(x):
        return (x.max(axis=1) - x.min(axis=1)).mean()
    assert saturation(stats["game"][0]) > 1.5 * saturation(stats["real"][0])


def test_streets_cache_is_written_atomically_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTBENCH_CACHE", str(tmp_path))
    a = build_streets(n=4, seed=2)
    files = [p.name for p in tmp_path.iterdir()]
    assert len(files) == 1 and files[0].endswith(".pt") and not files[0].startswith(".")
    b = build_streets(n=4, seed=2)
    assert all(torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]) for k in a)
    (tmp_path / files[0]).write_bytes(b"torn")
    c = build_streets(n=4, seed=2)  # a corrupt cache is set aside and regenerated
    assert torch.equal(c["game"][1], a["game"][1])


def test_label_map_domain_batches():
    dom = LabelMapDomain(torch.zeros(3, 3, 4, 8, dtype=torch.uint8),
                         torch.full((3, 4, 8), 255, dtype=torch.uint8))
    x, y = dom.batch(torch.tensor([0, 2]))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and y.shape == (2, 4, 8)
    assert get_dataset_class("SyntheticStreets").TASK_TYPE == "segmentation"
    assert task_type_of(get_dataset_class("SyntheticStreets")) == "segmentation"


# ---- official label tables ----------------------------------------------------------------


def test_cityscapes_table_facts():
    assert len(CLASSES_19) == 19 and CLASSES_19[0] == "road" and CLASSES_19[-1] == "bicycle"
    assert CLASSES_19 == ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                          "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                          "truck", "bus", "train", "motorcycle", "bicycle")
    t = label_table(CITYSCAPES_TO_TRAIN19, CLASSES_19)
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    for lid in range(34):
        assert t[lid] == expected.get(lid, 255), lid
    assert len(CLASSES_16) == 16 and not {"terrain", "truck", "train"} & set(CLASSES_16)
    assert len(CLASSES_13) == 13 and not {"wall", "fence", "pole"} & set(CLASSES_13)


def test_synthia_tables_16_and_13():
    t16 = label_table(SYNTHIA_TO_TRAIN19, CLASSES_16)
    t13 = label_table(SYNTHIA_TO_TRAIN19, CLASSES_13)
    assert t16[3] == CLASSES_16.index("road") and t16[1] == CLASSES_16.index("sky")
    assert t16[21] == CLASSES_16.index("wall") and t13[21] == 255
    assert t16[10] == CLASSES_16.index("person") and t16[11] == CLASSES_16.index("bicycle")
    for void in (0, 13, 14, 16, 18, 20, 22):  # void, parking, road work, terrain, truck, train, lane
        assert t16[void] == 255 and t13[void] == 255
    assert sorted(set(t16[:23].tolist()) - {255}) == list(range(16))
    assert sorted(set(t13[:23].tolist()) - {255}) == list(range(13))


# ---- loaders on fixtures in the real layouts --------------------------------------------


def _rgb(path, h=8, w=16, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def _ids(path, ids, paletted=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(ids, np.uint8), mode="L")
    if paletted:  # GTA5 ships paletted label PNGs whose palette index is the label id
        im = Image.fromarray(np.asarray(ids, np.uint8), mode="P")
        im.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    im.save(path)


# road, sidewalk, building, car, ego vehicle, parking, bicycle, sky
IDS = np.array([[7, 8, 11, 26, 1, 9, 33, 23]] * 4, np.uint8)


def _write_cityscapes(root):
    for split, city in (("train", "aachen"), ("val", "lindau")):
        stem = f"{city}_000000_000019"
        _rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", 4, 8, 100)
        _ids(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", IDS)
        # the other gtFine files of the official layout are present and ignored
        _ids(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", IDS)


def _small(cls):
    return type(cls.__name__, (cls,), {"INPUT_SHAPE": (3, 4, 8)})


def test_gta5_to_cityscapes_loader(tmp_path):
    _rgb(tmp_path / "GTA5" / "images" / "00001.png", 8, 16, 50)
    _ids(tmp_path / "GTA5" / "labels" / "00001.png", np.repeat(np.repeat(IDS, 2, 0), 2, 1), True)
    _write_cityscapes(tmp_path / "cityscapes")
    ds = _small(GTA5Cityscapes)(str(tmp_path), [1], {})
    assert [len(d) for d in ds.datasets] == [1, 2]
    x, y = ds.datasets[0][0]
    assert x.shape == (3, 4, 8) and y.shape == (4, 8)  # resized from 8x16
    want = [0, 1, 2, 13, 255, 255, 18, 10]
    assert y[0].tolist() == want
    _, yc = ds.datasets[1][1]  # the val image comes after the train image
    assert yc[0].tolist() == want


def test_synthia_loader_16_and_13(tmp_path):
    root = tmp_path / "RAND_CITYSCAPES"
    _rgb(root / "RGB" / "0000000.png", 4, 8, 200)
    lab = np.zeros((4, 8, 3), np.uint16)
    # road, sidewalk, building, wall, car, terrain, pedestrian, sky
    lab[..., 0] = np.array([3, 4, 2, 21, 8, 16, 10, 1], np.uint16)
    lab[..., 1] = 4000  # instance ids in the other channels must not matter
    (root / "GT" / "LABELS").mkdir(parents=True)
    write_png16(root / "GT" / "LABELS" / "0000000.png", lab)
    _write_cityscapes(tmp_path / "cityscapes")
    y16 = _small(SynthiaCityscapes16)(str(tmp_path), [1], {}).datasets[0][0][1]
    y13 = _small(SynthiaCityscapes13)(str(tmp_path), [1], {}).datasets[0][0][1]
    c16, c13 = CLASSES_16, CLASSES_13
    assert y16[0].tolist() == [c16.index("road"), c16.index("sidewalk"), c16.index("building"),
                               c16.index("wall"), c16.index("car"), 255, c16.index("person"),
                               c16.index("sky")]
    assert y13[0].tolist() == [c13.index("road"), c13.index("sidewalk"), c13.index("building"),
                               255, c13.index("car"), 255, c13.index("person"), c13.index("sky")]


def test_missing_directories_and_labels_are_clear_errors(tmp_path):
    with pytest.raises(ShiftbenchError, match="--data-dir"):
        GTA5Cityscapes(None, [1], {})
    with pytest.raises(ShiftbenchError, match="GTA5 images not found"):
        GTA5Cityscapes(str(tmp_path), [1], {})
    _rgb(tmp_path / "GTA5" / "images" / "00001.png")
    (tmp_path / "GTA5" / "labels").mkdir()
    with pytest.raises(ShiftbenchError, match="label files missing"):
        GTA5Cityscapes(str(tmp_path), [1], {})


def test_png16_roundtrip_and_pillow_filters(tmp_path):
    a = (np.arange(5 * 7 * 3).reshape(5, 7, 3) * 997 % 65536).astype(np.uint16)
    write_png16(tmp_path / "a.png", a)
    assert np.array_equal(read_png16(tmp_path / "a.png"), a)
    # an 8-bit file written by Pillow (adaptive row filters: Sub, Up, Average, Paeth)
    rs = np.random.RandomState(0)
    img = np.clip(np.cumsum(rs.randint(-9, 10, (20, 30, 3)), axis=1) + 128, 0, 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "b.png", optimize=True)
    assert np.array_equal(read_png16(tmp_path / "b.png"), img)
    (tmp_path / "c.png").write_bytes(b"not a png")
    with pytest.raises(ShiftbenchError, match="not a PNG"):
        read_png16(tmp_path / "c.png")


def test_streets_v2_is_deterministic_and_its_own_version(tmp_path, monkeypatch):
    from shiftbench.datasets.streets_v2 import build_streets_v2
    from shiftbench.datasets.streets_v2 import generate as generate_v2

    x1, y1 = generate_v2("real", 8, seed=3)
    x2, y2 = generate_v2("real", 8, seed=3)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert x1.shape == (8, 3, 64, 128) and y1.shape == (8, 64, 128)
    assert not np.array_equal(y1, generate("real", 8, seed=3)[1])  # not v1's scenes
    monkeypatch.setenv("SHIFTBENCH_CACHE", str(tmp_path))
    build_streets(n=2, seed=1)
    build_streets_v2(n=2, seed=1)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["SyntheticStreets-v1-s1-n2-64x128.pt", "SyntheticStreets-v2-s1-n2-64x128.pt"]
    assert get_dataset_class("SyntheticStreetsV2").CLASSES == CLASSES


def test_streets_v2_domains_differ_in_structure_and_keep_rare_classes_visible():
    from shiftbench.datasets.streets_v2 import WORLDS
    from shiftbench.datasets.streets_v2 import generate as generate_v2

    share, present, horizon = {}, {}, {}
    for env in ENVIRONMENTS:
        _, y = generate_v2(env, 30, seed=1)
        share[env] = np.bincount(y.ravel(), minlength=256)[: len(CLASSES)] / y.size
        present[env] = np.array([(y == k).any(axis=(1, 2)).mean() for k in range(len(CLASSES))])
        sky = (y == CLASSES.index("sky")).mean(axis=(0, 2))
        horizon[env] = sky.nonzero()[0].max()
    pole, sign, person = (CLASSES.index(c) for c in ("pole", "traffic_sign", "person"))
    for env in ENVIRONMENTS:  # every rare class is in most images and covers a visible share
        assert (present[env][[pole, sign, person]] >= 0.5).all(), (env, present[env])
        assert (share[env][[pole, sign, person]] >= 0.0015).all(), (env, share[env])
    # structure: the virtual camera looks down (horizon high), wide plazas, no terrain
    assert horizon["virtual"] < horizon["real"] and horizon["virtual"] < horizon["game"]
    s = {c: CLASSES.index(c) for c in ("sidewalk", "building", "vegetation", "terrain", "person")}
    plaza = share["virtual"][s["sidewalk"]]
    assert plaza > 2 * max(share["game"][s["sidewalk"]], share["real"][s["sidewalk"]])
    assert share["virtual"][s["terrain"]] == 0 < share["real"][s["terrain"]]
    # the game world: towers at the kerb; the real one: low houses and trees, more people
    assert share["game"][s["building"]] > 1.5 * share["real"][s["building"]]
    assert share["real"][s["vegetation"]] > 2 * share["game"][s["vegetation"]]
    assert share["real"][s["person"]] > 1.5 * share["game"][s["person"]]
    # and the generators differ in what they are told to draw, not only in colours
    game, real = WORLDS["game"], WORLDS["real"]
    assert game.building_texture != real.building_texture and game.sign_shape != real.sign_shape
    assert game.focal[1] < real.focal[0] and game.parked != real.parked
