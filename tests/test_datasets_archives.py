"""The benchmark archives, in their published layouts, unpack into what the loaders read
(served by a local HTTP server: tests/download_server.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import zipfile

import pytest
from download_server import Server, jpeg

from shiftbench.cli import main
from shiftbench.datasets import get_dataset_class
from shiftbench.datasets.sources import SOURCES, arrange_terra_incognita


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_terra_incognita_is_sorted_from_its_annotations(tmp_path):
    cats = list(SOURCES["TerraIncognita"].arrange.__globals__["TERRA_CATEGORIES"]) + ["deer"]
    images, annotations, files = [], [], {}
    for i in range(2 * len(cats) * 5):
        loc = (38, 46, 100, 43, 7)[i % 5]
        name = f"img{i:04d}.jpg"
        files[f"eccv_18_all_images_sm/{name}"] = jpeg(i)
        images.append({"id": f"id{i}", "file_name": name, "location": loc})
        annotations.append({"image_id": f"id{i}", "category_id": (i // 5) % len(cats)})
    categories = [{"id": k, "name": c} for k, c in enumerate(cats)]
    train = {"images": images[::2], "annotations": annotations[::2], "categories": categories}
    val = {"images": images[1::2], "annotations": annotations[1::2], "categories": categories}
    notes = {"eccv_18_annotation_files/train_annotations.json": json.dumps(train).encode(),
             "eccv_18_annotation_files/cis_val_annotations.json": json.dumps(val).encode()}
    served = {"/TerraIncognita/eccv_18_all_images_sm.tar.gz": _tar_gz(files),
              "/TerraIncognita/eccv_18_annotations.tar.gz": _tar_gz(notes)}
    assert arrange_terra_incognita is SOURCES["TerraIncognita"].arrange
    with Server(served) as srv:
        assert main(["data", "download", "TerraIncognita", "--data-dir", str(tmp_path),
                     "--base-url", srv.url]) == 0
    root = tmp_path / "terra_incognita"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [
        "location_100", "location_38", "location_43", "location_46"]
    assert not list(root.rglob("deer"))  # categories outside DomainBed's ten are dropped
    ds = get_dataset_class("TerraIncognita")(str(tmp_path), [0], {"data_augmentation": False})
    assert sum(len(e) for e in ds.datasets) == 4 * 2 * (len(cats) - 1)


def test_sviro_archive_layout(tmp_path):
    """DomainBed's SVIRO zip holds SVIRO_DOMAINBED/<vehicle>/<class>/<image>."""
    cars = get_dataset_class("SVIRO").ENVIRONMENTS
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, car in enumerate(cars):
            for c in range(7):
                zf.writestr(f"SVIRO_DOMAINBED/{car}/{c}/{car}_{c}.png", jpeg(i * 7 + c))
    name = SOURCES["SVIRO"].remotes[0].filename
    with Server({f"/SVIRO/{name}": buf.getvalue()}) as srv:
        assert main(["data", "download", "SVIRO", "--data-dir", str(tmp_path), "--base-url",
                     srv.url]) == 0
    ds = get_dataset_class("SVIRO")(str(tmp_path), [0], {})
    assert [e.name for e in ds.datasets] == list(cars) and ds.num_classes == 7
    assert [len(e) for e in ds.datasets] == [7] * 10


def test_domain_net_duplicates_are_removed(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    for d in ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"):
        for k in range(2):
            path = raw / d / "cat" / f"{d}_{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    (raw / "domain_net_duplicates.txt").write_text(
        "clipart/cat/clipart_1.jpg\nreal/cat/real_0.jpg\n../escape.jpg\n\n")
    (tmp_path / "escape.jpg").write_bytes(b"keep")
    SOURCES["DomainNet"].arrange(raw, out)
    assert not (out / "clipart" / "cat" / "clipart_1.jpg").exists()
    assert not (out / "real" / "cat" / "real_0.jpg").exists()
    assert (out / "clipart" / "cat" / "clipart_0.jpg").exists()
    assert (tmp_path / "escape.jpg").exists()  # paths leaving the folder are ignored
    assert len(list(out.rglob("*.jpg"))) == 10


def _archive(kind: str, members: dict[str, bytes], dirs: list[str] = ()) -> bytes:
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as zf:
            for d in dirs:
                zf.writestr(d.rstrip("/") + "/", b"")
            for name, data in members.items():
                zf.writestr(name, data)
        return buf.getvalue()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for d in dirs:
            info = tarfile.TarInfo(d.rstrip("/"))
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# How each archive lays out its domains: (archive file, prefix of a domain folder, domains).
ARCHIVES = {
    "VLCS": [("VLCS.tar.gz", "VLCS/{d}/", ["Caltech101", "LabelMe", "SUN09", "VOC2007"])],
    "OfficeHome": [("office_home.zip", "OfficeHomeDataset_10072016/{d}/",
                    ["Art", "Clipart", "Product", "Real World"])],
    "DomainNet": [(f"{d}.zip", "{d}/", [d]) for d in
                  ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")],
    "Office31": [(f"{d}.tgz", "{d}/images/", [d]) for d in ("amazon", "dslr", "webcam")],
    "OfficeCaltech": [("officecaltech.tgz", "{d}/", ["amazon", "caltech", "dslr", "webcam"])],
    "VisDA": [(f"{d}.tar", "{d}/", [d]) for d in ("train", "validation")],
}


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_benchmark_archives_unpack_into_the_loader_layout(tmp_path, monkeypatch, name):
    cls = get_dataset_class(name)
    classes = [f"c{i:03d}" for i in range(cls.NUM_CLASSES)]
    served = {}
    for filename, prefix, domains in ARCHIVES[name]:
        members, dirs = {}, []
        for d in domains:
            for ci, c in enumerate(classes):
                dirs.append(prefix.format(d=d) + c)
                if ci < 3:  # a few images; the other class folders stay empty
                    members[prefix.format(d=d) + f"{c}/img_{ci}.jpg"] = jpeg(ci)
            members[prefix.format(d=d).split("/")[0] + "/image_list.txt"] = b"listing\n"
        if name == "OfficeCaltech":
            members["image_list/amazon.txt"] = b"amazon/c000/img_0.jpg 0\n"  # not a domain
        remote = next(r for r in SOURCES[name].remotes if r.filename == filename)
        served[f"/{name}/{filename}"] = _archive(remote.kind, members, dirs)
    if name == "DomainNet":
        served["/DomainNet/domain_net_duplicates.txt"] = b"real/c000/img_0.jpg\n"
    # The fixtures' own checksums stand in for the published ones (VLCS, OfficeHome).
    remotes = tuple(dataclasses.replace(r, md5=hashlib.md5(served[f"/{name}/{r.filename}"])
                                        .hexdigest()) if r.md5 else r
                    for r in SOURCES[name].remotes)
    monkeypatch.setitem(SOURCES, name, dataclasses.replace(SOURCES[name], remotes=remotes))
    with Server(served) as srv:
        assert main(["data", "download", name, "--data-dir", str(tmp_path), "--base-url",
                     srv.url]) == 0
    ds = cls(str(tmp_path), [0], {})
    counts = [len(e) for e in ds.datasets]
    expected = [3] * len(cls.ENVIRONMENTS)
    if name == "DomainNet":
        expected[cls.ENVIRONMENTS.index("real")] = 2  # DomainBed's duplicate removed
    assert counts == expected and ds.num_classes == cls.NUM_CLASSES
