"""`shiftbench data download` against a local HTTP server serving fixture archives in the real
layouts: resume, verification, atomic extraction, idempotent re-runs, clear errors."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from shiftbench.cli import main
from shiftbench.datasets import download as D
from shiftbench.datasets import get_dataset_class
from shiftbench.datasets.sources import SOURCES, arrange_terra_incognita
from shiftbench.errors import ShiftbenchError

PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")


def _jpeg(value: int, size=(24, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (value % 256, (3 * value) % 256, 40)).save(buf, "JPEG")
    return buf.getvalue()


def pacs_zip(per_class: int = 2) -> bytes:
    """PACS.zip as DomainBed's link serves it: kfold/<domain>/<class>/<image>."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for d in PACS_DOMAINS:
            for ci, c in enumerate(PACS_CLASSES):
                for k in range(per_class):
                    zf.writestr(f"kfold/{d}/{c}/pic_{k:03d}.jpg", _jpeg(40 * ci + k))
    return buf.getvalue()


class Server:
    """A bounded local HTTP server: `files` maps a path to bytes; honours `Range`; can cut the
    first response of a path short, answer with an HTML page, or a status code."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = dict(files), []
        self.truncate_once: set[str] = set()
        self.html: set[str] = set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.requests.append((self.path, self.headers.get("Range")))
                if self.path in outer.html:
                    body = b"<html>please accept the terms</html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if self.path in outer.truncate_once and not rng:
                    outer.truncate_once.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        # Never outlive the test, even if it hangs: the server stops itself after 120 s.
        self.stopper = threading.Timer(120.0, self.httpd.shutdown)

    def __enter__(self) -> Server:
        self.thread.start()
        self.stopper.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopper.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def toy_source(url: str, data: bytes, **kw) -> D.Source:
    remote = D.Remote(url, "toy.zip", "zip", sha256=hashlib.sha256(data).hexdigest(), **kw)
    return D.Source("Toy", "toy", (remote,), D.move_folders("art_painting", "cartoon"))


@pytest.mark.slow
def test_pacs_download_then_train(tmp_path, capsys):
    data = pacs_zip()
    with Server({"/PACS/PACS.zip": data}) as srv:
        argv = ["data", "download", "PACS", "--data-dir", str(tmp_path), "--base-url", srv.url]
        assert main(argv) == 0
        assert (tmp_path / "PACS" / D.MARKER).is_file()
        assert sorted(p.name for p in (tmp_path / "PACS").iterdir() if p.is_dir()) == \
            list(PACS_DOMAINS)
        assert not list((tmp_path / D.DOWNLOADS / "PACS").iterdir())  # archive removed
        assert not list(tmp_path.glob(".staging-*"))
        n = len(srv.requests)
        assert main(argv) == 0  # idempotent: nothing fetched again
        assert len(srv.requests) == n
        assert "already downloaded" in capsys.readouterr().out
    ds = get_dataset_class("PACS")(str(tmp_path), [0], {"data_augmentation": False})
    assert [len(e) for e in ds.datasets] == [14, 14, 14, 14]
    out = tmp_path / "run"
    code = main(["train", "--dataset", "PACS", "--data-dir", str(tmp_path), "--steps", "2",
                 "--checkpoint-freq", "1", "--output-dir", str(out), "--skip-model-save",
                 "--hparams", json.dumps({"batch_size": 2, "resnet18": True,
                                          "pretrained": False})])
    assert code == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records and records[-1]["step"] == 1 and "env3_out_acc" in records[-1]


def test_truncated_download_is_resumed_with_range(tmp_path):
    data = pacs_zip(1)
    with Server({"/Toy/toy.zip": data}) as srv:
        srv.truncate_once.add("/Toy/toy.zip")
        D.install(toy_source("unused", data), tmp_path, base=srv.url, log=lambda s: None)
        ranges = [r for p, r in srv.requests if p == "/Toy/toy.zip"]
    assert ranges == [None, f"bytes={len(data) // 2}-"]
    assert (tmp_path / "toy" / "cartoon" / "dog").is_dir()


def test_partial_file_from_an_earlier_run_is_resumed(tmp_path):
    data = pacs_zip(1)
    part = tmp_path / D.DOWNLOADS / "Toy" / "toy.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    with Server({"/Toy/toy.zip": data}) as srv:
        D.install(toy_source("unused", data), tmp_path, base=srv.url, log=lambda s: None)
        assert srv.requests == [("/Toy/toy.zip", "bytes=1000-")]
    assert (tmp_path / "toy" / D.MARKER).is_file()


def test_wrong_checksum_is_refused_and_nothing_is_kept(tmp_path, capsys):
    fake = {f"/FashionMNIST/{f}": gzip.compress(b"not fashion-mnist") for f in
            ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    with Server(fake) as srv:
        code = main(["data", "download", "FashionMNIST", "--data-dir", str(tmp_path),
                     "--base-url", srv.url])
    err = capsys.readouterr().err
    assert code == 2
    assert "md5" in err and "8d4fb7e6c68d591d4c3dfef9ec88bf0d" in err
    assert f"{srv.url}/FashionMNIST/train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "FashionMNIST").exists()
    assert not list((tmp_path / D.DOWNLOADS / "FashionMNIST").iterdir())


def test_interrupted_extraction_leaves_no_dataset(tmp_path, monkeypatch):
    data = pacs_zip()
    real_arrange = SOURCES["PACS"].arrange

    def crash(raw: Path, out: Path) -> None:
        out.mkdir(parents=True)
        (out / "art_painting").mkdir()  # half-built layout, then the process is stopped
        raise KeyboardInterrupt

    monkeypatch.setitem(SOURCES, "PACS", dataclasses.replace(SOURCES["PACS"], arrange=crash))
    with Server({"/PACS/PACS.zip": data}) as srv:
        assert main(["data", "download", "PACS", "--data-dir", str(tmp_path), "--base-url",
                     srv.url]) == 130
        assert not (tmp_path / "PACS").exists()
        assert not list(tmp_path.glob(".staging-*"))
        killed = tmp_path / ".staging-PACS-999999" / "out" / "photo"  # a run killed with -9
        killed.mkdir(parents=True)
        with pytest.raises(ShiftbenchError, match="does not exist"):
            get_dataset_class("PACS")(str(tmp_path), [0], {})
        monkeypatch.setitem(SOURCES, "PACS", dataclasses.replace(SOURCES["PACS"],
                                                                 arrange=real_arrange))
        n = len(srv.requests)
        assert main(["data", "download", "PACS", "--data-dir", str(tmp_path), "--base-url",
                     srv.url]) == 0
        assert len(srv.requests) == n  # the verified archive was kept and reused
    assert (tmp_path / "PACS" / D.MARKER).is_file()
    assert not list(tmp_path.glob(".staging-*"))


def test_offline_and_terms_pages_give_clear_errors(tmp_path):
    with Server({}) as srv:
        closed = srv.url
        srv.html.add("/Toy/toy.zip")
        with pytest.raises(D.DownloadError, match="web page instead of toy.zip"):
            D.install(toy_source("unused", b""), tmp_path, base=srv.url, log=lambda s: None)
        with pytest.raises(D.DownloadError, match="HTTP 404"):
            D.install(D.Source("PACS", "PACS", SOURCES["PACS"].remotes), tmp_path,
                      base=srv.url, log=lambda s: None)
    with pytest.raises(D.DownloadError, match="are you offline") as info:
        D.install(toy_source("unused", b""), tmp_path, base=closed, log=lambda s: None)
    assert f"{closed}/Toy/toy.zip" in str(info.value)
    assert str(tmp_path / D.DOWNLOADS / "Toy" / "toy.zip") in str(info.value)


def test_manual_source_explains_what_to_do(tmp_path, capsys):
    code = main(["data", "download", "MNIST_M", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be downloaded automatically" in err
    assert str(tmp_path / D.DOWNLOADS / "MNIST_M") in err and "mnist_m.tar.gz" in err


def test_archive_escaping_the_folder_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.txt", b"x")
    path = tmp_path / "bad.zip"
    path.write_bytes(buf.getvalue())
    with pytest.raises(D.DownloadError, match="outside"):
        D.unpack(path, D.Remote("u", "bad.zip", "zip"), tmp_path / "x")
    assert not (tmp_path / "evil.txt").exists()


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
        files[f"eccv_18_all_images_sm/{name}"] = _jpeg(i)
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
                zf.writestr(f"SVIRO_DOMAINBED/{car}/{c}/{car}_{c}.png", _jpeg(i * 7 + c))
    name = SOURCES["SVIRO"].remotes[0].filename
    with Server({f"/SVIRO/{name}": buf.getvalue()}) as srv:
        assert main(["data", "download", "SVIRO", "--data-dir", str(tmp_path), "--base-url",
                     srv.url]) == 0
    ds = get_dataset_class("SVIRO")(str(tmp_path), [0], {})
    assert [e.name for e in ds.datasets] == list(cars) and ds.num_classes == 7
    assert [len(e) for e in ds.datasets] == [7] * 10


def test_wilds_sources_download_through_wilds(tmp_path, monkeypatch):
    wilds = pytest.importorskip("wilds")
    calls = []

    def get_dataset(dataset, root_dir, download):
        calls.append((dataset, root_dir, download))
        (Path(root_dir) / "camelyon17_v1.0").mkdir()

    monkeypatch.setattr(wilds, "get_dataset", get_dataset)
    assert main(["data", "download", "WILDSCamelyon", "--data-dir", str(tmp_path)]) == 0
    assert calls == [("camelyon17", str(tmp_path), True)]
    assert (tmp_path / "camelyon17_v1.0" / D.MARKER).is_file()
    assert main(["data", "download", "WILDSCamelyon", "--data-dir", str(tmp_path)]) == 0
    assert len(calls) == 1  # present: left alone


def test_every_file_dataset_has_a_download_source():
    from shiftbench.datasets.folder import IMAGE_FOLDER_DATASETS
    from shiftbench.datasets.sources import get_source
    from shiftbench.datasets.wilds_datasets import WILDS_DATASETS

    for cls in (*IMAGE_FOLDER_DATASETS, *WILDS_DATASETS):
        assert get_source(cls.__name__).target == getattr(cls, "DATA_SUBDIR", None) or \
            get_source(cls.__name__).target == getattr(cls, "FOLDER", None), cls
    for name in ("ColoredMNIST", "RotatedFashionMNIST", "DigitFive"):
        assert get_source(name)
    with pytest.raises(ShiftbenchError, match="unknown downloadable dataset 'PAC'.*PACS"):
        get_source("PAC")


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
    "OfficeCaltech": [("office-caltech.tgz", "{d}/", ["amazon", "caltech", "dslr", "webcam"])],
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
                    members[prefix.format(d=d) + f"{c}/img_{ci}.jpg"] = _jpeg(ci)
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


def test_full_disk_stops_at_once_and_keeps_the_partial_file(tmp_path, monkeypatch):
    import builtins
    import errno

    from shiftbench.errors import StorageError

    data = pacs_zip(1)
    real_open, writes = builtins.open, []

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, block):
            if writes:  # the second block does not fit
                raise OSError(errno.ENOSPC, "No space left on device")
            writes.append(len(block))
            return self.f.write(block)

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return FullDisk(f) if str(path).endswith(".part") else f

    monkeypatch.setattr(D, "open", fake_open, raising=False)
    monkeypatch.setattr(D, "CHUNK", 1000)
    with Server({"/Toy/toy.zip": data}) as srv:
        with pytest.raises(StorageError, match="no space left on device"):
            D.install(toy_source("unused", data), tmp_path, base=srv.url, log=lambda s: None)
        assert len(srv.requests) == 1  # no retries against a full disk
        part = tmp_path / D.DOWNLOADS / "Toy" / "toy.zip.part"
        assert part.stat().st_size == 1000  # kept, to be resumed
        monkeypatch.undo()
        D.install(toy_source("unused", data), tmp_path, base=srv.url, log=lambda s: None)
        assert srv.requests[-1] == ("/Toy/toy.zip", "bytes=1000-")
    assert (tmp_path / "toy" / D.MARKER).is_file()
